"""Turn the simulated truth into SDSS-shaped catalogue tables.

From the truth (``population``) this module makes what the SDSS pipelines would have measured:
PhotoObjAll (with secondary detections in the overlaps of neighbouring frames, photometric noise,
per-field calibration errors, Petrosian magnitudes that miss part of a de Vaucouleurs profile,
extinction from an imperfect dust map, written as SDSS writes it: the SFD98 coefficients times the
map's E(B-V)), SpecObjAll (MGS targeting at dereddened Petrosian r <= 17.77 with fibre collisions
and incompleteness, LRG and BOSS extras, star and QSO spectra, repeat spectra, redshift warnings),
galSpecInfo and Photoz (a Beck et al. 2016-like photometric redshift with scatter and outliers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssl_photoz.surveys.sdss.conventions import BANDS, pack_objid, pack_specobjid
from ssl_photoz.surveys.sdss.extinction import catalogue_extinction, ebv_from_extinction
from ssl_photoz.surveys.sdss.sky import conditions, dust
from ssl_photoz.surveys.sdss.sky.footprint import (
    CAMCOLS,
    FIELD_STEP_DEG,
    FRAME_HEIGHT_DEG,
    FRAME_WIDTH_DEG,
    Footprint,
)

# Effective 5-sigma depths for galaxy model magnitudes, from the errors of real MGS galaxies
# (ssl_photoz/data/real/mlz/SDSS_MGS.train.gz: e.g. 0.006 mag at r = 17.3, 0.064 at u = 19.7).
GALAXY_DEPTH = np.array([21.0, 21.7, 21.2, 20.85, 19.65])
# Point-source 5-sigma depths of SDSS imaging (u g r i z).
PSF_DEPTH = np.array([22.0, 22.2, 22.2, 21.3, 20.5])
ERROR_FLOOR = 0.003
MGS_PETRO_R_LIMIT = 17.77  # SDSS targeting limit (Strauss et al. 2002), dereddened Petrosian r
FIBER_COLLISION_ARCSEC = 55.0
FLAG_BLENDED = 1 << 3
FLAG_SATURATED = 1 << 18
TARGET_GALAXY = 64  # legacy_target1 bit of the Main Galaxy Sample
TARGET_GALAXY_RED = 32  # LRG
TARGET_QSO_HIZ = 1 << 1
TARGET_STAR_BROWN_DWARF = 1 << 25


def magnitude_errors(mag: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Sky-limited errors: sigma = (1.0857 / 5) 10^(0.4 (m - m5)), with a calibration floor."""
    sky = 1.0857 / 5.0 * 10.0 ** (0.4 * (mag - depth))
    return np.sqrt(sky**2 + ERROR_FLOOR**2)


def _near_boundary_shift(offset, half_step, overlap) -> np.ndarray:
    """+1 / -1 where a position lies in the overlap with the next / previous cell, else 0."""
    out = np.zeros(np.shape(offset), dtype=np.int64)
    out[offset > half_step - overlap] = 1
    out[offset < -half_step + overlap] = -1
    return out


