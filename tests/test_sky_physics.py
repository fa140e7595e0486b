"""The simulation's ingredients: geometry, templates, dust, populations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROJECT_ROOT

from ssl_photoz.core.config import load_config
from ssl_photoz.surveys.sdss.extinction import (
    SF11_VECTOR,
    SFD98_VECTOR,
    catalogue_extinction,
    ebv_from_extinction,
    extinction_mag,
)
from ssl_photoz.surveys.sdss.sky import dust, population, seds
from ssl_photoz.surveys.sdss.sky.footprint import (
    FIELD_STEP_ROWS,
    FRAME_COLUMNS,
    FRAME_ROWS,
    FieldId,
    Footprint,
)


@pytest.fixture(scope="module")
def footprint():
    return Footprint(ra_min=109.0, ra_max=114.0, dec_min=18.5, n_runs=2, seed=1)


def test_located_positions_fall_inside_their_frame(footprint):
    rng = np.random.default_rng(0)
    ra = rng.uniform(109.0, 114.0, 300)
    dec = rng.uniform(footprint.dec_min, footprint.dec_max, 300)
    run, camcol, field, inside = footprint.locate(ra, dec)
    assert inside.all()
    for k in range(0, 300, 10):
        fid = FieldId(int(run[k]), int(camcol[k]), int(field[k]))
        for band in "ugriz":
            x, y = footprint.frame_wcs(fid, band).all_world2pix(ra[k], dec[k], 0)
            assert -0.5 <= x <= FRAME_COLUMNS - 0.5 and -0.5 <= y <= FRAME_ROWS - 0.5


def test_frames_are_oriented_like_real_sdss_frames(footprint, real_frames_dir):
    from astropy.io import fits
    from astropy.wcs import WCS

    real = WCS(fits.getheader(real_frames_dir / "frame-r-004510-4-0030.fits.bz2"))
    sim = footprint.frame_wcs(footprint.fields[0], "r")
    for wcs in (real, sim):
        cd = wcs.wcs.cd
        # rows advance mainly in RA, columns mainly in Dec, with a parity flip
        assert abs(cd[0, 1]) > 5 * abs(cd[0, 0])
        assert abs(cd[1, 0]) > 5 * abs(cd[1, 1])
        assert np.linalg.det(cd) < 0
        scale = np.sqrt(abs(np.linalg.det(cd))) * 3600
        assert scale == pytest.approx(0.396, abs=0.003)


def test_consecutive_fields_overlap_by_128_rows(footprint):
    a, b = FieldId(5001, 3, 20), FieldId(5001, 3, 21)
    wcs_a, wcs_b = footprint.frame_wcs(a, "r"), footprint.frame_wcs(b, "r")
    ra, dec = wcs_b.all_pix2world(1024, 0, 0)
    _, y_in_a = wcs_a.all_pix2world(0, 0, 0)  # noqa: F841 (documenting the axes)
    x, y = wcs_a.all_world2pix(ra, dec, 0)
    assert y == pytest.approx(FIELD_STEP_ROWS, abs=3.0)


def test_band_frames_are_offset_by_a_few_arcsec(footprint):
    fid = footprint.fields[5]
    ref = footprint.frame_wcs(fid, "r").all_pix2world([[1024, 744]], 0)[0]
    for band in "ugiz":
        pos = footprint.frame_wcs(fid, band).all_pix2world([[1024, 744]], 0)[0]
        sep = np.hypot((pos[0] - ref[0]) * np.cos(np.radians(ref[1])), pos[1] - ref[1]) * 3600
        assert 0.0 < sep < 6.0


def test_cww_colours_through_sdss_filters():
    # DESIGN.md, at z = 0.1 (g-r, r-i): E 1.02, 0.42; Sbc 0.60, 0.32; Scd 0.49, 0.23; Im 0.26, 0.20
    expected = {0: (1.02, 0.42), 1: (0.60, 0.32), 2: (0.49, 0.23), 3: (0.26, 0.20)}
    for t, (gr, ri) in expected.items():
        off = seds.magnitude_offsets([t], [0.0], [0.1])[0]
        assert off[1] - off[2] == pytest.approx(gr, abs=0.02)
        assert off[2] - off[3] == pytest.approx(ri, abs=0.02)


def test_redshift_reddens_and_internal_dust_reddens():
    z = np.linspace(0.0, 0.35, 8)
    off = seds.magnitude_offsets(np.zeros(8), np.zeros(8), z)
    assert np.all(
        np.diff(off[:, 1] - off[:, 2]) > 0
    )  # E g-r rises with z to 0.35 (the 4000 A break crosses g-r)
    clean = seds.magnitude_offsets([1.0], [0.0], [0.1])[0]
    dusty = seds.magnitude_offsets([1.0], [0.3], [0.1])[0]
    assert dusty[1] - dusty[2] > clean[1] - clean[2] + 0.1


def test_dust_rises_toward_the_plane_and_map_differs_from_truth():
    b = np.array([10.0, 15.0, 30.0, 60.0, 90.0])
    gal_l = np.full(5, 200.0)
    ebv = dust.true_ebv(gal_l, b, seed=0)
    assert ebv[0] > ebv[2] > ebv[4]
    assert 0.05 < ebv[1] < 0.3  # SFD-like values at |b| = 15
    mapped = dust.map_ebv(gal_l, b, seed=0)
    ratio = mapped / ebv
    assert np.all(np.abs(ratio - 1) < 0.5) and np.any(np.abs(ratio - 1) > 0.001)


def test_perfect_map_columns_deredden_the_true_dimming_with_sf11():
    """With no map error, SF11 x the E(B-V) behind SDSS-style columns is exactly the dimming."""
    b = np.array([15.0, 20.0, 40.0, 75.0])
    gal_l = np.array([10.0, 120.0, 200.0, 300.0])
    truth = dust.true_ebv(gal_l, b, seed=0)
    mapped = dust.map_ebv(gal_l, b, seed=0, map_error=0.0)
    np.testing.assert_allclose(mapped, truth, rtol=1e-12)
    columns = catalogue_extinction(mapped)  # what SDSS writes: SFD98 x E(B-V)
    dimming = extinction_mag(truth)  # what the pixels get: SF11 x E(B-V)
    np.testing.assert_allclose(extinction_mag(ebv_from_extinction(columns)), dimming, rtol=1e-12)
    # SDSS's dered_x over-correct by (R_SFD98 - R_SF11) E(B-V): 0.466 E(B-V) in r
    over = columns - dimming
    np.testing.assert_allclose(over, truth[:, None] * (SFD98_VECTOR - SF11_VECTOR), rtol=1e-12)
    assert over[:, 2] / truth == pytest.approx(2.751 - 2.285)


def test_default_region_straddles_the_latitude_cut():
    cfg = load_config(PROJECT_ROOT / "config.yaml")["sky"]["region"]
    rng = np.random.default_rng(0)
    fp = Footprint(cfg["ra_min"], cfg["ra_max"], cfg["dec_min"], cfg["n_runs"])
    ra = rng.uniform(fp.ra_min, fp.ra_max, 20000)
    dec = np.degrees(np.arcsin(rng.uniform(*np.sin(np.radians([fp.dec_min, fp.dec_max])), 20000)))
    _, b = dust.galactic(ra, dec)
    below = np.mean(np.abs(b) < 15.0)
    assert 0.10 <= below <= 0.30, f"{below:.1%} of the default region lies at |b| < 15"


def test_galaxy_counts_and_sizes_are_sdss_like():
    rng = np.random.default_rng(5)
    gal = population.draw_galaxies(rng, (150.0, 155.0), (20.0, 25.0), 18.0, seed=0)
    area = population.solid_angle_sr((150.0, 155.0), (20.0, 25.0)) * (180 / np.pi) ** 2
    mgs = gal[gal["mag_intrinsic_r"] < 17.77]
    assert 60 < len(mgs) / area < 130  # SDSS MGS: about 90 per deg^2
    # Real MGS Petrosian half-light radii: median about 1.5-2.5"
    assert 1.0 < np.median(mgs["r50_arcsec"]) < 3.5
    assert (gal["bulge_frac"].between(0, 1)).all() and (gal["q_disk"].between(0.19, 1)).all()


def test_star_counts_rise_toward_the_plane():
    rng = np.random.default_rng(2)
    low = population.draw_stars(rng, (105.0, 106.0), (15.0, 16.0), 19.0, seed=0)
    high = population.draw_stars(rng, (180.0, 181.0), (40.0, 41.0), 19.0, seed=0)
    assert len(low) > 1.5 * len(high)


def test_galactic_coordinates_equal_astropys():
    """dust.galactic rotates by astropy's ICRS -> Galactic matrix: astropy's (l, b) to 1e-10 deg
    over the whole sky, poles and l = 0 wrap included."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    rng = np.random.default_rng(1)
    ra = np.concatenate([rng.uniform(0, 360, 20000), [192.85948, 266.40500, 0.0]])
    dec = np.concatenate(
        [np.degrees(np.arcsin(rng.uniform(-1, 1, 20000))), [27.12825, -28.93617, 90.0]]
    )
    lon, lat = dust.galactic(ra, dec)
    ref = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs").galactic
    assert np.all((lon >= 0) & (lon < 360))
    dlon = (lon - ref.l.deg + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(dlon * np.cos(np.radians(lat)))) < 1e-10
    assert np.max(np.abs(lat - ref.b.deg)) < 1e-10
    assert lat[-3] == pytest.approx(90.0, abs=1e-3)  # the north Galactic pole


