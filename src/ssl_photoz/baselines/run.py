"""A catalogue baseline at one label fraction: fitted on the image models' training objects of
that fraction, scored on their validation objects, its predictions written as the networks' are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.baselines import registry as baselines
from ssl_photoz.baselines.features import RedshiftBins, catalogue_features
from ssl_photoz.core.holdout import in_slice
from ssl_photoz.evaluate.predictions import write_predictions


def label_split(
    objects: pd.DataFrame, fraction: float = 1.0, usable_objids=None, heldout: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) masks over ``objects``: the training labels of label fraction ``fraction``
    (``fraction_rank < fraction``: the image models' training objects at that fraction and seed
    0, ``ssl_photoz.core.ranks.label_rank``; other seeds label other galaxies) and the
    validation objects.

    ``usable_objids`` (the store's objects with a good cut-out) restricts both to the objects the
    image models can use, so that every model of a fraction learns from and is scored on the same
    galaxies; for that, too, the arm-selection slice (``heldout``: arm_selection.holdout,
    ``ssl_photoz.core.holdout``) is left out of the training labels as the networks leave it."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    usable = np.ones(len(objects), dtype=bool)
    if usable_objids is not None:
        usable = objects["objid"].isin(np.asarray(usable_objids)).to_numpy()
    train = (objects["split"] == "train").to_numpy() & np.isfinite(objects["z_spec"].to_numpy())
    train &= usable
    if fraction < 1 or "fraction_rank" in objects:
        if "fraction_rank" not in objects:
            raise ValueError("the objects table has no fraction_rank: cannot take a label fraction")
        train &= (objects["fraction_rank"] < fraction).to_numpy()
    train &= ~in_slice(objects["objid"].to_numpy(), heldout)
    val = (objects["split"] == "val").to_numpy() & usable
    return train, val


def predict_baseline(
    name: str,
    objects: pd.DataFrame,
    out: Path,
    *,
    settings: dict,
    bins: RedshiftBins | None = None,
    fraction: float = 1.0,
    usable_objids=None,
    heldout: float = 0.0,
) -> int:
    """Fit the registered baseline ``name`` (its config section ``settings``; ``bins``: the
    networks' redshift bins, for a baseline with a PDF) on the dereddened colours of the
    training objects of ``fraction`` and write its validation predictions to ``out``; returns
    the number of validation objects."""
    train, val = label_split(objects, fraction, usable_objids, heldout)
    if train.sum() == 0 or val.sum() == 0:
        raise ValueError(
            f"{name} at label fraction {fraction:g} needs training and validation galaxies; "
            f"got {int(train.sum())} and {int(val.sum())}"
        )
    features = catalogue_features(objects)
    z_spec = objects["z_spec"].to_numpy()
    model = baselines.load(name).make(settings, bins).fit(features[train], z_spec[train])
    z_phot, pdf = model.predict(features[val])
    write_predictions(
        out,
        objects["objid"].to_numpy()[val],
        z_spec[val],
        z_phot,
        pdf,
        # The settings as one JSON value: a key of theirs (the MLP's seed) is not a run key.
        {
            "model": name,
            "settings": json.dumps(settings, sort_keys=True),
            "fraction": fraction,
            "n_train": int(train.sum()),
        },
    )
    return int(val.sum())