def detections(truth: pd.DataFrame, footprint: Footprint) -> pd.DataFrame:
    """Primary and secondary detections: one row per (object, frame that holds it)."""
    run, camcol, field, inside = footprint.locate(truth["ra"], truth["dec"])
    prim = pd.DataFrame(
        {"truth_row": np.arange(len(truth)), "run": run, "camcol": camcol, "field": field}
    )[inside].reset_index(drop=True)
    prim["mode"] = 1
    # Frames reach beyond their primary area by half the 128-row overlap along the scan and by
    # the camcol overlap across it: objects there are detected twice (mode 2 = secondary).
    ra = truth["ra"].to_numpy()[prim["truth_row"]]
    dec = truth["dec"].to_numpy()[prim["truth_row"]]
    ra_c, dec_c = footprint.field_centre(prim["run"], prim["camcol"], prim["field"])
    along = (ra - ra_c) * np.cos(np.radians(dec))
    across = dec - dec_c
    d_field = _near_boundary_shift(
        along, FIELD_STEP_DEG / 2, (FRAME_HEIGHT_DEG - FIELD_STEP_DEG) / 2
    )
    spacing = footprint.camcol_spacing_deg
    d_camcol = _near_boundary_shift(across, spacing / 2, (FRAME_WIDTH_DEG - spacing) / 2)
    secondaries = []
    sec = prim[d_field != 0].copy()
    sec["field"] += d_field[d_field != 0]
    secondaries.append(sec)
    sec = prim[d_camcol != 0].copy()
    # Across camcols, the neighbouring frame is the one at the same sky position.
    slot = (
        (sec["run"] - footprint.first_run) * CAMCOLS + sec["camcol"] - 1 + d_camcol[d_camcol != 0]
    )
    ok = (slot >= 0) & (slot < footprint.n_runs * CAMCOLS)
    sec = sec[ok.to_numpy()].copy()
    sec["run"] = footprint.first_run + slot[ok] // CAMCOLS
    sec["camcol"] = slot[ok] % CAMCOLS + 1
    step = footprint.field_ra_step(sec["run"].to_numpy(), sec["camcol"].to_numpy())
    sec["field"] = footprint.first_field + np.floor(
        (truth["ra"].to_numpy()[sec["truth_row"]] - footprint.ra_min) / step
    ).astype(np.int64)
    secondaries.append(sec)
    det = pd.concat([prim, *secondaries], ignore_index=True)
    det.loc[det.index >= len(prim), "mode"] = 2
    last_field = (
        footprint.first_field
        + footprint.n_fields(det["run"].to_numpy(), det["camcol"].to_numpy())
        - 1
    )
    det = det[(det["field"] >= footprint.first_field) & (det["field"] <= last_field)]
    # obj numbers count up within each field, in scan order, as the photo pipeline's do.
    det = det.assign(_ra=truth["ra"].to_numpy()[det["truth_row"]])
    det = det.sort_values(["run", "camcol", "field", "_ra", "mode"], kind="stable")
    # Runs are built independently: detections spilling into a neighbouring run take obj numbers
    # from a range of their own so they can never collide with that run's own objects.
    source_run = footprint.first_run + (
        (
            np.floor(
                (truth["dec"].to_numpy()[det["truth_row"]] - footprint.dec_min)
                / footprint.camcol_spacing_deg
            ).astype(np.int64)
        )
        // CAMCOLS
    )
    from_side = np.sign(det["run"].to_numpy() - source_run)  # 0 own run, -1 / +1 neighbours
    det["_side"] = from_side
    det["obj"] = det.groupby(["run", "camcol", "field", "_side"]).cumcount() + 1
    det.loc[from_side == -1, "obj"] += 50_000
    det.loc[from_side == 1, "obj"] += 57_000
    det["objID"] = pack_objid(det["run"], det["camcol"], det["field"], det["obj"], footprint.rerun)
    return det.drop(columns=["_ra", "_side"]).reset_index(drop=True)


def petrosian_captured(t: pd.DataFrame, is_star: np.ndarray) -> np.ndarray:
    """(n, 5) share of the flux a Petrosian aperture captures in each band.

    Petrosian apertures miss about 20 % of a de Vaucouleurs profile and 2 % of an exponential
    (Blanton et al. 2001); for stars the Petrosian flux is nearly total. Per band where bulge
    and disk have their own SEDs (the bulge's share differs by band).
    """
    per_band = [f"bulge_frac_{b}" for b in BANDS]
    if set(per_band) <= set(t.columns):
        bulge = t[per_band].to_numpy()
    else:
        bulge = t["bulge_frac"].to_numpy()[:, None]
    return np.where(is_star[:, None], 0.99, 0.80 * bulge + 0.98 * (1.0 - bulge))


