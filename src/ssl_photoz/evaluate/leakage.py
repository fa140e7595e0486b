"""Leakage guard: which images each training stage used, and that validation images stayed unseen.

Recomputed from the cut-out store with the same selection functions the training used
(``data.pretrain_indices`` and ``data.labeled_indices``), and from the prediction files (whose
objects must all be validation objects). Any validation object in a training set is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.learn.data import EmptySelectionError, labeled_indices, open_store, pretrain_indices

__all__ = ["LeakageError", "leakage_report"]


class LeakageError(RuntimeError):
    """A validation object was found where a model could have learnt from it."""


def _count(fn, *args) -> np.ndarray:
    try:
        return fn(*args)
    except EmptySelectionError:
        return np.array([], dtype=np.int64)


def leakage_report(
    store_path: Path, fractions: list[float], prediction_objids: dict[str, np.ndarray]
) -> dict:
    """Per split: how many images each stage used; validation objects in training must be 0.

    ``prediction_objids`` maps a model name to the objids it was scored on (all must be val).
    Raises LeakageError naming the stage and a few objids if any validation object leaked.
    """
    store = open_store(store_path)
    split_names = np.array(store.split_codes)[store.split]
    val_objids = set(store.objid[store.ok & store.in_split("val")].tolist())

    uses = {"pretraining (MoCo)": _count(pretrain_indices, store)}
    for fraction in fractions:
        uses[f"labelled training, {100 * fraction:g} % of labels"] = _count(
            labeled_indices, store, "train", fraction
        )
    uses["validation (scored)"] = _count(labeled_indices, store, "val")

    rows = []
    for split in store.split_codes:
        in_split = split_names == split
        row = {
            "split": split,
            "images": int(in_split.sum()),
            "ok": int((in_split & store.ok).sum()),
        }
        for use, indices in uses.items():
            row[use] = int(in_split[indices].sum())
        rows.append(row)
    table = pd.DataFrame(rows)

    leaks = {}
    for use, indices in uses.items():
        if use.startswith("validation"):
            continue
        leaked = sorted(val_objids & set(store.objid[indices].tolist()))
        leaks[use] = leaked
    for model, objids in prediction_objids.items():
        outside = sorted(set(np.asarray(objids).tolist()) - val_objids)
        if outside:
            raise LeakageError(
                f"predictions of {model} score {len(outside)} objects that are not validation "
                f"objects (e.g. objid {outside[:3]}): metrics would mix training images in"
            )
    leaked_any = {use: ids for use, ids in leaks.items() if ids}
    if leaked_any:
        use, ids = next(iter(leaked_any.items()))
        raise LeakageError(
            f"{len(ids)} validation objects are in the {use} set (e.g. objid {ids[:3]}); "
            f"the validation metrics would be optimistic"
        )
    return {
        "n_validation": len(val_objids),
        "validation_in_pretraining": len(leaks["pretraining (MoCo)"]),
        "validation_in_label_training": max(
            (len(ids) for use, ids in leaks.items() if use.startswith("labelled")), default=0
        ),
        "usage": table,
    }
