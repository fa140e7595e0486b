"""Build the simulated survey (rule ``sky``) and open it again for the frame source.

Outputs, in one folder (``resources/sky`` by default):
- ``sdss_mock.duckdb``: tables PhotoObjAll, SpecObjAll, Photoz, galSpecInfo named and typed as in
  SDSS DR12, plus an empty ``MyDB`` schema so that CasJobs' ``SELECT ... INTO MyDB.t`` works;
- ``truth.parquet``: true redshift, type, E(B-V), intrinsic magnitudes and shapes of every
  catalogued object, for evaluating the simulation and for rendering; no pipeline stage reads it
  (the catalogue's ``extinction_x`` are SDSS's SFD98 coefficients times the dust *map*'s E(B-V),
  ``sky.dust.map_ebv``, not this true one);
- ``sky.json``: the settings the survey was built with and its provenance.

Each run (a stripe 6 camcols high) is drawn from its own random stream and written before the next
is drawn, so memory stays flat however large the region, and a survey is a pure function of its
settings. Objects fainter than ``catalog_r_limit`` are not stored; the frame renderer draws them
per field from their own streams (``MockSky.sources_for_frame``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core.progress import progress
from ssl_photoz.core.provenance import provenance
from ssl_photoz.surveys.sdss.sky import catalog, population
from ssl_photoz.surveys.sdss.sky.footprint import (
    CAMCOLS,
    FRAME_HEIGHT_DEG,
    FRAME_WIDTH_DEG,
    FieldId,
    Footprint,
    footprint_from_config,
)

log = logging.getLogger(__name__)

DB_NAME = "sdss_mock.duckdb"
TRUTH_NAME = "truth.parquet"
META_NAME = "sky.json"
TABLES = ("PhotoObjAll", "SpecObjAll", "Photoz", "galSpecInfo")
FRAME_SOURCE_CACHE = 24  # fields whose sources stay in memory (a cut-out job walks fields in order)


@dataclass(frozen=True)
class SkySettings:
    seed: int
    footprint: Footprint
    catalog_r_limit: float
    frame_r_limit: float
    model: population.PopulationModel
    spectro_fraction: float = 0.33  # the schema's default, derived there

    @classmethod
    def from_config(cls, sky_cfg: dict) -> SkySettings:
        from ssl_photoz.core.config import with_defaults

        sky_cfg = with_defaults("sky", sky_cfg)  # the schema's defaults, wherever it came from
        footprint = footprint_from_config(sky_cfg)
        model = population.model_from_dict(sky_cfg.get("model", {}))
        return cls(
            seed=sky_cfg["seed"],
            footprint=footprint,
            catalog_r_limit=sky_cfg["catalog_r_limit"],
            frame_r_limit=sky_cfg["frame_r_limit"],
            model=model,
            spectro_fraction=sky_cfg["spectro_fraction"],
        )

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "footprint": asdict(self.footprint),
            "catalog_r_limit": self.catalog_r_limit,
            "frame_r_limit": self.frame_r_limit,
            "spectro_fraction": self.spectro_fraction,
            "model": asdict(self.model),
        }

    @classmethod
    def from_json(cls, data: dict) -> SkySettings:
        return cls(
            seed=data["seed"],
            footprint=Footprint(**data["footprint"]),
            catalog_r_limit=data["catalog_r_limit"],
            frame_r_limit=data["frame_r_limit"],
            model=population.model_from_dict(data["model"]),
            spectro_fraction=data["spectro_fraction"],  # to_json writes it
        )


def _run_box(footprint: Footprint, k: int) -> tuple[tuple[float, float], tuple[float, float]]:
    lo = footprint.dec_min + k * footprint.run_height_deg
    return (footprint.ra_min, footprint.ra_max), (lo, lo + footprint.run_height_deg)


def draw_truth(
    settings: SkySettings, rng: np.random.Generator, ra_range, dec_range, r_limit, clustered=True
):
    """Galaxies and stars of one sky box, brighter (after dust) than ``r_limit`` in r."""
    gal = population.draw_galaxies(
        rng, ra_range, dec_range, r_limit, settings.seed, settings.model, clustered
    )
    stars = population.draw_stars(rng, ra_range, dec_range, r_limit, settings.seed, settings.model)
    return pd.concat([gal, stars], ignore_index=True)


def build_run(settings: SkySettings, k: int) -> dict[str, pd.DataFrame]:
    """Every table's rows for the k-th run of the footprint."""
    fp = settings.footprint
    run = fp.first_run + k
    rng = np.random.default_rng([settings.seed, 101, run])
    ra_range, dec_range = _run_box(fp, k)
    truth = draw_truth(settings, rng, ra_range, dec_range, settings.catalog_r_limit)
    photo = catalog.photo_obj_all(truth, fp, rng, settings.model)
    # The spectroscopic survey covers the eastern part of the imaging footprint: as SDSS's
    # spectroscopy covers 9,380 of its 14,555 deg^2 of imaging, made smaller by the real sky's
    # lower share of labeled galaxies there (the schema's spectro_fraction), so the unlabeled
    # pool is 2.4 times the labeled sample as in the paper.
    span = fp.ra_max - fp.ra_min
    covered = photo["ra"].to_numpy() >= fp.ra_max - settings.spectro_fraction * span
    spec, galspec = catalog.spectroscopy(
        photo, truth, rng, first_plate=300 + 400 * k, in_spectro_footprint=covered
    )
    pz = catalog.photoz(photo, truth, rng)
    primary = photo[photo["mode"] == 1]
    truth["objID"] = np.int64(0)
    truth.loc[primary["truth_row"].to_numpy(), "objID"] = primary["objID"].to_numpy()
    truth = truth[truth["objID"] != 0].reset_index(drop=True)
    return {
        "PhotoObjAll": photo.drop(columns="truth_row"),
        "SpecObjAll": spec,
        "Photoz": pz,
        "galSpecInfo": galspec,
        "truth": truth,
    }


