"""A pretraining diagnostic that spends no labels budget: photo-z probes on frozen embeddings.

The pretrained backbone (of either pretraining method, MoCo v2 or BYOL) and the same backbone at
random initialisation each embed the training objects (every training label) and the validation
objects (centre crops, dereddened, as the classifiers see them). Two probes predict z from the
frozen features, trained on the training labels and scored on the validation objects:

- ``knn``: mean z of the k nearest training galaxies by cosine similarity of the standardised
  features;
- ``linear``: ridge regression of z on the standardised features, its penalty chosen by 5-fold
  cross-validation on the training set.

If pretraining learnt anything about redshift, the pretrained encoder beats the random one on
both. Both encoders get the same batch-norm treatment, chosen by ``probe.batch_norm``:

- ``recalibrate`` (default): both encoders' running statistics are recomputed on the probe's
  own inputs (the training objects' centre crops, labels unused), so each is judged on its
  weights: the random encoder's initial statistics do not describe its activations, and the
  pretrained encoder's were gathered on augmented (reddened, noisy, jittered) views;
- ``keep``: neither is touched (the pretrained encoder keeps its pretraining statistics, the
  random one its initial ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.config import crop_size
from ssl_photoz.core.metrics import photoz_metrics

log = logging.getLogger(__name__)

RIDGE_ALPHAS = np.logspace(-3, 4, 15)  # times the number of training objects
BATCH_NORM_MODES = ("recalibrate", "keep")  # probe.batch_norm: one treatment for both encoders


def knn_cosine(train_x, train_z, test_x, k: int = 10, chunk: int = 4096) -> np.ndarray:
    """Mean z of the k nearest training rows by cosine similarity (features standardised on the
    training set first)."""
    import torch

    train_x, test_x = _standardise(np.asarray(train_x, float), np.asarray(test_x, float))
    if len(train_x) < k:
        raise ValueError(f"kNN probe needs at least k={k} training galaxies, got {len(train_x)}")
    a = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    z = torch.as_tensor(np.asarray(train_z, float))
    out = []
    for start in range(0, len(b), chunk):
        idx = (b[start : start + chunk] @ a.T).topk(k, dim=1).indices
        out.append(z[idx].mean(dim=1))
    return torch.cat(out).numpy()


def _standardise(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0)
    std[std == 0] = 1.0
    return (train_x - mean) / std, (test_x - mean) / std


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    y_mean = y.mean()
    gram = x.T @ x + alpha * np.eye(x.shape[1])
    w = np.linalg.solve(gram, x.T @ (y - y_mean))
    return w, y_mean


def ridge_photoz(
    train_x, train_z, test_x, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Ridge regression of z on standardised features; the penalty (alpha = a * n_train, a in
    RIDGE_ALPHAS) chosen by ``folds``-fold cross-validation of the squared error. Returns the
    predictions and the chosen alpha."""
    x, t = _standardise(np.asarray(train_x, float), np.asarray(test_x, float))
    z = np.asarray(train_z, float)
    n = len(x)
    if n < 2 * folds:
        raise ValueError(f"ridge probe needs at least {2 * folds} training galaxies, got {n}")
    fold = np.random.default_rng(seed).permutation(n) % folds
    errors = []
    for a in RIDGE_ALPHAS:
        sq = 0.0
        for f in range(folds):
            w, b = _ridge_fit(x[fold != f], z[fold != f], a * n)
            sq += float(((x[fold == f] @ w + b - z[fold == f]) ** 2).sum())
        errors.append(sq)
    alpha = float(RIDGE_ALPHAS[int(np.argmin(errors))] * n)
    w, b = _ridge_fit(x, z, alpha)
    return t @ w + b, alpha


def _embed(backbone, dataset, device, chosen, crop_size: int, batch_size: int = 256) -> np.ndarray:
    from ssl_photoz.learn import inference

    return inference.run_network(
        backbone, dataset, device, chosen, crop_size=crop_size, batch_size=batch_size
    ).numpy()


