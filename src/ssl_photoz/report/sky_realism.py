"""How realistic is the simulated survey? Compare it with real SDSS galaxies.

References (packaged with ssl_photoz: ``data/real``, see its MANIFEST.md):
- ``mlz/SDSS_MGS.train.gz``: 5,000 real Main Galaxy Sample galaxies (spec-z, dereddened
  model ugriz);
- ``sdss_frames_004510-4-0030``: a strip of the five real frames of one field and its stars.

Checks (thresholds from the issue; two disjoint real MGS samples differ by up to 0.09 in KS distance
and 0.2 mag in u-g, so they sit at the level of real-sample scatter):
- median z of the MGS-like sample within 0.015 of the real one;
- KS distance of the dereddened r distributions < 0.15;
- median g-r and r-i per z bin of 0.05 within 0.1 mag, u-g within 0.2 mag, wherever the real bin
  holds at least 50 galaxies;
- a 10-nearest-neighbour colour photo-z trained and tested on the simulation: sigma_MAD in
  [0.010, 0.018] (0.0136 on the real MGS);
- resolved colours: the median bulge-minus-disk g-r of blue-cloud bulge + disk galaxies is
  positive (bulges redder); the face-on to edge-on reddening in g-r of disk-dominated galaxies
  within 0.05 of Masters et al. (2010)'s 0.1 (0.6 - 0.5 mag);
- the power-law fit of the projected correlation function w_p(r_p) of the MGS-like sample
  (``sky_clustering``): r0 and gamma against Zehavi et al. (2005), with limits that tell a
  clustered sky from an unclustered one (see ``R0_LIMITS``);
- the pretraining pool: unlabeled over labeled objects after the catalogue queries and the
  select stage (the paper's cuts), within 25 % of Hayat et al. (2021)'s 1,194,779 / 502,977.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from ssl_photoz.baselines.colours_knn import colour_features, knn_photoz
from ssl_photoz.core.metrics import delta_z, sigma_mad
from ssl_photoz.surveys.sdss.conventions import BANDS as BANDS_ORDER
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, MGS_SAMPLE, real_path

MGS_COLUMNS = "zs u g r i z u-g g-r r-i i-z eu eg er ei ez eu-g eg-r er-i ei-z".split()
Z_BIN = 0.05
MIN_REAL_PER_BIN = 50
MIN_SIM_PER_BIN = 30  # below this a simulated median is too noisy to compare
PAPER_POOL_RATIO = 1_194_779 / 502_977  # Hayat et al. (2021): unlabeled / labeled galaxies
# Relative. Where the |b| cut falls unevenly on the imaging-only and spectroscopic parts of a small
# region the ratio moves a lot (the demo sky's is 1.64, the science sky's 2.36).
POOL_RATIO_TOLERANCE = 0.25
# The paper's select cuts (config.yaml's select block), for the pool-ratio check.
PAPER_SELECT = {
    "seed": 0,
    "b_min_deg": 15.0,
    "photoz_max": 0.8,
    "r_max": 17.8,
    "z_min": 0.0,
    "z_max": 0.4,
    "val_fraction": 102_993 / 502_977,
}


class TooFewGalaxies(ValueError):
    """The survey is too small for the realism statistics to mean anything."""


@dataclass
class Check:
    name: str
    simulated: float
    real: float
    limit: str
    passed: bool


def load_real_mgs(path: Path | None = None) -> pd.DataFrame:
    """The real MGS sample as columns z, u, g, r, i, z_mag (dereddened model magnitudes)."""
    path = Path(path) if path is not None else real_path(*MGS_SAMPLE)
    if not path.exists():
        raise FileNotFoundError(f"{path}: the real MGS reference sample is missing")
    df = pd.read_csv(path, sep=r"\s+", comment="#", header=None, names=MGS_COLUMNS)
    return pd.DataFrame(
        {"z": df["zs"], "u": df["u"], "g": df["g"], "r": df["r"], "i": df["i"], "z_mag": df["z"]}
    )


def simulated_mgs(sky_dir: Path) -> pd.DataFrame:
    """The simulation's MGS-like sample: dereddened petroMag_r <= 17.8, true z <= 0.4.

    Read straight from the DuckDB catalogue and the truth table (validation is the one place the
    truth is joined to the catalogue).
    """
    import duckdb

    sky_dir = Path(sky_dir)
    con = duckdb.connect(str(sky_dir / "sdss_mock.duckdb"), read_only=True)
    try:
        photo = con.execute(
            """
            SELECT objID, ra, dec, dered_u AS u, dered_g AS g, dered_r AS r, dered_i AS i,
                dered_z AS z_mag
            FROM PhotoObjAll
            WHERE mode = 1 AND type = 3 AND petroMag_r - extinction_r <= 17.8
            """
        ).df()
    finally:
        con.close()
    truth = pd.read_parquet(sky_dir / "truth.parquet", columns=["objID", "z_true", *STRUCTURE])
    sample = photo.merge(truth, on="objID", how="inner").rename(columns={"z_true": "z"})
    return sample[sample["z"] <= 0.4].reset_index(drop=True)


# Truth columns of the resolved-colour checks (``structure_checks``).
STRUCTURE = ["population", "bulge_frac_rest", "bulge_frac_g", "bulge_frac_r", "q_disk"]
# Masters et al. (2010, abstract): extinction from face-on to edge-on 0.6 mag in g, 0.5 in r.
MASTERS_EDGE_ON_GR = 0.1
EDGE_ON_Q = 0.2  # the simulated disks' thickness: log10(a/b) = log10(5) edge-on


def bulge_disk_gr(sample: pd.DataFrame) -> np.ndarray:
    """(g-r) of the bulge minus (g-r) of the disk, from the per-band bulge fractions."""
    fg, fr = sample["bulge_frac_g"].to_numpy(), sample["bulge_frac_r"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return -2.5 * np.log10(fg / fr) + 2.5 * np.log10((1.0 - fg) / (1.0 - fr))


def edge_on_reddening(sample: pd.DataFrame) -> float:
    """Face-on to edge-on reddening in catalogue g-r of disk-dominated blue galaxies (rest-frame
    r bulge fraction < 0.3, chosen on the truth so inclination cannot bias the selection): the
    slope of g-r (about its median in z bins of 0.01) against log10(a/b) / log10(5)."""
    disky = sample[(sample["population"] == "blue") & (sample["bulge_frac_rest"] < 0.3)]
    gr = disky["g"] - disky["r"]
    resid = gr - gr.groupby(np.floor(disky["z"] / 0.01)).transform("median")
    x = np.log10(1.0 / disky["q_disk"]) / np.log10(1.0 / EDGE_ON_Q)
    return float(np.polyfit(x, resid, 1)[0])


def structure_checks(sim: pd.DataFrame) -> list[Check]:
    """Resolved colours and inclination dust of the MGS-like sample against published trends."""
    bd = sim[(sim["bulge_frac_r"] >= 0.2) & (sim["bulge_frac_r"] <= 0.8)]
    dgr = float(np.median(bulge_disk_gr(bd[bd["population"] == "blue"])))
    # Bulges redder than their disks in spirals; no published amplitude verified (see
    # docs/simulation.md), so the limit is the sign and a generous bound.
    checks = [
        Check("bulge - disk g-r, blue B+D (median)", dgr, np.nan, "in (0, 0.4]", 0 < dgr <= 0.4)
    ]
    red = float(edge_on_reddening(sim))
    ok = abs(red - MASTERS_EDGE_ON_GR) <= 0.05
    checks.append(
        Check("edge-on - face-on g-r, disky", red, MASTERS_EDGE_ON_GR, "|diff| <= 0.05", ok)
    )
    return checks


def knn_sigma_mad(sample: pd.DataFrame, seed: int = 0, k: int = 10) -> float:
    """Split a sample in two halves, train the colour kNN on one, score sigma_MAD on the other."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sample))
    half = len(sample) // 2
    train, test = sample.iloc[order[:half]], sample.iloc[order[half:]]

    def feats(d):
        return colour_features(d["u"], d["g"], d["r"], d["i"], d["z_mag"])

    z_pred = knn_photoz(feats(train), train["z"], feats(test), k=k)
    return sigma_mad(delta_z(z_pred, test["z"].to_numpy()))