def build_survey(sky_cfg: dict, out_dir: Path, config_for_provenance: dict | None = None) -> dict:
    """Build the simulated survey into ``out_dir``; returns row counts per table."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = SkySettings.from_config(sky_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_db = out_dir / f".{DB_NAME}.partial"
    tmp_truth = out_dir / f".{TRUTH_NAME}.partial"
    for p in (tmp_db, tmp_truth):
        p.unlink(missing_ok=True)
    start = time.perf_counter()
    counts = dict.fromkeys([*TABLES, "truth"], 0)
    con = duckdb.connect(str(tmp_db))
    truth_writer = None
    try:
        con.execute("CREATE SCHEMA IF NOT EXISTS MyDB")
        for k in progress(range(settings.footprint.n_runs), desc="sky: runs", unit="run"):
            tables = build_run(settings, k)
            for name in TABLES:
                frame = tables[name]
                con.register("batch", frame)
                if counts[name] == 0 and not _table_exists(con, name):
                    con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM batch')
                else:
                    con.execute(f'INSERT INTO "{name}" SELECT * FROM batch')
                con.unregister("batch")
                counts[name] += len(frame)
            arrow = pa.Table.from_pandas(tables["truth"], preserve_index=False)
            if truth_writer is None:
                truth_writer = pq.ParquetWriter(tmp_truth, arrow.schema)
            truth_writer.write_table(arrow)
            counts["truth"] += len(tables["truth"])
            log.info(
                "run %d: %s",
                settings.footprint.first_run + k,
                {n: len(t) for n, t in tables.items()},
            )
        con.execute('CREATE UNIQUE INDEX photo_objid ON "PhotoObjAll"(objID)')
    finally:
        con.close()
        if truth_writer is not None:
            truth_writer.close()
    meta = {
        "settings": settings.to_json(),
        "counts": counts,
        "area_deg2": settings.footprint.area_deg2,
        "n_fields": len(settings.footprint.fields),
        "build_seconds": round(time.perf_counter() - start, 2),
        "provenance": provenance(
            config_for_provenance or {"sky": sky_cfg}, data_release="mock-DR12"
        ),
    }
    # Publish all three together: a reader never sees a database without its truth and metadata.
    os.replace(tmp_truth, out_dir / TRUTH_NAME)
    os.replace(tmp_db, out_dir / DB_NAME)
    (out_dir / META_NAME).write_text(json.dumps(meta, indent=2, default=str))
    return meta


def _table_exists(con, name: str) -> bool:
    rows = con.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'",
        [name],
    ).fetchall()
    return bool(rows)


class MockSky:
    """A built simulated survey, opened for reading: settings, truth and per-frame sources."""

    def __init__(self, sky_dir: Path):
        self.dir = Path(sky_dir)
        meta_path = self.dir / META_NAME
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{meta_path}: no simulated survey here; build it first with `ssl-photoz sky`"
            )
        self.meta = json.loads(meta_path.read_text())
        self.settings = SkySettings.from_json(self.meta["settings"])
        self.footprint = self.settings.footprint
        self._truth: pd.DataFrame | None = None
        self._frame_sources: dict[FieldId, pd.DataFrame] = {}
        self._faint: dict[FieldId, pd.DataFrame] = {}
        self._models: dict[tuple[FieldId, str], object] = {}  # (field, band) -> FrameModel

    @property
    def db_path(self) -> Path:
        return self.dir / DB_NAME

    @property
    def truth(self) -> pd.DataFrame:
        if self._truth is None:
            self._truth = pd.read_parquet(self.dir / TRUTH_NAME)
        return self._truth

    def faint_sources(self, fid: FieldId) -> pd.DataFrame:
        """Objects below the catalogue limit whose primary area is this field, drawn on demand
        (and kept for the neighbouring frames, which need them too)."""
        if fid not in self._faint:
            if len(self._faint) >= 4 * FRAME_SOURCE_CACHE:
                self._faint.pop(next(iter(self._faint)))
            self._faint[fid] = self._draw_faint_sources(fid)
        return self._faint[fid]

    def _draw_faint_sources(self, fid: FieldId) -> pd.DataFrame:
        fp = self.footprint
        ra_c, dec_c = fp.field_centre(fid.run, fid.camcol, fid.field)
        half_ra = float(fp.field_ra_step(fid.run, fid.camcol)) / 2
        half_dec = fp.camcol_spacing_deg / 2
        rng = np.random.default_rng([self.settings.seed, 202, fid.run, fid.camcol, fid.field])
        faint = draw_truth(
            self.settings,
            rng,
            (float(ra_c) - half_ra, float(ra_c) + half_ra),
            (float(dec_c) - half_dec, float(dec_c) + half_dec),
            self.settings.frame_r_limit,
            # Uniform: the faint neighbours of a frame are drawn per field, where the clustered
            # structures (``clustering``) would cost a centre search per field.
            clustered=False,
        )
        faint = faint[faint["mag_r"] >= self.settings.catalog_r_limit].reset_index(drop=True)
        faint["objID"] = np.int64(-1)  # not in the catalogue
        return faint

    def sources_for_frame(self, fid: FieldId) -> pd.DataFrame:
        """Every object that may put light on a frame: catalogued ones and faint ones."""
        fp = self.footprint
        ra_c, dec_c = fp.field_centre(fid.run, fid.camcol, fid.field)
        margin = 60.0 / 3600.0  # extended wings of bright neighbours
        half_dec = FRAME_WIDTH_DEG / 2 + margin
        half_ra = (FRAME_HEIGHT_DEG / 2 + margin) / np.cos(np.radians(float(dec_c)))
        t = self.truth
        near = t[
            (np.abs(t["dec"] - float(dec_c)) < half_dec) & (np.abs(t["ra"] - float(ra_c)) < half_ra)
        ]
        neighbours = [
            FieldId(fid.run + dr, c, f)
            for dr in (-1, 0, 1)
            for c in range(1, CAMCOLS + 1)
            for f in (fid.field - 1, fid.field, fid.field + 1)
            if fid.run + dr in fp.runs
            and abs(
                (fid.run + dr - fp.first_run) * CAMCOLS
                + c
                - (fid.run - fp.first_run) * CAMCOLS
                - fid.camcol
            )
            <= 1
        ]
        faint = [self.faint_sources(n) for n in neighbours if self._field_exists(n)]
        return pd.concat([near, *faint], ignore_index=True)

    def render(self, fid: FieldId, band: str, window=None, tables: bool = True):
        """The frame (or a window of it) as the Science Archive Server would serve it
        (``tables=False``: the image HDU only)."""
        from ssl_photoz.surveys.sdss.sky.render import render_frame

        return render_frame(
            None,
            self.footprint,
            fid,
            band,
            self.settings.seed,
            window,
            model=self._model(fid, band),
            tables=tables,
        )

    def render_window_fits(self, fid: FieldId, band: str, window) -> bytes:
        """The FITS file of ``render(fid, band, window, tables=False)``, byte for byte, made
        without astropy's header machinery (``render.render_window_fits``)."""
        from ssl_photoz.surveys.sdss.sky.render import render_window_fits

        model = self._model(fid, band)
        return render_window_fits(model, self.footprint, fid, band, self.settings.seed, window)

    def _model(self, fid: FieldId, band: str):
        """The FrameModel of (field, band), kept for the next windows of the frame."""
        from ssl_photoz.surveys.sdss.sky.conditions import field_conditions
        from ssl_photoz.surveys.sdss.sky.render import frame_model_for

        key = (fid, band)
        if key not in self._models:
            if fid not in self._frame_sources:
                if len(self._frame_sources) >= FRAME_SOURCE_CACHE:  # drop the oldest field
                    self._frame_sources.pop(next(iter(self._frame_sources)))
                self._frame_sources[fid] = self.sources_for_frame(fid)
            if len(self._models) >= 40:  # 8 fields x 5 bands: objects come in field order
                self._models.pop(next(iter(self._models)))
            cond = field_conditions(self.footprint.seed, fid.run, fid.camcol, fid.field, band)
            self._models[key] = frame_model_for(
                self._frame_sources[fid], self.footprint, fid, band, cond
            )
        return self._models[key]

    def _field_exists(self, fid: FieldId) -> bool:
        fp = self.footprint
        return fp.first_field <= fid.field < fp.first_field + fp.n_fields(fid.run, fid.camcol)


__all__ = ["MockSky", "SkySettings", "build_survey"]
