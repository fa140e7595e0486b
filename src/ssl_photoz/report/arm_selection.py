"""The headline fine-tuning arm, chosen by the rule stated before the run
(``ssl_photoz.core.arms.SELECTION_RULE``) from the held-out slice of the training labels.

Its only input is the training summaries' ``heldout`` scores (each arm's run scores the slice of
its training labels that it left out: ``ssl_photoz.learn.classifier``); validation scores are
never passed in, so they cannot sway the choice.
"""

from __future__ import annotations

import math
import statistics

from ssl_photoz.core import arms
from ssl_photoz.core.config import with_defaults

__all__ = ["choose", "heldout_scores", "section"]


def heldout_scores(training: dict) -> dict[str, dict[float, list[float]]]:
    """arm -> label fraction -> the held-out sigma_MAD of each seed's run, from the training
    summaries (runs without a held-out score, and those of no arm, are left out)."""
    scores: dict[str, dict[float, list[float]]] = {}
    for run in training.values():
        if run.get("kind") != "finetune" or "heldout" not in run or "fraction" not in run:
            continue
        value = run["heldout"]["sigma_mad"]
        if value is None or not math.isfinite(value):
            continue  # not scorable: the arm counts as unscored at that fraction
        arm = run.get("arm") or arms.ARMS[0].name
        scores.setdefault(arm, {}).setdefault(float(run["fraction"]), []).append(value)
    return scores


def _geometric_mean(values: list[float]) -> float:
    """0 where a value is 0 (a slice of one galaxy has sigma_MAD 0), as the limit says."""
    if min(values) <= 0:
        return 0.0
    return math.exp(statistics.fmean(math.log(v) for v in values))


def choose(listed: list[str], scores: dict[str, dict[float, list[float]]]) -> dict:
    """The headline arm of the arms ``listed`` (``finetune.arms``, in order) by SELECTION_RULE:
    ``{"headline": arm or None, "why": text, "geomean": {arm: value}}``. One arm listed is the
    headline by the config; with several, every arm needs a score at every fraction that any
    has, else there is no headline."""
    if len(listed) == 1:
        return {"headline": listed[0], "why": "the only arm run", "geomean": {}}
    fractions = sorted({f for arm in listed for f in scores.get(arm, {})})
    missing = [a for a in listed if not fractions or set(scores.get(a, {})) != set(fractions)]
    if missing:
        return {
            "headline": None,
            "why": f"no held-out scores of arm(s) {missing} at every fraction: none chosen",
            "geomean": {},
        }
    geomean = {
        arm: _geometric_mean([statistics.median(scores[arm][f]) for f in fractions])
        for arm in listed
    }
    best = min(listed, key=lambda arm: (geomean[arm], listed.index(arm)))
    return {"headline": best, "why": arms.SELECTION_RULE, "geomean": geomean}


def section(config: dict, training: dict) -> list[str]:
    """summary.md's section: the arms run (``finetune.arms``), their held-out scores and the
    headline arm (the held-out slice: ``arm_selection.holdout``)."""
    listed = with_defaults("finetune", config["finetune"])["arms"]
    scores = heldout_scores(training)
    chosen = choose(listed, scores)
    holdout = with_defaults("arm_selection", config.get("arm_selection") or {})["holdout"]
    run = ", ".join(f"{a} ({arms.get(a).words}, kind {arms.get(a).kind})" for a in listed)
    lines = [
        "## Fine-tuning arms and the headline arm",
        "",
        f"Arms run: {run}. Held-out slice: {100 * holdout:g} % of the training labels, left "
        "out of every model's training.",
        "",
        f"**Headline arm: {chosen['headline'] or 'none'}** ({chosen['why']}).",
        "",
    ]
    if chosen["geomean"]:
        fractions = sorted({f for a in listed for f in scores.get(a, {})})
        lines += [
            "| arm | " + " | ".join(f"f = {f:g}" for f in fractions) + " | geometric mean |",
            "| --- | " + " | ".join("---" for _ in fractions) + " | --- |",
        ]
        for arm in listed:
            cells = [f"{statistics.median(scores[arm][f]):.5f}" for f in fractions]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {chosen['geomean'][arm]:.5f} |")
        lines += ["", "Held-out sigma_MAD: the median over seeds of each arm's runs.", ""]
    return lines
