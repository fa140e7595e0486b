"""The prediction files: one Parquet file per model with objid, z_spec, z_phot and, for a model
with a PDF, the PDF over the redshift bins as float16 (180 values: 360 bytes per object, compact
enough for 1e5 objects); the run's keys (model, fraction, seed, ...) in the schema metadata.

Written by the predict rule (the networks) and the baseline rule (the catalogue baselines), read
by evaluate (``scores.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ssl_photoz.core.atomic import atomic_path


def write_predictions(path: Path, objid, z_spec, z_phot, pdf: np.ndarray | None, meta: dict):
    """Write predictions atomically; ``pdf`` (n, n_bins) is stored as float16 lists."""
    columns = {
        "objid": pa.array(np.asarray(objid, dtype=np.int64)),
        "z_spec": pa.array(np.asarray(z_spec, dtype=np.float64)),
        "z_phot": pa.array(np.asarray(z_phot, dtype=np.float64)),
    }
    if pdf is not None:
        pdf = np.asarray(pdf, dtype=np.float16)
        flat = pa.array(pdf.ravel(), type=pa.float16())
        columns["pdf"] = pa.FixedSizeListArray.from_arrays(flat, pdf.shape[1])
    table = pa.table(columns).replace_schema_metadata({k: str(v) for k, v in meta.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_predictions(path: Path) -> tuple[pd.DataFrame, dict]:
    """objid, z_spec, z_phot of a prediction file, and its metadata."""
    table = pq.read_table(path, columns=["objid", "z_spec", "z_phot"])
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.to_pandas(), meta


def read_pdf(path: Path) -> np.ndarray | None:
    """The (n, n_bins) PDF of a prediction file, or None where the model gives none."""
    if "pdf" not in pq.read_schema(path).names:
        return None
    column = pq.read_table(path, columns=["pdf"])["pdf"].combine_chunks()
    width = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, width)
