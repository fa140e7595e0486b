"""Paired bootstrap of the differences in sigma_MAD between two model kinds: metrics_paired.tsv.

Two arms scored on the same validation galaxies share most of their errors (the same hard
galaxies are hard for both), so an interval on their difference from each arm's own bootstrap
is far too wide. Here the galaxies are resampled once per draw and both arms' sigma_MAD are
computed on that same resample; the interval is that of the difference (percentiles of the
draws). Pairs, at every label fraction where both kinds have predictions:

- ``SELF_SUPERVISED`` - ``SUPERVISED``: per seed that both arms ran (the same labeled galaxies:
  a seed picks them, ``ssl_photoz.core.ranks.label_rank``), and for the mean over the seeds
  both ran (row seed -1);
- each of the two image arms - ``CATALOGUE_BASELINE``: the arm's mean over its seeds against
  the unseeded baseline (row seed -1).

A difference below zero means the first kind (``kind_a``) has the smaller scatter.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ssl_photoz.core.kinds import CATALOGUE_BASELINE, SELF_SUPERVISED, SUPERVISED
from ssl_photoz.core.metrics import sigma_mad

__all__ = ["PAIRS", "bootstrap_difference", "paired_table"]

PAIRS = (
    (SELF_SUPERVISED, SUPERVISED),
    (SELF_SUPERVISED, CATALOGUE_BASELINE),
    (SUPERVISED, CATALOGUE_BASELINE),
)
MEAN_OVER_SEEDS = -1  # the seed column of a row about the arms' means over seeds


def _sigma_mad_rows(dz: np.ndarray) -> np.ndarray:
    """sigma_MAD of every row of ``dz`` (draws x objects)."""
    centred = np.abs(dz - np.median(dz, axis=-1, keepdims=True))
    return 1.4826 * np.median(centred, axis=-1)


def bootstrap_difference(
    dz_a, dz_b, n_boot: int = 1000, seed: int = 0, paired: bool = True
) -> dict:
    """sigma_MAD(a) - sigma_MAD(b) and its bootstrap 68 % and 95 % intervals.

    ``dz_a``, ``dz_b``: (seeds x objects) or (objects,) arrays of dz, column j the same galaxy
    in both; an arm with several seeds counts as its mean sigma_MAD over them. ``paired``
    resamples the galaxies once per draw for both arms (the comparison on the same galaxies);
    ``paired=False`` resamples each arm on its own, as two unrelated samples would be: the
    wider interval that a paired design avoids (kept for comparison)."""
    a = np.atleast_2d(np.asarray(dz_a, dtype=float))
    b = np.atleast_2d(np.asarray(dz_b, dtype=float))
    n = a.shape[1]
    if b.shape[1] != n or n == 0:
        raise ValueError(f"the two arms need the same galaxies, got {a.shape[1]} and {b.shape[1]}")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        draw_a = rng.integers(0, n, n)
        draw_b = draw_a if paired else rng.integers(0, n, n)
        diffs[i] = _sigma_mad_rows(a[:, draw_a]).mean() - _sigma_mad_rows(b[:, draw_b]).mean()
    sig_a = float(np.mean([sigma_mad(row) for row in a]))
    sig_b = float(np.mean([sigma_mad(row) for row in b]))
    lo68, hi68, lo95, hi95 = np.percentile(diffs, [16, 84, 2.5, 97.5])
    return {
        "sigma_mad_a": sig_a,
        "sigma_mad_b": sig_b,
        "diff": sig_a - sig_b,
        "diff_lo68": float(lo68),
        "diff_hi68": float(hi68),
        "diff_lo95": float(lo95),
        "diff_hi95": float(hi95),
    }


def _aligned(runs: dict, objids: np.ndarray) -> np.ndarray:
    """(seeds x objects) dz of ``runs`` ({seed: Series of dz by objid}) on ``objids``."""
    return np.stack([runs[s].reindex(objids).to_numpy() for s in sorted(runs)])


def _row(kind_a, kind_b, fraction, seed, runs_a, runs_b, n_boot, boot_seed) -> dict:
    common = None
    for series in [*runs_a.values(), *runs_b.values()]:
        ids = series.index.to_numpy()
        common = ids if common is None else np.intersect1d(common, ids)
    stats = bootstrap_difference(
        _aligned(runs_a, common), _aligned(runs_b, common), n_boot=n_boot, seed=boot_seed
    )
    return {
        "kind_a": kind_a,
        "kind_b": kind_b,
        "fraction": fraction,
        "seed": seed,
        "n_seeds": len(runs_a),
        "n_objects": len(common),
        **stats,
    }


def paired_table(runs: list[dict], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """metrics_paired.tsv's rows from ``runs``: one dict per prediction file with ``kind``,
    ``fraction``, ``seed`` (-1 unseeded) and ``dz`` (a Series of dz indexed by objid)."""
    by = {}
    for run in runs:
        by.setdefault((run["kind"], float(run["fraction"])), {})[int(run["seed"])] = run["dz"]
    rows = []
    fractions = sorted({fraction for _, fraction in by})
    for kind_a, kind_b in PAIRS:
        for fraction in fractions:
            a, b = by.get((kind_a, fraction)), by.get((kind_b, fraction))
            if not a or not b:
                continue
            shared = sorted(set(a) & set(b))
            if shared:  # paired seeds: each seed alone, then their mean
                for s in shared:
                    rows.append(
                        _row(kind_a, kind_b, fraction, s, {s: a[s]}, {s: b[s]}, n_boot, seed)
                    )
                a = {s: a[s] for s in shared}
                b = {s: b[s] for s in shared}
            rows.append(_row(kind_a, kind_b, fraction, MEAN_OVER_SEEDS, a, b, n_boot, seed))
    columns = ["kind_a", "kind_b", "fraction", "seed", "n_seeds", "n_objects", "sigma_mad_a"]
    columns += ["sigma_mad_b", "diff", "diff_lo68", "diff_hi68", "diff_lo95", "diff_hi95"]
    return pd.DataFrame(rows, columns=columns)