def photo_obj_all(
    truth: pd.DataFrame, footprint: Footprint, rng: np.random.Generator, model
) -> pd.DataFrame:
    """The PhotoObjAll table: what SDSS photometry would report for each detection."""
    det = detections(truth, footprint)
    t = truth.iloc[det["truth_row"].to_numpy()].reset_index(drop=True)
    n = len(det)
    is_star = t["is_star"].to_numpy()
    true_mag = t[[f"mag_{b}" for b in BANDS]].to_numpy()
    zp, fwhm = conditions.per_field_table(
        footprint.seed,
        det["run"],
        det["camcol"],
        det["field"],
        "zero_point_offset_mag",
        "psf_fwhm_arcsec",
    )
    depth = np.where(is_star[:, None], PSF_DEPTH, GALAXY_DEPTH)
    err = magnitude_errors(true_mag, depth)
    model_mag = true_mag + zp + rng.normal(0.0, 1.0, (n, 5)) * err
    captured = petrosian_captured(t, is_star)
    petro_err = err * 1.3
    petro_mag = true_mag + zp - 2.5 * np.log10(captured) + rng.normal(0, 1, (n, 5)) * petro_err
    gal_l, gal_b = dust.galactic(t["ra"], t["dec"])
    ebv_map = dust.map_ebv(
        gal_l, gal_b, footprint.seed, model.ebv_pole, model.dust_clumpiness, model.dust_map_error
    )
    # As SDSS writes them: the SFD98 coefficients times the map's E(B-V) (the pixels are dimmed
    # by SF11 x the true E(B-V), population.py).
    extinction = catalogue_extinction(ebv_map)
    r50 = t["r50_arcsec"].to_numpy()
    petro_r50 = np.sqrt(r50**2 + (0.5 * fwhm[:, BANDS.index("r")]) ** 2) * rng.lognormal(0, 0.05, n)
    # Positions: astrometric scatter of a few hundredths of an arcsec; secondaries re-measured.
    pos_err = 0.03 / 3600.0
    ra = t["ra"].to_numpy() + rng.normal(0, pos_err, n) / np.cos(np.radians(t["dec"].to_numpy()))
    dec = t["dec"].to_numpy() + rng.normal(0, pos_err, n)
    flags = np.zeros(n, dtype=np.int64)
    flags[is_star & (true_mag[:, 2] < 14.0)] |= FLAG_SATURATED
    clean = (rng.uniform(size=n) > 0.03).astype(np.int16)
    clean[(flags & FLAG_SATURATED) != 0] = 0
    table = {
        "objID": det["objID"].to_numpy(),
        "skyVersion": np.full(n, 2, dtype=np.int16),
        "run": det["run"].to_numpy().astype(np.int32),
        "rerun": np.full(n, footprint.rerun, dtype=np.int32),
        "camcol": det["camcol"].to_numpy().astype(np.int16),
        "field": det["field"].to_numpy().astype(np.int32),
        "obj": det["obj"].to_numpy().astype(np.int32),
        "mode": det["mode"].to_numpy().astype(np.int16),
        "nChild": np.zeros(n, dtype=np.int16),
        "type": np.where(is_star, 6, 3).astype(np.int16),
        "clean": clean,
        "insideMask": np.zeros(n, dtype=np.int16),
        "flags": flags,
        "ra": ra,
        "dec": dec,
        "l": gal_l,
        "b": gal_b,
    }
    for k, b in enumerate(BANDS):
        table[f"psfMag_{b}"] = np.where(is_star, model_mag[:, k], model_mag[:, k] + 0.4)
        table[f"petroMag_{b}"] = petro_mag[:, k]
        table[f"petroMagErr_{b}"] = petro_err[:, k]
        table[f"modelMag_{b}"] = model_mag[:, k]
        table[f"modelMagErr_{b}"] = err[:, k]
        table[f"extinction_{b}"] = extinction[:, k]
        table[f"dered_{b}"] = model_mag[:, k] - extinction[:, k]
        table[f"psffwhm_{b}"] = fwhm[:, k]
    table["petroR50_r"] = petro_r50
    photo = pd.DataFrame(table)
    _mask_bright_star_halos(photo)
    photo["truth_row"] = det["truth_row"].to_numpy()
    return photo


