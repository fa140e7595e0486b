"""Predictions for the validation objects from a trained classifier (the catalogue baselines':
ssl_photoz.baselines.run).

Output (one Parquet file per model, ``predictions.py``): objid, z_spec, z_phot and the photo-z
PDF over the classifier's bins.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ssl_photoz.core.config import crop_size
from ssl_photoz.evaluate.predictions import write_predictions

log = logging.getLogger(__name__)


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
        hidden=state.get("head_hidden", 0),  # 0: a linear head (every model before the arms)
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