def calibrate_batch_norm(backbone, dataset, device, crop_size: int, batch_size: int = 64) -> None:
    """Running BN statistics of ``backbone`` as the cumulative average over ``dataset`` (centre
    crops, no labels, no weight changes)."""
    import torch

    from ssl_photoz.learn import augment
    from ssl_photoz.learn.runtime import to_device

    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    crop = augment.EvalTransform(crop_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    backbone.train()
    with torch.no_grad():
        for batch in loader:
            backbone(crop(to_device(batch["image"], device)))
    backbone.eval()


def run_probe(
    pretrained: Path,
    store_path: Path,
    out: Path,
    device: str = "cpu",
    precision: str = "fp32",
    *,
    k: int,
    batch_norm: str = "recalibrate",
    seed: int = 0,
) -> pd.DataFrame:
    """Probe the pretrained and the randomly initialised encoder; write the table to ``out``.

    ``batch_norm`` (``BATCH_NORM_MODES``) is applied to both encoders alike."""
    import torch

    from ssl_photoz.learn import data, models
    from ssl_photoz.learn import precision as precision_mod
    from ssl_photoz.learn.checkpoints import load_checkpoint

    if batch_norm not in BATCH_NORM_MODES:
        raise ValueError(f"probe batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
    state = load_checkpoint(pretrained)
    if state.get("kind") != "pretrain":
        raise ValueError(f"{pretrained}: not a pretraining checkpoint")
    model_cfg = state["config"]["model"]
    dev = torch.device(device)
    chosen = precision_mod.resolve(precision, dev, model_cfg)
    log.info("probe: %s", chosen.describe())
    store = data.open_store(store_path)
    train_idx = data.labeled_indices(store, "train")
    val_idx = data.labeled_indices(store, "val")
    train_set = data.CutoutDataset(store_path, train_idx, deredden=True)
    val_set = data.CutoutDataset(store_path, val_idx, deredden=True)
    z_train, z_val = store.z_spec[train_idx], store.z_spec[val_idx]

    def backbone():
        return models.backbone_from_config(model_cfg)

    encoders = {}
    net = backbone()
    net.load_state_dict(state["backbone"])
    encoders["pretrained"] = net.to(dev, memory_format=torch.channels_last)
    torch.manual_seed(seed)
    encoders["random init"] = backbone().to(dev, memory_format=torch.channels_last)
    crop = crop_size(model_cfg)
    for name, net in encoders.items():  # one batch-norm path for both encoders
        if batch_norm == "recalibrate":
            calibrate_batch_norm(net, train_set, dev, crop)
        net.eval()
        log.info("probe: %s encoder, batch-norm statistics %s", name, batch_norm)

    rows = []
    for name, net in encoders.items():
        f_train = _embed(net, train_set, dev, chosen, crop)
        f_val = _embed(net, val_set, dev, chosen, crop)
        z_knn = knn_cosine(f_train, z_train, f_val, k=k)
        z_lin, alpha = ridge_photoz(f_train, z_train, f_val, seed=seed)
        for probe, z_p, setting in (
            ("knn", z_knn, f"k={k}"),
            ("linear", z_lin, f"alpha={alpha:.3g}"),
        ):
            rows.append(
                {
                    "encoder": name,
                    "probe": probe,
                    "setting": setting,
                    "batch_norm": batch_norm,
                    "n_train": len(train_idx),
                    "n_val": len(val_idx),
                    "features": f_train.shape[1],
                    **{k2: v for k2, v in photoz_metrics(z_p, z_val).items() if k2 != "n"},
                }
            )
            log.info("probe %s / %s: sigma_MAD %.5f", name, probe, rows[-1]["sigma_mad"])
    table = pd.DataFrame(rows)
    with atomic_path(Path(out)) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return table