def colour_medians(sample: pd.DataFrame) -> pd.DataFrame:
    """Median colours and counts per z bin of width 0.05."""
    bins = np.floor(sample["z"] / Z_BIN).astype(int)
    colours = pd.DataFrame(
        {
            "u-g": sample["u"] - sample["g"],
            "g-r": sample["g"] - sample["r"],
            "r-i": sample["r"] - sample["i"],
            "bin": bins,
        }
    )
    out = colours.groupby("bin").median()
    out["n"] = colours.groupby("bin").size()
    return out


def realism_checks(sim: pd.DataFrame, real: pd.DataFrame) -> list[Check]:
    checks = []
    zs, zr = float(sim["z"].median()), float(real["z"].median())
    checks.append(Check("median z (MGS-like)", zs, zr, "|diff| <= 0.015", abs(zs - zr) <= 0.015))
    ks = float(ks_2samp(sim["r"], real["r"]).statistic)
    checks.append(Check("KS distance of dereddened r", ks, 0.0, "< 0.15", ks < 0.15))
    sim_c, real_c = colour_medians(sim), colour_medians(real)
    for b, row in real_c.iterrows():
        if row["n"] < MIN_REAL_PER_BIN or b not in sim_c.index:
            continue
        if sim_c.loc[b, "n"] < MIN_SIM_PER_BIN:
            continue
        label = f"z {b * Z_BIN:.2f}-{(b + 1) * Z_BIN:.2f}"
        for colour, tol in (("g-r", 0.1), ("r-i", 0.1), ("u-g", 0.2)):
            s, r = float(sim_c.loc[b, colour]), float(row[colour])
            checks.append(
                Check(f"median {colour}, {label}", s, r, f"|diff| <= {tol}", abs(s - r) <= tol)
            )
    sim_sigma = knn_sigma_mad(sim)
    # The real reference uses as many galaxies as the simulation has: kNN gets worse with fewer
    # training galaxies, and the comparison should not blame the simulation for that.
    n = min(len(sim), len(real))
    real_sigma = knn_sigma_mad(real.sample(n=n, random_state=0) if n < len(real) else real)
    checks.append(
        Check(
            "kNN colour photo-z sigma_MAD",
            sim_sigma,
            real_sigma,
            "in [0.010, 0.018]",
            0.010 <= sim_sigma <= 0.018,
        )
    )
    return checks


