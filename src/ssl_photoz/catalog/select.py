"""The `select` stage: from the two catalogue queries to the kept objects and the rejected rows.

Inputs are the DataFrames of src/ssl_photoz/surveys/sdss/query/queries/labeled.sql (one row per
spectrum) and
src/ssl_photoz/surveys/sdss/query/queries/unlabeled.sql (one row per object). Every input row ends
either in
`objects` (one row per kept object) or in `rejects` (with a reason); `select_catalog` checks that
independently and raises if a row went missing.

Rules, in the order they are applied (the first rule that drops a row gives its reason):

labeled (per spectrum row)
  1. invalid values: NaN, inf or an SDSS missing-value sentinel (-9999) in ra, dec, the
     magnitudes, the extinctions or z_spec; ra outside [0, 360] or dec outside [-90, 90].
  2. repeat spectra: one row per objID survives, chosen by sciencePrimary = 1 first, then the
     smallest z_spec_err (NaN counts as largest), then the smallest specObjID.
  3. galactic latitude |b| > b_min_deg, with b from astropy's Galactic frame (the catalogue's b
     is only compared, and the disagreements counted).
  4. dereddened Petrosian r = petroMag_r - extinction_r <= r_max.
  5. z_min < z_spec <= z_max.
unlabeled (per object row)
  1. invalid values, as above, with z_photo in place of z_spec.
  2. duplicate objIDs: the first row in input order is kept.
  3. latitude, 4. dereddened r, as above; 5. z_photo < photoz_max.
  6. leakage guard: any objID that the labeled query returned at all, whether or not it
     survived the labeled cuts, never enters the pretraining pool.

The kept labeled objects are split into train / val by a hash of (seed, objID), so an object's
split does not depend on row order or on which other objects are present. `fraction_rank` is a
second, independently keyed hash, uniform in [0, 1): label fraction f is
`(split == "train") & (fraction_rank < f)`, nested in f. Unlabeled objects get a fraction_rank
too (the same hash), which can subsample the pretraining pool the same nested way. A training
run of seed s takes its labels by ``ssl_photoz.core.ranks.label_rank`` instead: seed 0's rank
is fraction_rank itself, every other seed's a rehash of it with the seed, so each seed draws its
own labeled galaxies (still nested in f) and the seeds' spread includes which galaxies are
labeled, not only the optimisation.

`ebv` is the SFD E(B-V) behind the catalogue's extinction columns, recovered as SDSS made them
(``extinction.ebv_from_extinction``: the SFD98 coefficients); the cut-outs are dereddened
downstream with the SF11 coefficients times it. Kept rows whose five bands imply E(B-V)s more
than 1e-3 apart are counted in ``checks`` (0 on SDSS data).

`objects` is sorted by objid (SDSS field order); `rejects` holds the labeled
rows then the unlabeled rows, each in input row order.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import SkyCoord

from ssl_photoz.core.ranks import keyed_uniform
from ssl_photoz.surveys.sdss.conventions import BANDS
from ssl_photoz.surveys.sdss.extinction import ebv_band_spread, ebv_from_extinction

__all__ = [
    "Selection",
    "select_catalog",
    "write_selection",
    "format_counts",
    "galactic_lb",
    "split_uniform",
    "rank_uniform",
    "SPLIT_ORDER",
]

log = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "val", "unlabeled")
STAGE = "select"
# SDSS writes -9999 (sometimes -999) for "not measured"; nothing physical sits below -900.
SENTINEL_BELOW = -900.0
B_DISAGREE_DEG = 0.01
# SDSS's extinction_x are R_SFD98,x x E(B-V): the five bands agree to float32 rounding (1e-7).
EBV_BANDS_DISAGREE = 1e-3

MAG_COLUMNS = (
    [f"petroMag_{b}" for b in BANDS]
    + [f"extinction_{b}" for b in BANDS]
    + [f"modelMag_{b}" for b in BANDS]
)
PHOTO_COLUMNS = [
    "objID",
    "ra",
    "dec",
    "b",
    "run",
    "rerun",
    "camcol",
    "field",
    *MAG_COLUMNS,
    "petroR50_r",
    "z_photo",
]
LABELED_COLUMNS = [*PHOTO_COLUMNS, "specObjID", "z_spec", "z_spec_err", "sciencePrimary"]
UNLABELED_COLUMNS = PHOTO_COLUMNS

OUTPUT_COLUMNS = [
    "objid",
    "ra",
    "dec",
    "l",
    "b",
    "run",
    "rerun",
    "camcol",
    "field",
    *MAG_COLUMNS,
    "petroR50_r",
    "ebv",
    "z_spec",
    "z_photo",
    "split",
    "fraction_rank",
]
PASSTHROUGH_COLUMNS = ["ra", "dec", "run", "rerun", "camcol", "field", *MAG_COLUMNS, "petroR50_r"]
REJECT_COLUMNS = ["objid", "sample", "stage", "reason"]

# Keys of the two hash streams: different constants so split and fraction_rank are independent.
_SPLIT_STREAM = np.uint64(0x5E1EC7_5B1170)
_RANK_STREAM = np.uint64(0xF2AC7_10A2A4C)


@dataclass
class Selection:
    """The result of the select stage.

    objects: one row per kept object (columns OUTPUT_COLUMNS, sorted by objid: field order).
    rejects: one row per dropped input row (objid, sample, stage, reason).
    counts: {"steps": [{step, sample, rows_in, rows_out}, ...], "totals": {...},
             "checks": {...}}, JSON-ready.
    """

    objects: pd.DataFrame
    rejects: pd.DataFrame
    counts: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- hashing


def split_uniform(objid, seed: int) -> np.ndarray:
    """The number that decides train / val: val when it is < val_fraction."""
    return keyed_uniform(objid, seed, _SPLIT_STREAM)


def rank_uniform(objid, seed: int) -> np.ndarray:
    """fraction_rank: label fraction f keeps the train objects with rank < f (seed 0's labels;
    ssl_photoz.core.ranks.label_rank gives every run seed its own)."""
    return keyed_uniform(objid, seed, _RANK_STREAM)


# ----------------------------------------------------------------------------- geometry


def galactic_lb(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Galactic (l, b) in degrees from ICRS (ra, dec) in degrees, with astropy.

    Measured: 1.7 M points take about 0.6 s here, so no hand-written rotation is needed.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.size == 0:
        return np.empty(0), np.empty(0)
    gal = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs").galactic
    return gal.l.deg, gal.b.deg


# ----------------------------------------------------------------------------- bookkeeping


class _Sample:
    """One input table while rules drop its rows: who is alive and why the others died."""

    def __init__(self, name: str, frame: pd.DataFrame):
        self.name = name
        self.frame = frame
        self.n = len(frame)
        self.objid = _objid_array(frame, name)
        self.alive = np.ones(self.n, dtype=bool)
        self.reason = np.full(self.n, None, dtype=object)
        self.steps: list[dict] = []

    def col(self, name: str) -> np.ndarray:
        return self.frame[name].to_numpy()

    def fcol(self, name: str) -> np.ndarray:
        """A column as float64, with pandas' missing values as NaN."""
        return self.frame[name].to_numpy(dtype=np.float64, na_value=np.nan)

    def drop(self, step: str, mask: np.ndarray, reason) -> None:
        """Reject alive rows where mask is True; reason is a string or a per-row object array."""
        rows_in = int(self.alive.sum())
        hit = mask & self.alive
        if np.ndim(reason) == 0:
            self.reason[hit] = reason
        else:
            self.reason[hit] = reason[hit]
        self.alive &= ~hit
        rows_out = int(self.alive.sum())
        self.steps.append(
            {"step": step, "sample": self.name, "rows_in": rows_in, "rows_out": rows_out}
        )
        log.info("%-10s %-24s %10d -> %10d", self.name, step, rows_in, rows_out)

    def rejects(self) -> pd.DataFrame:
        dead = ~self.alive
        return pd.DataFrame(
            {
                "objid": self.objid[dead],
                "sample": self.name,
                "stage": STAGE,
                "reason": self.reason[dead],
            }
        )