def _mask_bright_star_halos(photo: pd.DataFrame) -> None:
    """insideMask = 1 within the halo of a bright star (radius grows with its brightness)."""
    from scipy.spatial import cKDTree

    bright = photo[(photo["type"] == 6) & (photo["modelMag_r"] < 13.0) & (photo["mode"] == 1)]
    if bright.empty:
        return
    xyz = _unit_vectors(photo["ra"].to_numpy(), photo["dec"].to_numpy())
    tree = cKDTree(xyz)
    bxyz = _unit_vectors(bright["ra"].to_numpy(), bright["dec"].to_numpy())
    radius_arcsec = 30.0 * 10.0 ** (-0.2 * (bright["modelMag_r"].to_numpy() - 13.0))
    inside = np.zeros(len(photo), dtype=bool)
    for p, rad in zip(bxyz, np.radians(radius_arcsec / 3600.0), strict=True):
        inside[tree.query_ball_point(p, rad)] = True
    photo.loc[inside, "insideMask"] = 1


def _unit_vectors(ra, dec) -> np.ndarray:
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    return np.column_stack(
        [np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)]
    )


def _fibre_collisions(ra, dec, rng) -> np.ndarray:
    """True for targets lost to a fibre collision (55"), about 70 % of colliding pairs."""
    from scipy.spatial import cKDTree

    if len(ra) < 2:
        return np.zeros(len(ra), dtype=bool)
    tree = cKDTree(_unit_vectors(ra, dec))
    pairs = tree.query_pairs(np.radians(FIBER_COLLISION_ARCSEC / 3600.0), output_type="ndarray")
    lost = np.zeros(len(ra), dtype=bool)
    for i, j in pairs:
        if lost[i] or lost[j]:
            continue
        if rng.uniform() < 0.7:  # overlapping plates recover about 30 % of the collisions
            lost[j if rng.uniform() < 0.5 else i] = True
    return lost


@dataclass(frozen=True)
class _Targets:
    """Per primary detection: what SDSS's target selection would have made of it."""

    is_gal: np.ndarray
    dered_gr: np.ndarray
    mgs: np.ndarray
    lrg: np.ndarray
    star_spec: np.ndarray
    qso: np.ndarray
    targeted: np.ndarray  # any of the above, inside the spectroscopic footprint


def _select_targets(prim: pd.DataFrame, covered: np.ndarray, rng) -> _Targets:
    """MGS (dereddened Petrosian r <= 17.77), LRG-like red galaxies, a few stars and QSOs."""
    is_gal = prim["type"].to_numpy() == 3
    dered_petro_r = (prim["petroMag_r"] - prim["extinction_r"]).to_numpy()
    dered_gr = (prim["dered_g"] - prim["dered_r"]).to_numpy()
    mgs = is_gal & (dered_petro_r <= MGS_PETRO_R_LIMIT) & (prim["petroR50_r"].to_numpy() > 0)
    lrg = (
        is_gal
        & ~mgs
        & (dered_petro_r < 19.2)
        & (dered_gr > 1.25)
        & (rng.uniform(size=len(prim)) < 0.6)
    )
    stars = ~is_gal & (prim["modelMag_r"].to_numpy() < 19.0)
    star_spec = stars & (rng.uniform(size=len(prim)) < 0.02)
    qso = stars & ~star_spec & (rng.uniform(size=len(prim)) < 0.01)
    targeted = (mgs | lrg | star_spec | qso) & covered
    return _Targets(is_gal, dered_gr, mgs, lrg, star_spec, qso, targeted)


def _observed(prim: pd.DataFrame, targeted: np.ndarray, rng) -> np.ndarray:
    """The targets that got a spectrum: minus fibre collisions and failed fibres."""
    lost = np.zeros(len(prim), dtype=bool)
    idx = np.nonzero(targeted)[0]
    lost[idx] = _fibre_collisions(prim["ra"].to_numpy()[idx], prim["dec"].to_numpy()[idx], rng)
    lost |= rng.uniform(size=len(prim)) > 0.97  # failed fibres, unplugged, bad plates
    return targeted & ~lost


