"""Self-supervised embeddings of the cut-outs (Hayat et al. 2021, Fig. 1): computing, writing,
reading.

Every object of the cut-out store with a usable image gets the L2-normalised output of the
pretrained network's encoder and projection head on its centre crop, dereddened: the pretraining
method says which (``Method.embedding_parts``: MoCo v2's query encoder and head, ``MoCo.embed``,
128-d in the paper; BYOL's online encoder and projector).

Embeddings file (one Parquet file, written atomically): columns objid (int64), ra, dec, z_spec
(float64, NaN when unlabeled), split (string) and ``embedding``, a fixed-size list of float32
(uncompressed, so :func:`load_embeddings` turns it into one (n, d) array without per-row objects).
Provenance (JSON) sits in the schema metadata under ``ssl_photoz``.

The FAISS index over these vectors is :mod:`ssl_photoz.similarity.index`; neighbour queries and
anomalies are :mod:`ssl_photoz.similarity.search`; Fig. 1 and the anomaly figure are
:mod:`ssl_photoz.similarity.figures`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.config import crop_size
from ssl_photoz.core.provenance import file_sha256

__all__ = [
    "CATALOG_COLUMNS",
    "Embeddings",
    "check_unit",
    "compute_embeddings",
    "load_embeddings",
    "write_embeddings",
]

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ("objid", "ra", "dec", "z_spec", "split")
EMBEDDING_COLUMN = "embedding"
METADATA_KEY = b"ssl_photoz"
# float32 rows normalised in float32 are within ~1e-6 of unit length; 1e-3 only flags real errors.
UNIT_NORM_TOL = 1e-3
ROW_GROUP = 1 << 17  # 64 MiB of 128-d float32 per row group


@dataclass(frozen=True)
class Embeddings:
    """An embeddings file in memory: ``table`` row i describes ``vectors`` row i."""

    path: Path
    table: pd.DataFrame  # objid, ra, dec, z_spec, split
    vectors: np.ndarray  # (n, d) float32, unit rows
    metadata: dict


def compute_embeddings(
    checkpoint: Path,
    store_path: Path,
    stats_path: Path | None,
    out: Path,
    device: str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
) -> int:
    """Embed every ok object of the store with the pretrained encoder and head (those its method
    names: MoCo's query encoder and head, BYOL's online encoder and projector); return the row
    count.

    Preprocessing is the pretraining view without its randomness: the 64 x 64 centre crop, no
    noise, no rotation, and dereddened (the views carried random extra reddening, so the encoder
    is meant to be blind to dust; removing the real dust puts every object at E(B-V) = 0).
    Pretraining never divides by the MAD statistics (they only set the views' noise level), so
    ``stats_path`` does not enter the embedding; when given it is checked and recorded.

    ``precision`` (auto | fp32 | bf16 | fp16, a machine setting) is resolved as for training; the
    backbone runs under its autocast, the head and the normalisation stay fp32 either way. bf16 in
    the backbone moved the demo model's embeddings by ~3e-4 (5 % of top-5 neighbours change);
    bf16 in the head too would move them by ~2.5e-3.
    """
    import torch

    from ssl_photoz.core.provenance import provenance
    from ssl_photoz.learn import data, inference
    from ssl_photoz.learn import precision as precision_mod
    from ssl_photoz.learn.checkpoints import load_checkpoint

    checkpoint, store_path, out = Path(checkpoint), Path(store_path), Path(out)
    state = load_checkpoint(checkpoint)
    encoder, head = pretrained_embedder(state, checkpoint)
    dev = torch.device(device)
    chosen = precision_mod.resolve(precision, dev, state["config"]["model"])
    log.info("embed: %s", chosen.describe())
    encoder.to(dev, memory_format=torch.channels_last)  # 4x faster convolutions on CPU
    head.eval().to(dev)
    mad = data.load_stats(stats_path).tolist() if stats_path is not None else None

    store = data.open_store(store_path)
    rows = np.flatnonzero(store.ok)
    skipped = len(store) - len(rows)
    log.info(
        "%s: embedding %d objects, skipping %d with ok == False", store_path, len(rows), skipped
    )
    dataset = data.CutoutDataset(store_path, rows, deredden=True)

    # The head outside autocast (inference runs it on the fp32 features): bf16's 3 significant
    # digits on the outputs are as large as the gaps between near neighbours.
    def embed(features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(head(features), dim=1)

    crop = crop_size(state["config"]["model"])
    vectors = inference.run_network(
        encoder, dataset, dev, chosen, crop_size=crop, batch_size=batch_size, head=embed
    ).numpy()
    table = _catalogue(store, rows)
    meta = provenance(
        state["config"],
        kind="embeddings",
        checkpoint=str(checkpoint),
        checkpoint_sha256=file_sha256(checkpoint),
        store=str(store_path),
        stats=str(stats_path) if stats_path is not None else None,
        mad=mad,
        n_objects=len(rows),
        n_skipped_not_ok=skipped,
        dim=int(vectors.shape[1]),
        preprocessing="centre crop 64 x 64, dereddened (SF11), no normalisation",
        backbone_precision=str(chosen.dtype).removeprefix("torch."),
    )
    write_embeddings(out, table, vectors, meta)
    return len(rows)


def _catalogue(store, rows: np.ndarray) -> pd.DataFrame:
    """The catalogue columns of the store's ``rows``."""
    return pd.DataFrame(
        {
            "objid": store.objid[rows].astype(np.int64),
            "ra": store.ra[rows].astype(np.float64),
            "dec": store.dec[rows].astype(np.float64),
            "z_spec": store.z_spec[rows].astype(np.float64),
            "split": np.asarray(store.split_codes, dtype=object)[store.split[rows]],
        }
    )


def pretrained_network(state: dict, path: Path):
    """(method, network) of a pretraining checkpoint (``pretraining.pretrain``'s model.pt), the
    network of its method (``pretrain.method``, MoCo v2 where the config predates the key) with
    its weights loaded."""
    from ssl_photoz.learn import ssl

    method = None
    if state.get("kind") == "pretrain" and "pretrain" in state.get("config", {}):
        method = ssl.method_of(state["config"]["pretrain"])
    if method is None or method.checkpoint_key not in state:
        raise ValueError(
            f"{path}: not a MoCo pretraining checkpoint, nor one of another self-supervised "
            f"method ({', '.join(sorted(ssl.METHODS))}) (kind {state.get('kind')!r}, "
            f"keys {sorted(state)})"
        )
    model_cfg, cfg = state["config"]["model"], state["config"]["pretrain"]
    network = method.build(model_cfg, cfg)
    network.load_state_dict(state[method.checkpoint_key])
    return method, network


def pretrained_embedder(state: dict, path: Path):
    """(encoder, head) of a pretraining checkpoint, in eval mode: its method's embedding parts."""
    method, network = pretrained_network(state, path)
    encoder, head = method.embedding_parts(network.eval())
    return encoder, head


def write_embeddings(path: Path, table: pd.DataFrame, vectors: np.ndarray, meta: dict) -> None:
    """Write catalogue columns + float32 embeddings (fixed-size lists) atomically."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(table):
        raise ValueError(f"{path}: {vectors.shape} embeddings for {len(table)} catalogue rows")
    columns = {
        "objid": pa.array(table["objid"].to_numpy(np.int64)),
        "ra": pa.array(table["ra"].to_numpy(np.float64)),
        "dec": pa.array(table["dec"].to_numpy(np.float64)),
        "z_spec": pa.array(table["z_spec"].to_numpy(np.float64)),
        "split": pa.array(table["split"].astype(str).tolist(), type=pa.string()),
        EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(
            pa.array(vectors.ravel()), vectors.shape[1]
        ),
    }
    schema_meta = {METADATA_KEY: json.dumps(meta, default=str).encode()}
    pa_table = pa.table(columns).replace_schema_metadata(schema_meta)
    # Random-looking floats do not compress; leaving them raw keeps loading at memory speed.
    compression = {name: "zstd" for name in CATALOG_COLUMNS} | {EMBEDDING_COLUMN: "none"}
    with atomic_path(path) as tmp:
        pq.write_table(
            pa_table,
            tmp,
            compression=compression,
            use_dictionary=["split"],
            row_group_size=ROW_GROUP,
        )


def load_embeddings(path: Path) -> Embeddings:
    """Read an embeddings file; checks the columns, the dimension and that rows are unit vectors."""
    path = Path(path)
    try:
        pa_table = pq.read_table(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no embeddings file here") from err
    missing = [c for c in (*CATALOG_COLUMNS, EMBEDDING_COLUMN) if c not in pa_table.column_names]
    if missing:
        raise ValueError(f"{path}: not an embeddings file, it lacks columns {missing}")
    column = pa_table[EMBEDDING_COLUMN]
    if not pa.types.is_fixed_size_list(column.type) or column.type.value_type != pa.float32():
        raise ValueError(f"{path}: '{EMBEDDING_COLUMN}' must be fixed-size float32 lists")
    dim = column.type.list_size
    vectors = np.empty((len(pa_table), dim), np.float32)
    start = 0
    for chunk in column.chunks:
        # flatten() honours the chunk's offset (.values would not) and copies nothing.
        block = chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        vectors[start : start + len(block)] = block
        start += len(block)
    check_unit(vectors, f"{path}")
    table = pa_table.drop_columns([EMBEDDING_COLUMN]).to_pandas()
    table["split"] = table["split"].astype(str)
    raw = (pa_table.schema.metadata or {}).get(METADATA_KEY)
    metadata = json.loads(raw) if raw else {}
    return Embeddings(path=path, table=table, vectors=vectors, metadata=metadata)


def check_unit(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """Raise (naming ``what``) unless vectors is (n, d) float32 of finite unit rows."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{what}: expected an (n, d) array of embeddings, got {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise ValueError(f"{what}: embeddings have {vectors.shape[1]} dimensions, expected {dim}")
    if vectors.dtype != np.float32:
        raise ValueError(f"{what}: embeddings must be float32, got {vectors.dtype}")
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~(np.abs(norms - 1.0) <= UNIT_NORM_TOL)  # NaN counts as bad
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what}: {int(bad.sum())} embeddings are not unit vectors "
            f"(row {row} has norm {norms[row]:.6g}); they must be L2-normalised"
        )
    return vectors