REAL_FIELD = 30
PIXEL_FIELDS = 2  # simulated fields sampled for the pixel checks
STAR_WINDOW = 24  # half-size (px) of the window rendered around each simulated star


def real_pixel_reference(frame_dir: Path | None = None) -> dict[str, dict[str, float]]:
    """Background sigma and median bright-star FWHM (arcsec) of the real frames, per band.

    Star positions come from each band's WCS, not the catalogue's COLC/ROWC: the packaged
    frames are a strip of the original columns (their CRPIX moved with the crop), and stars
    off the strip simply give no FWHM."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    from ssl_photoz.surveys.sdss.sky.pixels import (
        background_sigma,
        isolated_bright_stars,
        median_star_fwhm_arcsec,
    )

    frame_dir = Path(frame_dir) if frame_dir is not None else real_path(*FRAMES_4510_4_0030)
    cat = fits.getdata(frame_dir / "calibObj-004510-4-star.fits.gz")
    cat = cat[cat["FIELD"] == REAL_FIELD]
    stars = isolated_bright_stars(cat["RA"], cat["DEC"], cat["PSFFLUX"][:, 2])
    out = {}
    for band in BANDS_ORDER:
        with fits.open(frame_dir / f"frame-{band}-004510-4-0030.fits.bz2") as hdul:
            image = hdul[0].data.astype(float)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(hdul[0].header)
        x, y = wcs.all_world2pix(cat["RA"][stars], cat["DEC"][stars], 0)
        out[band] = {
            "sigma": background_sigma(image),
            "fwhm": median_star_fwhm_arcsec(image, x, y),
        }
    return out


def simulated_pixel_measures(sky_dir: Path, n_fields: int = PIXEL_FIELDS) -> dict:
    """The same measures on rendered simulated frames: a blank-ish window for the background
    and windows around the bright isolated stars of a few fields."""
    from ssl_photoz.surveys.sdss.conventions import PIXEL_SCALE_ARCSEC
    from ssl_photoz.surveys.sdss.sky.footprint import FRAME_COLUMNS, FRAME_ROWS
    from ssl_photoz.surveys.sdss.sky.pixels import (
        background_sigma,
        isolated_bright_stars,
        star_fwhm,
    )
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

    sky = MockSky(sky_dir)
    fields = sky.footprint.fields
    picks = [fields[int(k)] for k in np.linspace(0, len(fields) - 1, n_fields)]
    truth = sky.truth
    sigmas = {b: [] for b in BANDS_ORDER}
    fwhms = {b: [] for b in BANDS_ORDER}
    for fid in picks:
        for band in BANDS_ORDER:
            hdul = sky.render(fid, band, window=(0, 256, 0, 256))
            sigmas[band].append(background_sigma(hdul[0].data))
        wcs = sky.footprint.frame_wcs(fid, "r")
        x, y = wcs.all_world2pix(truth["ra"], truth["dec"], 0)
        on = (x > STAR_WINDOW) & (x < FRAME_COLUMNS - STAR_WINDOW)
        on &= (y > STAR_WINDOW) & (y < FRAME_ROWS - STAR_WINDOW)
        cand = truth[on]
        flux_r = np.where(cand["is_star"], 10 ** (-0.4 * (cand["mag_r"] - 22.5)), 0.0)
        picked = cand.iloc[isolated_bright_stars(cand["ra"], cand["dec"], flux_r)][:6]
        for _, star in picked.iterrows():
            for band in BANDS_ORDER:
                bwcs = sky.footprint.frame_wcs(fid, band)
                sx, sy = (float(v) for v in bwcs.all_world2pix(star["ra"], star["dec"], 0))
                # Per-band offsets move the star a little: keep its window on the frame.
                x0 = min(max(int(sx) - STAR_WINDOW, 0), FRAME_COLUMNS - 2 * STAR_WINDOW)
                y0 = min(max(int(sy) - STAR_WINDOW, 0), FRAME_ROWS - 2 * STAR_WINDOW)
                window = (x0, x0 + 2 * STAR_WINDOW, y0, y0 + 2 * STAR_WINDOW)
                image = sky.render(fid, band, window=window)[0].data
                fwhm = star_fwhm(image, sx - x0, sy - y0)
                if np.isfinite(fwhm):
                    fwhms[band].append(fwhm * PIXEL_SCALE_ARCSEC)
    return {
        b: {"sigma": float(np.median(sigmas[b])), "fwhm": float(np.median(fwhms[b] or [np.nan]))}
        for b in BANDS_ORDER
    }


def pixel_checks(sim: dict, real: dict) -> list[Check]:
    checks = []
    for band in BANDS_ORDER:
        s, r = sim[band]["sigma"], real[band]["sigma"]
        checks.append(
            Check(f"background sigma {band} (nmgy)", s, r, "within 30 %", abs(s / r - 1) <= 0.3)
        )
    for band in BANDS_ORDER:
        s, r = sim[band]["fwhm"], real[band]["fwhm"]
        ok = bool(np.isfinite(s)) and abs(s / r - 1) <= 0.2
        checks.append(Check(f"bright-star FWHM {band} (arcsec)", s, r, "within 20 %", ok))
    return checks


def pool_counts(sky_dir: Path, select_settings: dict | None = None) -> tuple[int, int]:
    """(labeled, unlabeled) objects of the sky: the packaged queries, then the select stage."""
    from ssl_photoz.catalog.select import select_catalog
    from ssl_photoz.surveys.sdss.query.run import run_duckdb
    from ssl_photoz.surveys.sdss.query.sql import load_query

    db = Path(sky_dir) / "sdss_mock.duckdb"
    labeled = run_duckdb(load_query("labeled"), db)
    unlabeled = run_duckdb(load_query("unlabeled"), db)
    totals = select_catalog(labeled, unlabeled, select_settings or PAPER_SELECT).counts["totals"]
    return totals["train"] + totals["val"], totals["unlabeled"]


def pool_ratio_check(n_labeled: int, n_unlabeled: int) -> Check:
    ratio = n_unlabeled / max(n_labeled, 1)
    ok = abs(ratio / PAPER_POOL_RATIO - 1.0) <= POOL_RATIO_TOLERANCE
    return Check("unlabeled / labeled objects", ratio, PAPER_POOL_RATIO, "within 25 %", bool(ok))


def format_table(checks: list[Check], sample_sizes: tuple[int, int]) -> str:
    lines = [
        f"Simulated vs real SDSS (simulated MGS-like n={sample_sizes[0]}, "
        f"real MGS n={sample_sizes[1]})",
        f"{'check':42s} {'simulated':>10s} {'real':>10s}  {'limit':18s} result",
    ]
    for c in checks:
        lines.append(
            f"{c.name:42s} {c.simulated:10.4f} {c.real:10.4f}  {c.limit:18s} "
            f"{'PASS' if c.passed else 'FAIL'}"
        )
    n_fail = sum(not c.passed for c in checks)
    lines.append(f"{len(checks) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)


# Zehavi et al. (2005), SDSS MGS: r0 about 5.5 h^-1 Mpc, gamma about 1.8 (values as quoted in
# issue 22; not re-read in the paper). On the 72 deg^2 validation sky the fit scatters (seeds
# 7-12: r0 2.7-3.9, gamma 2.0-2.4) and sits below the model's input (a 500 deg^2 sky gives
# r0 3.8, gamma 2.06); an unclustered sky gives w_p ~ 0 and no fit. The limits catch a sky
# without clustering, not a 30 % error in r0.
ZEHAVI_R0, ZEHAVI_GAMMA = 5.5, 1.8
R0_LIMITS, GAMMA_LIMITS = (2.3, 8.0), (1.5, 2.7)


def clustering_checks(sim: pd.DataFrame, sky_dir: Path) -> list[Check]:
    """w_p(r_p) power-law fit of the MGS-like sample (true redshifts) against Zehavi et al."""
    import json

    from ssl_photoz.report.sky_clustering import power_law_fit, projected_correlation
    from ssl_photoz.surveys.sdss.sky.footprint import Footprint

    fp = Footprint(**json.loads((Path(sky_dir) / "sky.json").read_text())["settings"]["footprint"])
    box = ((fp.ra_min, fp.ra_max), (fp.dec_min, fp.dec_max))
    rp, wp = projected_correlation(sim["ra"], sim["dec"], sim["z"], box)
    try:
        r0, gamma = power_law_fit(rp, wp)
    except (RuntimeError, ValueError):  # no positive w_p to fit: an unclustered sky
        r0, gamma = 0.0, 0.0
    lo, hi = R0_LIMITS
    g_lo, g_hi = GAMMA_LIMITS
    return [
        Check("w_p fit r0 (h^-1 Mpc)", r0, ZEHAVI_R0, f"in [{lo}, {hi}]", lo <= r0 <= hi),
        Check("w_p fit gamma", gamma, ZEHAVI_GAMMA, f"in [{g_lo}, {g_hi}]", g_lo <= gamma <= g_hi),
    ]


def validate_sky(sky_dir: Path, pixels: bool = True) -> tuple[list[Check], str]:
    sim = simulated_mgs(sky_dir)
    real = load_real_mgs()
    if len(sim) < 200:
        raise TooFewGalaxies(
            f"{sky_dir}: only {len(sim)} MGS-like galaxies; the realism checks need at least 200 "
            "(enlarge sky.region)"
        )
    checks = realism_checks(sim, real) + structure_checks(sim) + clustering_checks(sim, sky_dir)
    checks.append(pool_ratio_check(*pool_counts(sky_dir)))
    if pixels:
        checks += pixel_checks(simulated_pixel_measures(sky_dir), real_pixel_reference())
    return checks, format_table(checks, (len(sim), len(real)))
