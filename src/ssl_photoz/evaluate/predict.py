"""Predictions for the validation objects: from a trained classifier, or from the colours-only kNN.

Output (one Parquet file per model): objid, z_spec, z_phot and the photo-z PDF over the
classifier's bins as float16 (180 values: 360 bytes per object, compact enough for 1e5 objects).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ssl_photoz.baselines.colours_knn import colour_features, knn_photoz
from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.config import crop_size
from ssl_photoz.surveys.sdss.conventions import BANDS

log = logging.getLogger(__name__)


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


def predict_classifier(
    checkpoint: Path, store_path: Path, out: Path, device: str = "cpu", precision: str = "fp32"
) -> int:
    """z_p = E(z) and the PDF of every validation object (centre crops, dereddened).

    ``precision`` (auto | fp32 | bf16 | fp16, a machine setting) is resolved as for training: the
    network runs under its autocast, the softmax, PDF and E(z) in fp32."""
    import torch

    from ssl_photoz.learn import data, inference, models
    from ssl_photoz.learn import precision as precision_mod
    from ssl_photoz.learn.checkpoints import load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = state["config"]
    dev = torch.device(device)
    chosen = precision_mod.resolve(precision, dev, cfg["model"])
    log.info("predict: %s", chosen.describe())
    recipe = cfg.get(cfg.get("kind"), cfg.get("finetune"))  # the run's section: its bins
    net = models.RedshiftClassifier(
        models.backbone_from_config(cfg["model"]),
        n_bins=recipe["n_bins"],
        z_min=recipe["z_min"],
        z_max=recipe["z_max"],
    )
    net.load_state_dict(state["model"])
    net.to(dev, memory_format=torch.channels_last)  # as in training
    store = data.open_store(store_path)
    indices = data.labeled_indices(store, "val")
    dataset = data.CutoutDataset(store_path, indices, deredden=True)
    pdfs, z_phot, rows = [], [], []
    for batch, logits in inference.eval_batches(
        net, dataset, dev, chosen, crop_size=crop_size(cfg["model"])
    ):
        pdfs.append(net.pdf(logits).cpu().numpy())
        z_phot.append(net.expected_z(logits).cpu().numpy())
        rows.append(batch["index"].numpy())
    rows = np.concatenate(rows)
    write_predictions(
        out,
        store.objid[rows],
        store.z_spec[rows],
        np.concatenate(z_phot),
        np.concatenate(pdfs),
        {
            "model": state["kind"],
            "checkpoint": str(checkpoint),
            "precision": chosen.name,
            **_run_keys(cfg),
        },
    )
    return len(rows)


def _run_keys(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("fraction", "seed") if k in cfg}


def predict_colours(
    objects: pd.DataFrame,
    out: Path,
    *,
    k: int,
    fraction: float = 1.0,
    usable_objids=None,
) -> int:
    """The colours-only baseline on our catalogue: kNN on standardised dereddened
    (r, u-g, g-r, r-i, i-z) model magnitudes, trained on the training labels of label fraction
    ``fraction`` (``fraction_rank < fraction``: the image models' training objects at that
    fraction) and scored on the validation objects.

    ``usable_objids`` (the store's objects with a good cut-out) restricts both to the objects the
    image models can use, so that every model of a fraction learns from and is scored on the same
    galaxies."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    dered = {b: objects[f"modelMag_{b}"] - objects[f"extinction_{b}"] for b in BANDS}
    features = colour_features(*(dered[b] for b in BANDS))
    usable = np.ones(len(objects), dtype=bool)
    if usable_objids is not None:
        usable = objects["objid"].isin(np.asarray(usable_objids)).to_numpy()
    train = (objects["split"] == "train").to_numpy() & np.isfinite(objects["z_spec"].to_numpy())
    train &= usable
    if fraction < 1 or "fraction_rank" in objects:
        if "fraction_rank" not in objects:
            raise ValueError("the objects table has no fraction_rank: cannot take a label fraction")
        train &= (objects["fraction_rank"] < fraction).to_numpy()
    val = (objects["split"] == "val").to_numpy() & usable
    if train.sum() < k or val.sum() == 0:
        raise ValueError(
            f"colours kNN at label fraction {fraction:g} needs at least {k} training and 1 "
            f"validation galaxy; got {int(train.sum())} and {int(val.sum())}"
        )
    z_phot = knn_photoz(features[train], objects["z_spec"].to_numpy()[train], features[val], k=k)
    write_predictions(
        out,
        objects["objid"].to_numpy()[val],
        objects["z_spec"].to_numpy()[val],
        z_phot,
        None,
        {"model": "colours_knn", "k": k, "fraction": fraction, "n_train": int(train.sum())},
    )
    return int(val.sum())