def _objid_array(frame: pd.DataFrame, table: str) -> np.ndarray:
    ids = frame["objID"]
    if ids.isna().any():
        raise ValueError(f"{table} table: {int(ids.isna().sum())} rows have no objID")
    try:
        return ids.to_numpy().astype(np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{table} table: objID is not an integer column ({err})") from err


def _check_columns(frame: pd.DataFrame, required: list[str], table: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{table} table is missing columns: {', '.join(missing)}")


# ----------------------------------------------------------------------------- rules


def _drop_invalid(sample: _Sample, columns: list[str]) -> None:
    """Rows with NaN / inf / sentinel values in columns the cuts or the outputs rely on."""
    bad_by_col = {}
    for name in columns:
        values = sample.fcol(name)
        bad = ~np.isfinite(values) | (values < SENTINEL_BELOW)
        if name == "ra":
            bad |= (values < 0.0) | (values > 360.0)
        elif name == "dec":
            bad |= (values < -90.0) | (values > 90.0)
        if bad.any():
            bad_by_col[name] = bad
    any_bad = np.zeros(sample.n, dtype=bool)
    for bad in bad_by_col.values():
        any_bad |= bad
    reason = np.full(sample.n, None, dtype=object)
    rows = np.flatnonzero(any_bad)
    if rows.size:
        # Only the (few) bad rows get a string naming their bad columns.
        names = [[] for _ in range(rows.size)]
        for name, bad in bad_by_col.items():
            for k in np.flatnonzero(bad[rows]):
                names[k].append(name)
        reason[rows] = [
            "invalid value (NaN, inf, out of range or -9999) in " + ", ".join(n) for n in names
        ]
    sample.drop("invalid values", any_bad, reason)


def _drop_repeat_spectra(sample: _Sample) -> None:
    """Keep one spectrum per objID: sciencePrimary = 1, then smallest zErr, then specObjID."""
    idx = np.flatnonzero(sample.alive)
    objid = sample.objid[idx]
    primary = np.nan_to_num(sample.fcol("sciencePrimary")[idx], nan=0.0)
    zerr = np.nan_to_num(sample.fcol("z_spec_err")[idx], nan=np.inf)
    spec = sample.col("specObjID")[idx].astype(np.int64)
    # lexsort sorts by the last key first: objID, then primary (False < True), zErr, specObjID.
    order = np.lexsort((spec, zerr, primary != 1, objid))
    sorted_ids = objid[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    kept_spec = spec[order][group_start]
    repeat = np.zeros(sample.n, dtype=bool)
    reason = np.full(sample.n, None, dtype=object)
    repeat_rows = idx[order[~first]]
    repeat[repeat_rows] = True
    reason[repeat_rows] = [f"repeat spectrum (kept specObjID {s})" for s in kept_spec[~first]]
    sample.drop("repeat spectra", repeat, reason)


def _drop_duplicate_objids(sample: _Sample) -> None:
    idx = np.flatnonzero(sample.alive)
    dup = np.zeros(sample.n, dtype=bool)
    dup[idx] = pd.Series(sample.objid[idx]).duplicated(keep="first").to_numpy()
    sample.drop("duplicate objID", dup, "duplicate objID in unlabeled query (first row kept)")


def _drop_latitude(sample: _Sample, b_min: float, checks: dict) -> tuple[np.ndarray, np.ndarray]:
    """Cut on astropy's |b|; also count rows whose catalogue b disagrees by > 0.01 deg."""
    idx = np.flatnonzero(sample.alive)
    l_all = np.full(sample.n, np.nan)
    b_all = np.full(sample.n, np.nan)
    l_all[idx], b_all[idx] = galactic_lb(sample.fcol("ra")[idx], sample.fcol("dec")[idx])
    b_cat = sample.fcol("b")[idx]
    disagree = int((~(np.abs(b_cat - b_all[idx]) <= B_DISAGREE_DEG)).sum())
    checks.setdefault("b_catalogue_disagree_gt_0.01deg", {})[sample.name] = disagree
    if disagree:
        log.warning(
            "%s: %d rows have catalogue b off astropy's by > 0.01 deg", sample.name, disagree
        )
    low = np.zeros(sample.n, dtype=bool)
    low[idx] = ~(np.abs(b_all[idx]) > b_min)
    sample.drop("galactic latitude", low, f"|b| <= {b_min:g} deg (galactic latitude cut)")
    return l_all, b_all


def _drop_faint(sample: _Sample, r_max: float) -> None:
    with np.errstate(invalid="ignore"):  # inf - inf on already-rejected rows
        r0 = sample.fcol("petroMag_r") - sample.fcol("extinction_r")
    sample.drop("dereddened r", ~(r0 <= r_max), f"dereddened petroMag_r > {r_max:g}")


def _drop_redshift(sample: _Sample, z_min: float, z_max: float) -> None:
    z = sample.fcol("z_spec")
    outside = ~((z > z_min) & (z <= z_max))
    sample.drop("z_spec range", outside, f"z_spec outside ({z_min:g}, {z_max:g}]")


def _drop_photoz(sample: _Sample, photoz_max: float) -> None:
    zp = sample.fcol("z_photo")
    sample.drop("photo-z", ~(zp < photoz_max), f"z_photo >= {photoz_max:g}")


def _drop_labeled(sample: _Sample, labeled_ids: np.ndarray) -> None:
    leak = np.isin(sample.objid, labeled_ids)
    sample.drop("labeled objects", leak, "labeled object (in labeled query)")


# ----------------------------------------------------------------------------- assembly


def _kept_columns(
    sample: _Sample, lon: np.ndarray, lat: np.ndarray, z_spec: np.ndarray, split_code: np.ndarray
) -> dict[str, np.ndarray]:
    """The output columns of one sample's kept rows, in input order (z_spec, split given)."""
    idx = np.flatnonzero(sample.alive)
    cols = {"objid": sample.objid[idx], "l": lon[idx], "b": lat[idx]}
    for name in PASSTHROUGH_COLUMNS:
        cols[name] = sample.col(name)[idx]
    cols["z_photo"] = sample.fcol("z_photo")[idx]
    cols["z_spec"] = z_spec
    cols["split_code"] = split_code
    return cols


def _assemble_objects(parts: list[dict[str, np.ndarray]], seed: int) -> pd.DataFrame:
    """Concatenate the samples' kept rows, sorted by objid.

    An objID orders by (skyVersion, rerun, run, camcol, field, obj), so this is SDSS field order:
    consecutive rows share frames, and the cut-out stage's shards (runs of consecutive rows,
    the row order of the Zarr store) each fetch a frame once.
    """
    objid = np.concatenate([p["objid"] for p in parts])
    order = np.argsort(objid, kind="stable")
    out = {name: np.concatenate([p[name] for p in parts])[order] for name in parts[0]}
    out["ebv"] = ebv_from_extinction(out)
    out["split"] = np.array(SPLIT_ORDER, dtype=object)[out["split_code"]]
    out["fraction_rank"] = rank_uniform(out["objid"], seed)
    return pd.DataFrame({name: out[name] for name in OUTPUT_COLUMNS})


def _check_extinction(objects: pd.DataFrame, checks: dict) -> None:
    """Count kept rows whose extinction columns are not one E(B-V) times the SFD98 vector."""
    off = ~(ebv_band_spread(objects) <= EBV_BANDS_DISAGREE)
    unl = (objects["split"] == "unlabeled").to_numpy()
    per_sample = {"labeled": int((off & ~unl).sum()), "unlabeled": int((off & unl).sum())}
    checks[f"extinction_bands_disagree_gt_{EBV_BANDS_DISAGREE:g}"] = per_sample
    if off.any():
        log.warning(
            "%d kept rows have extinction_x columns that are not E(B-V) x the SFD98 coefficients"
            " (bands disagree by > %g); their ebv is the mean over bands",
            int(off.sum()),
            EBV_BANDS_DISAGREE,
        )


def _reconcile(n_in: dict, objects: pd.DataFrame, rejects: pd.DataFrame) -> dict:
    """rows in == objects + rejects, overall and per sample, counted from the outputs."""
    kept = {
        "labeled": int(objects["split"].isin(["train", "val"]).sum()),
        "unlabeled": int((objects["split"] == "unlabeled").sum()),
    }
    dropped = rejects["sample"].value_counts().to_dict()
    problems = []
    for sample, rows_in in n_in.items():
        accounted = kept[sample] + int(dropped.get(sample, 0))
        if accounted != rows_in:
            problems.append(
                f"{sample}: {rows_in} rows in, {kept[sample]} kept"
                f" + {int(dropped.get(sample, 0))} rejected = {accounted}"
            )
    total_in = sum(n_in.values())
    if total_in != len(objects) + len(rejects):
        problems.append(
            f"total: {total_in} rows in, {len(objects)} objects + {len(rejects)} rejects"
        )
    if objects["objid"].duplicated().any():
        problems.append(f"{int(objects['objid'].duplicated().sum())} objids kept twice")
    if problems:
        raise RuntimeError("select: rows do not reconcile: " + "; ".join(problems))
    return {
        "rows_in": total_in,
        "labeled_rows_in": n_in["labeled"],
        "unlabeled_rows_in": n_in["unlabeled"],
        "objects": len(objects),
        "rejects": len(rejects),
        "rejects_labeled": int(dropped.get("labeled", 0)),
        "rejects_unlabeled": int(dropped.get("unlabeled", 0)),
        **{s: int((objects["split"] == s).sum()) for s in SPLIT_ORDER},
    }


def select_catalog(labeled: pd.DataFrame, unlabeled: pd.DataFrame, settings: dict) -> Selection:
    """Apply the select rules (module docstring) and return objects, rejects and counts."""
    _check_columns(labeled, LABELED_COLUMNS, "labeled")
    _check_columns(unlabeled, UNLABELED_COLUMNS, "unlabeled")
    seed = int(settings["seed"])
    checks: dict = {}

    lab = _Sample("labeled", labeled)
    _drop_invalid(lab, ["ra", "dec", *MAG_COLUMNS, "z_spec"])
    _drop_repeat_spectra(lab)
    lab_l, lab_b = _drop_latitude(lab, settings["b_min_deg"], checks)
    _drop_faint(lab, settings["r_max"])
    _drop_redshift(lab, settings["z_min"], settings["z_max"])

    unl = _Sample("unlabeled", unlabeled)
    _drop_invalid(unl, ["ra", "dec", *MAG_COLUMNS, "z_photo"])
    _drop_duplicate_objids(unl)
    unl_l, unl_b = _drop_latitude(unl, settings["b_min_deg"], checks)
    _drop_faint(unl, settings["r_max"])
    _drop_photoz(unl, settings["photoz_max"])
    _drop_labeled(unl, np.unique(lab.objid))

    lab_idx = np.flatnonzero(lab.alive)
    is_val = split_uniform(lab.objid[lab_idx], seed) < settings["val_fraction"]
    lab_code = np.where(is_val, SPLIT_ORDER.index("val"), SPLIT_ORDER.index("train"))
    n_unl = int(unl.alive.sum())
    parts = [
        _kept_columns(lab, lab_l, lab_b, lab.fcol("z_spec")[lab_idx], lab_code.astype(np.int8)),
        _kept_columns(
            unl,
            unl_l,
            unl_b,
            np.full(n_unl, np.nan),
            np.full(n_unl, SPLIT_ORDER.index("unlabeled"), dtype=np.int8),
        ),
    ]
    objects = _assemble_objects(parts, seed)
    _check_extinction(objects, checks)
    rejects = pd.concat([lab.rejects(), unl.rejects()], ignore_index=True)
    rejects["objid"] = rejects["objid"].astype(np.int64)
    rejects = rejects[REJECT_COLUMNS]

    totals = _reconcile({"labeled": lab.n, "unlabeled": unl.n}, objects, rejects)
    totals["labeled_objects_in"] = int(np.unique(lab.objid).size)
    counts = {"steps": lab.steps + unl.steps, "totals": totals, "checks": checks}
    log.info("select: %s", json.dumps(totals))
    return Selection(objects=objects, rejects=rejects, counts=counts)


# ----------------------------------------------------------------------------- output


def format_counts(selection: Selection) -> str:
    """A reconciliation table: each step's rows in and out, then the totals."""
    lines = [f"{'sample':<10} {'step':<20} {'rows in':>12} {'rows out':>12} {'dropped':>10}"]
    for s in selection.counts["steps"]:
        dropped = s["rows_in"] - s["rows_out"]
        lines.append(
            f"{s['sample']:<10} {s['step']:<20} {s['rows_in']:>12,} {s['rows_out']:>12,}"
            f" {dropped:>10,}"
        )
    t = selection.counts["totals"]
    lines += [
        "",
        f"labeled:   {t['labeled_rows_in']:,} rows ({t['labeled_objects_in']:,} objects)"
        f" -> train {t['train']:,} + val {t['val']:,}; {t['rejects_labeled']:,} rows rejected",
        f"unlabeled: {t['unlabeled_rows_in']:,} rows -> {t['unlabeled']:,} kept;"
        f" {t['rejects_unlabeled']:,} rows rejected",
        f"reconciliation: {t['rows_in']:,} rows in = {t['objects']:,} objects"
        f" + {t['rejects']:,} rejects  OK",
    ]
    for name, per_sample in selection.counts.get("checks", {}).items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in per_sample.items()))
    return "\n".join(lines)


def write_selection(selection: Selection, out_dir: Path) -> dict[str, Path]:
    """Write objects.parquet, rejects.parquet and counts.json into out_dir.

    All three are written to temporary files in out_dir first and only then renamed into
    place, so a failure leaves the previous outputs (or nothing) and no partial file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers = {
        "objects.parquet": lambda p: selection.objects.to_parquet(p, index=False),
        "rejects.parquet": lambda p: selection.rejects.to_parquet(p, index=False),
        "counts.json": lambda p: Path(p).write_text(json.dumps(selection.counts, indent=2)),
    }
    temps: dict[str, str] = {}
    try:
        for name, write in writers.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            temps[name] = tmp
            write(tmp)
        for name, tmp in temps.items():
            os.replace(tmp, out_dir / name)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return {name: out_dir / name for name in writers}
