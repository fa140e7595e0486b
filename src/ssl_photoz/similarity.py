"""Similarity search in the MoCo embedding space (Hayat et al. 2021, Fig. 1) and anomaly ranking.

Every object of the cut-out store with a usable image gets the 128-d L2-normalised output of the
pretrained query encoder and projection head (``MoCo.embed``) on its centre crop, dereddened.
A FAISS inner-product index over unit vectors ranks by cosine, and the distance reported is the
Euclidean one between unit vectors, sqrt(2 - 2 cos), in [0, 2]. Up to ``EXACT_MAX`` vectors the
index is exact (flat); above, exact search costs 55-250 ms per query at the paper's 1.7 M objects,
so :func:`write_index` builds an IVF-flat index instead (inverted lists searched ``nprobe`` at a
time) and records its measured recall@5 against exact search.

Embeddings file (one Parquet file, written atomically): columns objid (int64), ra, dec, z_spec
(float64, NaN when unlabeled), split (string) and ``embedding``, a fixed-size list of float32
(uncompressed, so :func:`load_embeddings` turns it into one (n, d) array without per-row objects).
Provenance (JSON) sits in the schema metadata under ``ssl_photoz``. The FAISS index, when saved,
sits next to it with the suffix ``.faiss``, and a JSON sidecar ``.faiss.json`` beside that describes
it: kind (flat or ivf), size, nlist, nprobe and, for IVF, the recall measured at build time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_json

__all__ = [
    "POOLS",
    "Embeddings",
    "anomalies",
    "build_index",
    "build_index_by_size",
    "build_ivf_index",
    "compute_embeddings",
    "find_row",
    "index_info_path",
    "index_path",
    "load_embeddings",
    "load_index",
    "load_index_info",
    "measure_recall",
    "neighbours",
    "open_index",
    "plot_anomalies",
    "plot_similarity_search",
    "query_neighbours",
    "save_index",
    "search",
    "search_numpy",
    "write_embeddings",
    "write_index",
]

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ("objid", "ra", "dec", "z_spec", "split")
EMBEDDING_COLUMN = "embedding"
METADATA_KEY = b"ssl_photoz"
# Neighbour pools by split; None is every object. The paper's Fig. 1 draws them from training.
POOLS: dict[str, tuple[str, ...] | None] = {
    "train": ("train",),
    "train+unlabeled": ("train", "unlabeled"),
    "all": None,
}
MATCH_RADIUS_ARCSEC = 3.0
# Index choice of write_index: exact flat search up to EXACT_MAX vectors, IVF-flat above.
EXACT_MAX = 200_000
IVF_NPROBE = 32  # inverted lists searched per query, before any raise for recall
IVF_TRAIN_PER_LIST = 256  # k-means training sample: at most this many vectors per list
IVF_MIN_PER_LIST = 39  # fewer training vectors per list and FAISS warns (poor centroids)
RECALL_K = 5
RECALL_QUERIES = 500
RECALL_MIN = 0.95  # nprobe doubles (up to nlist) until the measured recall@k reaches this
INDEX_SEED = 0
# float32 rows normalised in float32 are within ~1e-6 of unit length; 1e-3 only flags real errors.
UNIT_NORM_TOL = 1e-3
ROW_GROUP = 1 << 17  # 64 MiB of 128-d float32 per row group
DPI = 120
PANEL_IN = 1.4  # inches per image panel (square) ...
TITLE_IN = 0.35  # ... plus this much above it for its title
GAP_IN = 0.06
PAD_IN = 0.05


@dataclass(frozen=True)
class Embeddings:
    """An embeddings file in memory: ``table`` row i describes ``vectors`` row i."""

    path: Path
    table: pd.DataFrame  # objid, ra, dec, z_spec, split
    vectors: np.ndarray  # (n, d) float32, unit rows
    metadata: dict


# -- embeddings ------------------------------------------------------------------------------------
def compute_embeddings(
    checkpoint: Path,
    store_path: Path,
    stats_path: Path | None,
    out: Path,
    device: str = "cpu",
    batch_size: int = 256,
    precision: str = "fp32",
) -> int:
    """Embed every ok object of the store with the pretrained query encoder; return the row count.

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

    from . import augment, data
    from . import precision as precision_mod
    from .provenance import provenance
    from .train import _to_device, load_checkpoint

    checkpoint, store_path, out = Path(checkpoint), Path(store_path), Path(out)
    state = load_checkpoint(checkpoint)
    model = _moco_from_checkpoint(state, checkpoint)
    dev = torch.device(device)
    chosen = precision_mod.resolve(precision, dev, state["config"]["model"])
    log.info("embed: %s", chosen.describe())
    model.eval().to(dev, memory_format=torch.channels_last)  # 4x faster convolutions on CPU
    mad = data.load_stats(stats_path).tolist() if stats_path is not None else None

    store = data.open_store(store_path)
    rows = np.flatnonzero(store.ok)
    skipped = len(store) - len(rows)
    log.info(
        "%s: embedding %d objects, skipping %d with ok == False", store_path, len(rows), skipped
    )
    dataset = data.CutoutDataset(store_path, rows, deredden=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    crop = augment.EvalTransform()
    parts = []
    with torch.no_grad():
        for batch in loader:
            with chosen.autocast():
                features = model.encoder_q(crop(_to_device(batch["image"], dev)))
            # MoCo.embed with the head outside autocast: bf16's 3 significant digits on the 128
            # outputs are as large as the gaps between near neighbours.
            z = torch.nn.functional.normalize(model.head_q(features.float()), dim=1)
            parts.append(z.cpu().numpy())
    vectors = np.concatenate(parts)

    table = pd.DataFrame(
        {
            "objid": store.objid[rows].astype(np.int64),
            "ra": store.ra[rows].astype(np.float64),
            "dec": store.dec[rows].astype(np.float64),
            "z_spec": store.z_spec[rows].astype(np.float64),
            "split": np.asarray(store.split_codes, dtype=object)[store.split[rows]],
        }
    )
    meta = provenance(
        state["config"],
        kind="embeddings",
        checkpoint=str(checkpoint),
        checkpoint_sha256=_file_sha256(checkpoint),
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


def _moco_from_checkpoint(state: dict, path: Path):
    """The MoCo module of a pretraining checkpoint (train.pretrain's model.pt), weights loaded."""
    from . import models

    if state.get("kind") != "pretrain" or "moco" not in state:
        raise ValueError(
            f"{path}: not a MoCo pretraining checkpoint (kind {state.get('kind')!r}, "
            f"keys {sorted(state)})"
        )
    model_cfg, cfg = state["config"]["model"], state["config"]["pretrain"]

    moco = models.build_moco(model_cfg, cfg)
    moco.load_state_dict(state["moco"])
    return moco


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
    _check_unit(vectors, f"{path}")
    table = pa_table.drop_columns([EMBEDDING_COLUMN]).to_pandas()
    table["split"] = table["split"].astype(str)
    raw = (pa_table.schema.metadata or {}).get(METADATA_KEY)
    metadata = json.loads(raw) if raw else {}
    return Embeddings(path=path, table=table, vectors=vectors, metadata=metadata)


def _check_unit(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
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


# -- index and search ------------------------------------------------------------------------------
def build_index(embeddings: np.ndarray) -> faiss.Index:
    """Exact FAISS index: inner products of unit vectors are cosines, so this ranks by cosine."""
    vectors = np.ascontiguousarray(_check_unit(embeddings, "build_index"))
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def ivf_nlist(n: int) -> int:
    """Inverted lists for n vectors: 4 sqrt(n) rounded to a power of two, halved until every
    list has at least IVF_MIN_PER_LIST training vectors."""
    nlist = 2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(n))))
    while nlist > 1 and nlist * IVF_MIN_PER_LIST > n:
        nlist //= 2
    return nlist


