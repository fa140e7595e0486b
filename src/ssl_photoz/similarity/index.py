"""The FAISS index over the embeddings: building it (exact or IVF), saving, loading, k-NN search.

A FAISS inner-product index over unit vectors ranks by cosine, and the distance reported is the
Euclidean one between unit vectors, sqrt(2 - 2 cos), in [0, 2]. Up to ``EXACT_MAX`` vectors the
index is exact (flat); above, exact search costs 55-250 ms per query at the paper's 1.7 M objects,
so :func:`write_index` builds an IVF-flat index instead (inverted lists searched ``nprobe`` at a
time) and records its measured recall@5 against exact search.

The index, when saved, sits next to the embeddings file (:mod:`ssl_photoz.similarity.embeddings`)
with the
suffix ``.faiss``, and a JSON sidecar ``.faiss.json`` beside that describes it: kind (flat or
ivf), size, nlist, nprobe and, for IVF, the recall measured at build time.

:func:`search` is the raw k-NN of query vectors (optionally among some rows only);
:mod:`ssl_photoz.similarity.search` turns it into galaxy look-ups (by objid or position, within a
pool).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import faiss
import numpy as np

from ssl_photoz.core.atomic import atomic_path, write_json
from ssl_photoz.similarity.embeddings import Embeddings, check_unit, load_embeddings

__all__ = [
    "EXACT_MAX",
    "build_index",
    "build_index_by_size",
    "build_ivf_index",
    "index_info_path",
    "index_path",
    "ivf_nlist",
    "load_index",
    "load_index_info",
    "measure_recall",
    "open_index",
    "recall_rows",
    "save_index",
    "search",
    "search_numpy",
    "write_index",
]

log = logging.getLogger(__name__)

# Index choice of write_index: exact flat search up to EXACT_MAX vectors, IVF-flat above.
EXACT_MAX = 200_000
IVF_NPROBE = 32  # inverted lists searched per query, before any raise for recall
IVF_TRAIN_PER_LIST = 256  # k-means training sample: at most this many vectors per list
IVF_MIN_PER_LIST = 39  # fewer training vectors per list and FAISS warns (poor centroids)
RECALL_K = 5
RECALL_QUERIES = 500
RECALL_MIN = 0.95  # nprobe doubles (up to nlist) until the measured recall@k reaches this
INDEX_SEED = 0


def build_index(embeddings: np.ndarray) -> faiss.Index:
    """Exact FAISS index: inner products of unit vectors are cosines, so this ranks by cosine."""
    vectors = np.ascontiguousarray(check_unit(embeddings, "build_index"))
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
    vectors = np.ascontiguousarray(check_unit(embeddings, "build_ivf_index"))
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
    vectors = check_unit(embeddings, "build_index")
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
    queries = np.ascontiguousarray(check_unit(np.atleast_2d(queries), "queries", index.d))
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
    database = check_unit(database, "database")
    queries = check_unit(np.atleast_2d(queries), "queries", database.shape[1])
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
