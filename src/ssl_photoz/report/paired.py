"""summary.md's section on metrics_paired.tsv: the differences between two arms in sigma_MAD,
with paired bootstrap intervals (the same validation galaxies resampled for both arms), and
the label fractions where both image arms lose to the catalogue baseline.

Also read by scripts/science_report.py (docs/science.md), so that both state a comparison alike.
"""

from __future__ import annotations

import pandas as pd

from ssl_photoz.core import kinds

__all__ = ["both_below_baseline", "format_difference", "paired_lines"]

MEAN = -1  # metrics_paired.tsv's seed of a row about the means over seeds


def format_difference(row) -> str:
    """``-0.00120 [-0.00150, -0.00090]``: the difference and its paired 95 % interval, with
    ``(resolved)`` where the interval excludes zero."""
    text = f"{row['diff']:+.5f} [{row['diff_lo95']:+.5f}, {row['diff_hi95']:+.5f}]"
    if row["diff_lo95"] > 0 or row["diff_hi95"] < 0:
        text += " (resolved)"
    return text


def _mean_row(paired: pd.DataFrame, kind_a: str, kind_b: str, fraction: float):
    hit = paired[
        (paired["kind_a"] == kind_a)
        & (paired["kind_b"] == kind_b)
        & (paired["fraction"] == fraction)
        & (paired["seed"] == MEAN)
    ]
    return None if hit.empty else hit.iloc[0]


def both_below_baseline(paired: pd.DataFrame, fraction: float) -> bool:
    """Whether at ``fraction`` both image arms' mean sigma_MAD is above (worse than) the
    catalogue baseline's on the same galaxies."""
    rows = [
        _mean_row(paired, arm, kinds.CATALOGUE_BASELINE, fraction)
        for arm in (kinds.SELF_SUPERVISED, kinds.SUPERVISED)
    ]
    return all(row is not None and row["diff"] > 0 for row in rows)


def paired_lines(paired: pd.DataFrame | None) -> list[str]:
    """The section's markdown lines (none without the table)."""
    if paired is None or paired.empty:
        return []
    ssl, sup = kinds.get(kinds.SELF_SUPERVISED), kinds.get(kinds.SUPERVISED)
    base = kinds.get(kinds.CATALOGUE_BASELINE)
    lines = [
        "## Paired differences (the same validation galaxies)",
        "",
        f"Differences in sigma_MAD, first arm minus second (negative: the first is better), "
        "with paired bootstrap 95 % intervals: the validation galaxies resampled once per draw "
        "and both arms scored on that same resample (results/metrics_paired.tsv, 68 % intervals "
        "there too). Seed 'mean': the arms' means over the seeds both ran; a seed picks the "
        f"labeled galaxies as well as the optimisation. The {base.report_name} is unseeded "
        "(it fits on seed 0's labels).",
        "",
        f"| label fraction | seed | {ssl.report_name} - {sup.report_name} "
        f"| {ssl.report_name} - {base.report_name} | {sup.report_name} - {base.report_name} |",
        "| --- | --- | --- | --- | --- |",
    ]
    below = []
    for fraction in sorted(paired["fraction"].unique()):
        rows = paired[paired["fraction"] == fraction]
        seeds = sorted(rows["seed"].unique(), key=lambda s: (s == MEAN, s))
        for seed in seeds:
            cells = []
            for kind_a, kind_b in ((ssl, sup), (ssl, base), (sup, base)):
                hit = rows[
                    (rows["kind_a"] == kind_a.name)
                    & (rows["kind_b"] == kind_b.name)
                    & (rows["seed"] == seed)
                ]
                cells.append(format_difference(hit.iloc[0]) if len(hit) else "-")
            label = "mean" if seed == MEAN else str(int(seed))
            lines.append(f"| {fraction:g} | {label} | " + " | ".join(cells) + " |")
        if both_below_baseline(paired, fraction):
            below.append(f"{100 * fraction:g} %")
    if below:
        lines += [
            "",
            f"At {', '.join(below)} of the labels both image arms are worse than the "
            f"{base.report_name} on the same galaxies: neither network gets from these labels "
            "what the catalogue's colours give, so the difference between the two arms there "
            "is not a result about self-supervision.",
        ]
    return lines