def build_ivf_index(
    embeddings: np.ndarray, nlist: int | None = None, seed: int = INDEX_SEED
) -> faiss.IndexIVFFlat:
    """IVF-flat inner-product index (nprobe IVF_NPROBE), trained on a seeded random sample of at
    most IVF_TRAIN_PER_LIST * nlist vectors. It keeps a direct map, so stored vectors can be read
    back (load_index checks them)."""
    vectors = np.ascontiguousarray(_check_unit(embeddings, "build_ivf_index"))
    n, dim = vectors.shape
    nlist = ivf_nlist(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist must be in 1..{n} (the vectors), got {nlist}")
    m = min(n, IVF_TRAIN_PER_LIST * nlist)
    sample = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(vectors[sample] if m < n else vectors)
    index.add(vectors)
    index.make_direct_map()
    index.nprobe = min(IVF_NPROBE, nlist)
    return index


def recall_rows(n: int, m: int = RECALL_QUERIES, seed: int = INDEX_SEED) -> np.ndarray:
    """The data rows, sorted, whose vectors serve as queries for the build-time recall."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, m), replace=False))


def _without_self(idx: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k results other than the query's own row (-1 pads when short)."""
    out = np.full((len(idx), k), -1, np.int64)
    for i, (found, row) in enumerate(zip(idx, rows, strict=True)):
        keep = found[(found != row) & (found >= 0)][:k]
        out[i, : len(keep)] = keep
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row's exact k neighbours that ``found`` holds (-1 never counts)."""
    k = exact.shape[1]
    hits = [len(set(a[a >= 0]) & set(b)) / k for a, b in zip(found, exact, strict=True)]
    return float(np.mean(hits))


def measure_recall(
    index: faiss.Index,
    vectors: np.ndarray,
    k: int = RECALL_K,
    rows: np.ndarray | None = None,
    exact: np.ndarray | None = None,
) -> float:
    """recall@k of ``index`` against exact search, the queries being data rows (self excluded)."""
    rows = recall_rows(len(vectors)) if rows is None else rows
    queries = np.ascontiguousarray(vectors[rows])
    if exact is None:
        exact = _exact_without_self(vectors, rows, k)
    _, idx = search(index, queries, k + 1)
    return recall_at_k(_without_self(idx, rows, k), exact)


def _exact_without_self(vectors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    queries = np.ascontiguousarray(vectors[rows])
    _, idx = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return _without_self(idx, rows, k)


def build_index_by_size(
    embeddings: np.ndarray, exact_max: int | None = None
) -> tuple[faiss.Index, dict]:
    """Exact flat index up to ``exact_max`` (default EXACT_MAX) vectors, else IVF-flat with its
    nprobe raised (doubling, up to nlist) until recall@RECALL_K reaches RECALL_MIN; returns the
    index and its description for the sidecar (kind, nlist, nprobe, measured recall)."""
    vectors = _check_unit(embeddings, "build_index")
    exact_max = EXACT_MAX if exact_max is None else exact_max
    n = len(vectors)
    if n <= exact_max:
        return build_index(vectors), {"recall": 1.0}
    t0 = time.perf_counter()
    index = build_ivf_index(vectors)
    build_s = time.perf_counter() - t0
    rows = recall_rows(n)
    exact = _exact_without_self(vectors, rows, RECALL_K)
    rec = measure_recall(index, vectors, RECALL_K, rows, exact)
    log.info(
        "IVF index over %d vectors: nlist %d, built in %.1f s; recall@%d %.4f at nprobe %d",
        n,
        index.nlist,
        build_s,
        RECALL_K,
        rec,
        index.nprobe,
    )
    while rec < RECALL_MIN and index.nprobe < index.nlist:
        index.nprobe = min(2 * index.nprobe, index.nlist)
        rec = measure_recall(index, vectors, RECALL_K, rows, exact)
        log.info("recall@%d %.4f at nprobe %d", RECALL_K, rec, index.nprobe)
    if rec < RECALL_MIN:
        log.warning("IVF recall@%d only %.4f at nprobe = nlist", RECALL_K, rec)
    info = {
        "recall": rec,
        "recall_k": RECALL_K,
        "recall_queries": len(rows),
        "recall_seed": INDEX_SEED,
        "build_s": round(build_s, 3),
    }
    return index, info


def _ip_to_distance(ip: np.ndarray) -> np.ndarray:
    # |a - b|^2 = 2 - 2 a.b for unit vectors; rounding can push 2 - 2 a.b a hair below zero.
    return np.sqrt(np.clip(2.0 - 2.0 * ip, 0.0, None)).astype(np.float32)


def search(
    index: faiss.Index, queries: np.ndarray, k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (q, k), nearest first; ``rows`` restricts the candidates.

    An approximate index may find fewer than k: the missing slots have index -1, distance inf.
    """
    queries = np.ascontiguousarray(_check_unit(np.atleast_2d(queries), "queries", index.d))
    n_candidates = index.ntotal if rows is None else len(rows)
    if not 1 <= k <= n_candidates:
        raise ValueError(f"k must be in 1..{n_candidates} (the candidates), got {k}")
    if rows is None:
        ip, idx = index.search(queries, k)
    else:
        selector = faiss.IDSelectorBatch(np.asarray(rows, dtype=np.int64))
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:  # the index's own nprobe; plain SearchParameters would reset it
            params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        ip, idx = index.search(queries, k, params=params)
    dist = _ip_to_distance(ip)
    dist[idx < 0] = np.inf
    return dist, idx.astype(np.int64)


def search_numpy(
    database: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force reference for :func:`search`: all inner products, the k largest, sorted."""
    database = _check_unit(database, "database")
    queries = _check_unit(np.atleast_2d(queries), "queries", database.shape[1])
    n = len(database)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the database size), got {k}")
    # Chunk the queries so the (q, n) block of inner products stays near 256 MiB.
    step = max(1, (1 << 26) // n)
    dist = np.empty((len(queries), k), np.float32)
    idx = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), step):
        ip = queries[start : start + step] @ database.T
        top = np.argpartition(-ip, k - 1, axis=1)[:, :k]
        top_ip = np.take_along_axis(ip, top, axis=1)
        order = np.argsort(-top_ip, axis=1, kind="stable")
        idx[start : start + step] = np.take_along_axis(top, order, axis=1)
        dist[start : start + step] = _ip_to_distance(np.take_along_axis(top_ip, order, axis=1))
    return dist, idx


def index_path(embeddings_path: Path) -> Path:
    return Path(embeddings_path).with_suffix(".faiss")


def index_info_path(path: Path) -> Path:
    """The JSON sidecar describing a saved index: ``emb.faiss`` -> ``emb.faiss.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _describe(index: faiss.Index) -> dict:
    ivf = faiss.try_extract_index_ivf(index)
    info = {"kind": "flat" if ivf is None else "ivf", "ntotal": int(index.ntotal), "d": index.d}
    if ivf is not None:
        info |= {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}
    return info


def save_index(index: faiss.Index, path: Path, info: dict | None = None) -> None:
    """Write the index and its sidecar (kind, size, nlist, nprobe, plus ``info``), atomically."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(index_info_path(path), _describe(index) | (info or {}))


def write_index(embeddings_path: Path) -> Path:
    """Build the index of an embeddings file (exact up to EXACT_MAX vectors, else IVF with its
    recall measured) and save it and its sidecar next to the file; return the index's path."""
    emb = load_embeddings(embeddings_path)
    path = index_path(emb.path)
    index, info = build_index_by_size(emb.vectors)
    save_index(index, path, info)
    desc = _describe(index) | info
    log.info("%s: %s", path, json.dumps(desc))
    return path


def load_index_info(path: Path) -> dict | None:
    """The sidecar of a saved index, or None when it has none."""
    info_path = index_info_path(path)
    if not info_path.exists():
        return None
    try:
        return json.loads(info_path.read_text())
    except ValueError as err:
        raise ValueError(f"{info_path}: not an index sidecar ({err})") from err


def load_index(path: Path, vectors: np.ndarray | None = None) -> faiss.Index:
    """Read a saved index, nprobe restored from its sidecar; with ``vectors`` check it holds
    exactly those (size, dim, samples)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no FAISS index here")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: not a FAISS index ({err})") from err
    _apply_info(index, path)
    if vectors is None:
        return index
    n, dim = vectors.shape
    if index.d != dim or index.ntotal != n:
        raise ValueError(
            f"{path}: the index holds {index.ntotal} vectors of {index.d} dimensions, the "
            f"embeddings {n} of {dim}; rebuild it (write_index)"
        )
    # A few stored vectors must be the embeddings' own: catches an index of an older run.
    sample = np.unique(np.linspace(0, n - 1, min(n, 17)).astype(np.int64))
    try:
        stored = np.stack([index.reconstruct(int(i)) for i in sample])
    except RuntimeError:
        return index  # an index that cannot give its vectors back (IVF without a direct map)
    if not np.allclose(stored, vectors[sample], atol=1e-6):
        raise ValueError(f"{path}: the index does not match the embeddings; rebuild it")
    return index


def _apply_info(index: faiss.Index, path: Path) -> None:
    """Check the sidecar describes this index and set the IVF nprobe it records."""
    info = load_index_info(path)
    actual = _describe(index)
    ivf = faiss.try_extract_index_ivf(index)
    if info is None:
        if ivf is not None:
            log.warning("%s: no sidecar; IVF nprobe stays %d", path, ivf.nprobe)
        return
    for key in ("kind", "ntotal", "d", "nlist"):
        if key in info and info[key] != actual.get(key):
            raise ValueError(
                f"{index_info_path(path)}: the sidecar says {key} {info[key]!r}, the index "
                f"has {actual.get(key)!r}; rebuild it (write_index)"
            )
    # FAISS stores nprobe in the file as well; the sidecar's (the one its recall was measured at,
    # or a user's edit) wins.
    if ivf is not None and "nprobe" in info:
        ivf.nprobe = int(info["nprobe"])


def open_index(emb: Embeddings) -> faiss.Index:
    """The saved index next to the embeddings file if there is one, else one built in memory."""
    path = index_path(emb.path)
    return load_index(path, emb.vectors) if path.exists() else build_index(emb.vectors)


# -- queries ---------------------------------------------------------------------------------------
def _separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in degrees (haversine: accurate at arcsecond scales)."""
    ra1, dec1, ra2, dec2 = (
        np.radians(np.asarray(a, dtype=np.float64)) for a in (ra1, dec1, ra2, dec2)
    )
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def find_row(
    emb: Embeddings,
    objid: int | None = None,
    ra: float | None = None,
    dec: float | None = None,
    radius_arcsec: float = MATCH_RADIUS_ARCSEC,
) -> int:
    """Row of the object with ``objid``, or of the nearest object to (ra, dec) within the radius."""
    by_position = ra is not None or dec is not None
    if (objid is not None) == by_position or (by_position and (ra is None or dec is None)):
        raise ValueError("give either objid or both ra and dec")
    table = emb.table
    if objid is not None:
        hits = np.flatnonzero(table["objid"].to_numpy() == int(objid))
        if hits.size == 0:
            raise ValueError(
                f"{emb.path}: objid {objid} is not among the {len(table)} embedded objects "
                "(objects whose image is not ok have no embedding)"
            )
        return int(hits[0])
    sep = _separation_deg(ra, dec, table["ra"].to_numpy(), table["dec"].to_numpy()) * 3600
    row = int(np.argmin(sep))
    if not sep[row] <= radius_arcsec:
        raise ValueError(
            f"{emb.path}: no object within {radius_arcsec} arcsec of (ra, dec) = ({ra}, {dec}); "
            f"the nearest, objid {int(table['objid'].iat[row])}, is {sep[row]:.1f} arcsec away"
        )
    return row


def _pool_rows(emb: Embeddings, pool: str) -> np.ndarray | None:
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {list(POOLS)}")
    splits = POOLS[pool]
    if splits is None:
        return None
    rows = np.flatnonzero(emb.table["split"].isin(splits).to_numpy())
    if rows.size == 0:
        raise ValueError(f"{emb.path}: the pool {pool!r} is empty (no {splits} objects)")
    return rows


def neighbours(
    emb: Embeddings, index: faiss.Index, row: int, k: int = 5, pool: str = "train"
) -> pd.DataFrame:
    """The k nearest objects of the pool to row ``row`` (itself excluded), nearest first."""
    rows = _pool_rows(emb, pool)
    n_pool = emb.table.shape[0] if rows is None else len(rows)
    in_pool = rows is None or bool(np.isin(row, rows))
    k_max = n_pool - int(in_pool)
    if not 1 <= k <= k_max:
        raise ValueError(f"k must be in 1..{k_max} for the pool {pool!r}, got {k}")
    # One extra in case the query itself is in the pool; it is dropped below.
    dist, idx = search(index, emb.vectors[row], min(k + 1, n_pool), rows)
    keep = (idx[0] != row) & (idx[0] >= 0)
    found, dist = idx[0][keep][:k], dist[0][keep][:k]
    out = emb.table.iloc[found][list(CATALOG_COLUMNS)].reset_index(drop=True)
    out["distance"] = dist
    return out


def query_neighbours(
    embeddings_path: Path,
    objid: int | None = None,
    ra: float | None = None,
    dec: float | None = None,
    k: int = 5,
    pool: str = "train",
    radius_arcsec: float = MATCH_RADIUS_ARCSEC,
) -> pd.DataFrame:
    """Neighbours (objid, ra, dec, z_spec, split, distance) of one object, by objid or position.

    Uses the saved index next to the file when present (checked against it), else builds one.
    The query's own row is in ``DataFrame.attrs["query"]``.
    """
    emb = load_embeddings(embeddings_path)
    row = find_row(emb, objid=objid, ra=ra, dec=dec, radius_arcsec=radius_arcsec)
    out = neighbours(emb, open_index(emb), row, k=k, pool=pool)
    out.attrs["query"] = emb.table.iloc[row].to_dict()
    return out


def anomalies(
    embeddings: np.ndarray,
    k: int = 10,
    n: int = 20,
    catalog: pd.DataFrame | None = None,
    index: faiss.Index | None = None,
) -> pd.DataFrame:
    """The ``n`` objects farthest from their k-th nearest neighbour (self excluded), farthest first.

    Columns: row (of ``embeddings``), the ``catalog`` columns when given, ``kth_distance``. An
    all-against-all search: exact flat search costs O(N^2 d); pass an approximate ``index`` (the
    IVF one :func:`write_index` saves above EXACT_MAX objects) for millions of objects. An IVF
    index may miss a neighbour, so the k-th distance can come out a little large (inf when fewer
    than k + 1 are found).
    """
    vectors = _check_unit(embeddings, "anomalies")
    total = len(vectors)
    if not 1 <= k < total:
        raise ValueError(f"k must be in 1..{total - 1} (objects other than the query), got {k}")
    if catalog is not None and len(catalog) != total:
        raise ValueError(f"catalog has {len(catalog)} rows, embeddings {total}")
    index = build_index(vectors) if index is None else index
    kth = np.empty(total, np.float32)
    step = 4096
    for start in range(0, total, step):
        dist, idx = search(index, vectors[start : start + step], k + 1)
        self_ = np.arange(start, start + len(idx))[:, None]
        # Move each row's own entry (if found) to the end; an exact duplicate may displace it.
        order = np.argsort(idx == self_, axis=1, kind="stable")
        kth[start : start + len(idx)] = np.take_along_axis(dist, order, axis=1)[:, k - 1]
    top = np.argsort(-kth, kind="stable")[: min(n, total)]
    out = pd.DataFrame({"row": top})
    if catalog is not None:
        out = pd.concat([out, catalog.iloc[top].reset_index(drop=True)], axis=1)
    out["kth_distance"] = kth[top]
    out.attrs["k"] = k
    return out


# -- figures ---------------------------------------------------------------------------------------
def _store_images(store_path: Path, objids) -> list[np.ndarray]:
    """The raw (5, H, W) cut-outs of ``objids`` from the store, in that order."""
    from .data import open_store

    store = open_store(store_path)
    rows = pd.Index(store.objid).get_indexer(np.asarray(objids, dtype=np.int64))
    if (rows < 0).any():
        missing = np.asarray(objids)[rows < 0]
        raise ValueError(
            f"{store_path}: {len(missing)} objids are not in the store, e.g. {int(missing[0])} "
            "(embeddings from another store?)"
        )
    return [np.asarray(store.images[int(r)]) for r in rows]


def _figure_inches(n_rows: int, n_cols: int) -> tuple[float, float]:
    """Figure size in inches of an n_rows x n_cols grid of titled panels (times DPI: pixels)."""
    width = n_cols * PANEL_IN + (n_cols - 1) * GAP_IN + 2 * PAD_IN
    height = n_rows * (PANEL_IN + TITLE_IN) + PAD_IN
    return width, height


def _figure(n_rows: int, n_cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # No pyplot: no global state, no backend switch in the caller's process.
    width, height = _figure_inches(n_rows, n_cols)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    # Margins in inches, so every row keeps TITLE_IN for its two-line titles at any grid size.
    fig.subplots_adjust(
        left=PAD_IN / width,
        right=1 - PAD_IN / width,
        bottom=PAD_IN / height,
        top=1 - TITLE_IN / height,
        wspace=GAP_IN / PANEL_IN,
        hspace=TITLE_IN / PANEL_IN,
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def _show(ax, cutout: np.ndarray, title: str, colour: str = "black") -> None:
    from .images import gri_image

    ax.imshow(gri_image(cutout), interpolation="nearest")
    ax.set_title(title, fontsize=7, color=colour)


def _z_text(z: float) -> str:
    return f"z={z:.3f}" if math.isfinite(z) else "z=n/a"


def _save(fig, out_png: Path) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def plot_similarity_search(
    emb: Embeddings,
    store_path: Path,
    out_png: Path,
    n_queries: int = 6,
    k: int = 5,
    seed: int = 0,
    index: faiss.Index | None = None,
) -> pd.DataFrame:
    """The paper's Fig. 1: each row a random validation galaxy, then its k nearest training
    galaxies (gri pictures of the raw cut-outs, z_spec and distance above each).

    Returns the plotted pairs: query_objid, rank (0 = the query), objid, z_spec, distance.
    """
    val_rows = np.flatnonzero(emb.table["split"].to_numpy() == "val")
    if val_rows.size == 0:
        raise ValueError(f"{emb.path}: no validation objects to query")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(val_rows, size=min(n_queries, val_rows.size), replace=False))
    index = open_index(emb) if index is None else index
    records = []
    for row in queries:
        query = emb.table.iloc[row]
        records.append({**query[["objid", "z_spec"]].to_dict(), "rank": 0, "distance": 0.0})
        found = neighbours(emb, index, int(row), k=k, pool="train")
        for rank, hit in enumerate(found.itertuples(), start=1):
            records.append(
                {"objid": hit.objid, "z_spec": hit.z_spec, "rank": rank, "distance": hit.distance}
            )
    plotted = pd.DataFrame(records)
    plotted.insert(0, "query_objid", np.repeat(emb.table["objid"].to_numpy()[queries], k + 1))
    images = _store_images(store_path, plotted["objid"])

    fig, axes = _figure(len(queries), k + 1)
    for pos, (rec, cutout) in enumerate(zip(plotted.to_dict("records"), images, strict=True)):
        i, j = divmod(pos, k + 1)
        if rec["rank"] == 0:
            _show(axes[i, j], cutout, f"val query\n{_z_text(rec['z_spec'])}", "tab:red")
        else:
            _show(axes[i, j], cutout, f"{_z_text(rec['z_spec'])}\nd={rec['distance']:.3f}")
    _save(fig, out_png)
    return plotted


def plot_anomalies(anomaly_df: pd.DataFrame, store_path: Path, out_png: Path, n_cols: int = 5):
    """A grid of the anomalies' gri pictures, titled with objid and k-th neighbour distance."""
    for column in ("objid", "kth_distance"):
        if column not in anomaly_df:
            raise ValueError(f"anomaly table lacks {column!r} (pass catalog= to anomalies())")
    if anomaly_df.empty:
        raise ValueError("no anomalies to plot")
    k = anomaly_df.attrs.get("k")
    label = f"d(k={k})" if k is not None else "d_k"
    images = _store_images(store_path, anomaly_df["objid"])
    n_cols = min(n_cols, len(anomaly_df))
    fig, axes = _figure(math.ceil(len(anomaly_df) / n_cols), n_cols)
    for pos, (rec, cutout) in enumerate(zip(anomaly_df.itertuples(), images, strict=True)):
        title = f"{rec.objid}\n{label}={rec.kth_distance:.3f}"
        _show(axes.ravel()[pos], cutout, title)
    _save(fig, out_png)