def _target_bits(tg: _Targets, rng) -> np.ndarray:
    """legacy_target1 (primTarget) bits of every primary detection."""
    primtarget = np.zeros(len(tg.mgs), dtype=np.int64)
    primtarget[tg.mgs] |= TARGET_GALAXY
    red_mgs = tg.mgs & (tg.dered_gr > 1.25) & (rng.uniform(size=len(tg.mgs)) < 0.5)
    primtarget[tg.lrg | red_mgs] |= TARGET_GALAXY_RED
    primtarget[tg.qso] |= TARGET_QSO_HIZ
    primtarget[tg.star_spec] |= TARGET_STAR_BROWN_DWARF
    return primtarget


def _redshifts(z_true: np.ndarray, is_gal: np.ndarray, qso: np.ndarray, rng):
    """(class, z, zErr, zWarning) of the spectra: measured redshifts with errors, QSOs at high
    redshift, and 1.5 % flagged with an often wrong redshift."""
    n = len(z_true)
    cls = np.where(is_gal, "GALAXY", "STAR").astype(object)
    cls[qso] = "QSO"
    z_true = np.where(qso, rng.uniform(0.3, 3.0, n), z_true)
    z_err = np.where(cls == "STAR", 1e-5, 1.5e-5 * (1 + z_true) * rng.lognormal(0, 0.5, n))
    z = z_true + rng.normal(0, 1, n) * z_err
    z_warning = np.zeros(n, dtype=np.int32)
    warn = rng.uniform(size=n) < 0.015
    # Flags such as SMALL_DELTA_CHI2 (4), MANY_OUTLIERS (16), ...
    z_warning[warn] = rng.choice([4, 16, 128], size=warn.sum())
    z[warn] = np.where(rng.uniform(size=warn.sum()) < 0.5, rng.uniform(0, 0.6, warn.sum()), z[warn])
    z_err[warn] *= 20
    return cls, z, z_err, z_warning


def _plates(ra: np.ndarray, dec: np.ndarray, is_repeat: np.ndarray, first_plate: int):
    """(plate, mjd, fiberID) of the spectra: plates are cells of about 2.5 deg (repeats on plates
    of their own), fibres numbered within each plate."""
    cell = np.floor(ra / 2.5).astype(np.int64) * 1000 + np.floor((dec + 90) / 2.5).astype(np.int64)
    _, cell_idx = np.unique(cell + is_repeat * 500_000, return_inverse=True)
    plate = first_plate + cell_idx
    mjd = 51600 + (plate * 37) % 3000
    fiber = pd.Series(plate).groupby(plate).cumcount().to_numpy() % 640 + 1
    return plate, mjd, fiber


def _science_primary(best_obj: np.ndarray, z_warning: np.ndarray, z_err: np.ndarray):
    """sciencePrimary: 1 for the best (no warning, then smallest zErr) of an object's spectra."""
    n = len(best_obj)
    order = pd.DataFrame({"obj": best_obj, "bad": z_warning > 0, "zerr": z_err, "i": np.arange(n)})
    order = order.sort_values(["obj", "bad", "zerr"])
    science_primary = np.zeros(n, dtype=np.int16)
    science_primary[order.drop_duplicates("obj")["i"].to_numpy()] = 1
    return science_primary


def _gal_spec_info(spec: pd.DataFrame, ebv_sfd: np.ndarray) -> pd.DataFrame:
    """galSpecInfo: one row per galaxy spectrum, with the SFD E(B-V) at its position."""
    gal = spec[spec["class"] == "GALAXY"]
    return pd.DataFrame(
        {
            "specObjID": gal["specObjID"].to_numpy(),
            "plateid": gal["plate"].to_numpy(),
            "mjd": gal["mjd"].to_numpy(),
            "fiberid": gal["fiberID"].to_numpy(),
            "ra": gal["ra"].to_numpy(),
            "dec": gal["dec"].to_numpy(),
            "primtarget": gal["primTarget"].to_numpy(),
            "sectarget": np.zeros(len(gal), dtype=np.int64),
            "targettype": np.where(gal["primTarget"].to_numpy() & TARGET_GALAXY, "GALAXY", "LRG"),
            "z": gal["z"].to_numpy(),
            "z_err": gal["zErr"].to_numpy(),
            "z_warning": gal["zWarning"].to_numpy(),
            "e_bv_sfd": ebv_sfd,
            "reliable": (gal["zWarning"].to_numpy() == 0).astype(np.int16),
        }
    )