def test_bulges_are_redder_than_disks():
    rng = np.random.default_rng(8)
    gal = population.draw_galaxies(rng, (150.0, 153.0), (20.0, 23.0), 17.8, seed=0)
    blue = gal[(gal["population"] == "blue") & gal["bulge_frac_r"].between(0.1, 0.9)]
    # Older bulges: a larger share of the light in the red bands than in the blue ones (the
    # per-component colour scatter lets a few disks of early type come out redder).
    assert (blue["bulge_frac_i"] > blue["bulge_frac_g"]).mean() > 0.8
    assert (blue["bulge_frac_g"] > blue["bulge_frac_u"]).mean() > 0.8
    assert np.array_equal(gal["bulge_frac"], gal["bulge_frac_r"])
    for b in ("u", "g", "i", "z"):
        assert gal[f"bulge_frac_{b}"].between(0, 1).all()
    assert (blue["sed_type_bulge"] < blue["sed_type"]).all()  # red sequence: independent draws


def test_inclination_extinction_follows_masters_2010():
    model = population.PopulationModel()
    q = np.array([1.0, 0.5, 0.2])
    a = population.inclination_extinction(q, np.zeros(3), model)
    np.testing.assert_allclose(a[0], 0.0)
    np.testing.assert_allclose(a[2], [0.7, 0.6, 0.5, 0.4, 0.3])  # edge-on, z = 0
    assert (a[1] > 0).all() and (a[1] < a[2]).all()
    # At z = 0.3 the r band sees the rest-frame g-r region: more extinction than at z = 0.
    far = population.inclination_extinction(q[2:], np.array([0.3]), model)
    assert far[0, 2] > a[2, 2]


def test_edge_on_disks_are_redder_in_the_truth():
    rng = np.random.default_rng(9)
    gal = population.draw_galaxies(rng, (150.0, 154.0), (20.0, 24.0), 17.8, seed=0)
    disky = gal[(gal["population"] == "blue") & (gal["bulge_frac_rest"] < 0.3)]
    gr = disky["mag_intrinsic_g"] - disky["mag_intrinsic_r"]
    resid = gr - gr.groupby(np.floor(disky["z_true"] / 0.01)).transform("median")
    edge, face = resid[disky["q_disk"] < 0.3], resid[disky["q_disk"] > 0.9]
    assert 0.04 < edge.median() - face.median() < 0.15
