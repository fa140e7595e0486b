"""Galaxy look-ups in the embedding space: a galaxy's nearest neighbours, and the anomalies.

A query names a galaxy by objid or by position (matched within ``MATCH_RADIUS_ARCSEC``); its
neighbours come from a pool of splits (``POOLS``; the paper's Fig. 1 draws them from training),
itself excluded, nearest first, with their Euclidean distance between unit vectors. Anomalies
are the objects farthest from their k-th neighbour. Both run on the FAISS index of
:mod:`ssl_photoz.similarity.index` over the embeddings of :mod:`ssl_photoz.similarity.embeddings`.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ssl_photoz.similarity.embeddings import (
    CATALOG_COLUMNS,
    Embeddings,
    check_unit,
    load_embeddings,
)
from ssl_photoz.similarity.index import build_index, open_index, search

__all__ = [
    "MATCH_RADIUS_ARCSEC",
    "POOLS",
    "anomalies",
    "find_row",
    "kth_distances",
    "neighbours",
    "query_neighbours",
]

# Neighbour pools by split; None is every object. The paper's Fig. 1 draws them from training.
POOLS: dict[str, tuple[str, ...] | None] = {
    "train": ("train",),
    "train+unlabeled": ("train", "unlabeled"),
    "all": None,
}
MATCH_RADIUS_ARCSEC = 3.0


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


def kth_distances(
    embeddings: np.ndarray,
    k: int,
    index: faiss.Index | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's distance to its k-th nearest object (all of ``embeddings``, itself excluded).

    ``rows`` (default: every row) are the objects scored; the neighbours are always all objects.
    This is the anomaly score of :func:`anomalies`; with an approximate ``index`` it can come out
    a little large (inf when fewer than k + 1 are found).
    """
    vectors = check_unit(embeddings, "anomalies")
    total = len(vectors)
    if not 1 <= k < total:
        raise ValueError(f"k must be in 1..{total - 1} (objects other than the query), got {k}")
    rows = np.arange(total) if rows is None else np.asarray(rows, dtype=np.int64)
    index = build_index(vectors) if index is None else index
    kth = np.empty(len(rows), np.float32)
    step = 4096
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        dist, idx = search(index, vectors[chunk], k + 1)
        # Move each row's own entry (if found) to the end; an exact duplicate may displace it.
        order = np.argsort(idx == chunk[:, None], axis=1, kind="stable")
        kth[start : start + len(chunk)] = np.take_along_axis(dist, order, axis=1)[:, k - 1]
    return kth


def anomalies(
    embeddings: np.ndarray,
    *,
    k: int,
    n: int,
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
    vectors = check_unit(embeddings, "anomalies")
    total = len(vectors)
    if catalog is not None and len(catalog) != total:
        raise ValueError(f"catalog has {len(catalog)} rows, embeddings {total}")
    kth = kth_distances(vectors, k, index=index)
    top = np.argsort(-kth, kind="stable")[: min(n, total)]
    out = pd.DataFrame({"row": top})
    if catalog is not None:
        out = pd.concat([out, catalog.iloc[top].reset_index(drop=True)], axis=1)
    out["kth_distance"] = kth[top]
    out.attrs["k"] = k
    return out