def spectroscopy(
    photo: pd.DataFrame,
    truth: pd.DataFrame,
    rng: np.random.Generator,
    first_plate: int,
    in_spectro_footprint: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SpecObjAll and galSpecInfo for the primary detections that SDSS would have targeted.

    ``in_spectro_footprint`` (one flag per row of ``photo``) marks where plates were drilled;
    elsewhere nothing is targeted, as outside SDSS's spectroscopic footprint.
    """
    if in_spectro_footprint is None:
        in_spectro_footprint = np.ones(len(photo), dtype=bool)
    covered = np.asarray(in_spectro_footprint)[(photo["mode"] == 1).to_numpy()]
    prim = photo[photo["mode"] == 1]
    t = truth.iloc[prim["truth_row"].to_numpy()]
    tg = _select_targets(prim, covered, rng)
    observed = _observed(prim, tg.targeted, rng)
    obs_idx = np.nonzero(observed)[0]
    primtarget = _target_bits(tg, rng)
    # BOSS later re-observed some LRGs: a second survey in the same table.
    survey = np.where(tg.lrg & (rng.uniform(size=len(prim)) < 0.3), "boss", "sdss")
    # Repeat spectra: about 4 % of targets were observed twice.
    repeat = observed & (rng.uniform(size=len(prim)) < 0.04)
    rows = np.concatenate([obs_idx, np.nonzero(repeat)[0]])
    is_repeat = np.concatenate([np.zeros(len(obs_idx), bool), np.ones(repeat.sum(), bool)])
    cls, z, z_err, z_warning = _redshifts(
        t["z_true"].to_numpy()[rows], tg.is_gal[rows], tg.qso[rows], rng
    )
    ra_rows = prim["ra"].to_numpy()[rows]
    dec_rows = prim["dec"].to_numpy()[rows]
    plate, mjd, fiber = _plates(ra_rows, dec_rows, is_repeat, first_plate)
    target_type = np.where(is_repeat & (rng.uniform(size=len(rows)) < 0.3), "QA", "SCIENCE")
    best_obj = prim["objID"].to_numpy()[rows]
    spec = pd.DataFrame(
        {
            "specObjID": pack_specobjid(plate, fiber, mjd),
            "bestObjID": best_obj,
            "plate": plate.astype(np.int32),
            "mjd": mjd.astype(np.int32),
            "fiberID": fiber.astype(np.int32),
            "ra": ra_rows,
            "dec": dec_rows,
            "z": z,
            "zErr": z_err,
            "zWarning": z_warning,
            "class": cls.astype(str),
            "targetType": target_type,
            "survey": survey[rows],
            "sciencePrimary": _science_primary(best_obj, z_warning, z_err),
            "primTarget": primtarget[rows],
        }
    )
    ebv_sfd = ebv_from_extinction(prim)[rows][(spec["class"] == "GALAXY").to_numpy()]
    return spec, _gal_spec_info(spec, ebv_sfd)


def photoz(photo: pd.DataFrame, truth: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Photoz (Beck et al. 2016-like): for primary galaxies, scatter growing with magnitude."""
    prim = photo[(photo["mode"] == 1) & (photo["type"] == 3)]
    z_true = truth["z_true"].to_numpy()[prim["truth_row"].to_numpy()]
    r = prim["dered_r"].to_numpy()
    sigma = np.clip(0.018 + 0.012 * (r - 17.0), 0.015, 0.08)  # in dz / (1 + z)
    z = z_true + rng.normal(0, 1, len(prim)) * sigma * (1 + z_true)
    outlier = rng.uniform(size=len(prim)) < 0.02
    z[outlier] = rng.uniform(0.0, 0.9, outlier.sum())
    z = np.clip(z, 0.0, None)
    return pd.DataFrame(
        {
            "objID": prim["objID"].to_numpy(),
            "z": z,
            "zErr": sigma * (1 + z) * np.where(outlier, 3.0, 1.0),
            "photoErrorClass": np.where(outlier, 3, 1).astype(np.int16),
            "nnCount": rng.integers(80, 100, len(prim)).astype(np.int16),
        }
    )
