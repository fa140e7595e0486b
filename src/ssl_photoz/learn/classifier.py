"""Training the redshift classifier: fine-tuning from a pretrained backbone, or from scratch.

Recipes: fine-tuning from the pretrained backbone with the convolutional part's learning rate
10x smaller than the head's (Hayat et al. 2021; config section ``finetune``), by one of the arms
of ``ssl_photoz.core.arms`` (full, head first then full, frozen backbone); supervised training
from scratch with one learning rate for every layer, as the authors' supervised baseline
(section ``supervised``). The optimiser and its per-step schedule are each section's
``optimizer`` (``ssl_photoz.learn.optim``: Adam with cosine decay, or SGD with steps at the
authors' released settings). 180-bin classifier over 0 < z < 0.4, z_p = E(z) under the softmax.
The validation curve is a diagnostic: the last epoch's weights are kept, never the best on
validation. With ``arm_selection.holdout`` > 0 the held-out slice of the training labels
(``ssl_photoz.core.holdout``) is left out of training and scored at the end, for choosing the
headline arm.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_photoz.core import arms, holdout
from ssl_photoz.core.config import crop_size
from ssl_photoz.learn import augment, data, epochs, inference, models, optim
from ssl_photoz.learn.checkpoints import load_checkpoint, plain, run_inputs
from ssl_photoz.learn.runtime import (
    Runtime,
    epoch_generator,
    epoch_loader,
    seed_everything,
    to_device,
    wrap,
)

log = logging.getLogger(__name__)

MAX_VALIDATIONS = 25  # validation scores per classifier run (the last epoch always)


def classifier_epochs(cfg: dict, steps_per_epoch: int) -> int:
    """``cfg["epochs"]``, or more where that many epochs of ``steps_per_epoch`` would take fewer
    than ``cfg["min_steps"]`` optimiser steps (small label fractions)."""
    min_steps = cfg.get("min_steps")
    if not min_steps:
        return cfg["epochs"]
    return max(cfg["epochs"], math.ceil(min_steps / steps_per_epoch))


def backbone_lr_factor(cfg: dict, kind: str) -> float:
    """The convolutions' rate relative to the head's: the finetune section's factor; 1 for a
    supervised run, whose section has none (one given is refused)."""
    if kind == "finetune":
        return cfg["backbone_lr_factor"]
    if "backbone_lr_factor" in cfg:
        raise ValueError(
            f"a supervised run trains every layer at one learning rate (the authors' "
            f"baseline); got backbone_lr_factor {cfg['backbone_lr_factor']}: give the "
            f"supervised section's lr alone"
        )
    return 1.0


def pretrained_backbone(model_cfg: dict, pretrained: Path | None) -> nn.Module:
    """The backbone of ``model_cfg``: random, or with the weights of a pretraining checkpoint
    (its ``backbone``, the encoder its method gives fine-tuning) of the same model section."""
    backbone = models.backbone_from_config(model_cfg)
    if pretrained is None:
        return backbone
    state = load_checkpoint(pretrained)
    if state.get("kind") != "pretrain":
        raise ValueError(f"{pretrained}: not a pretraining checkpoint")
    if state["config"]["model"] != plain(model_cfg):
        raise ValueError(
            f"{pretrained}: pretrained with model {state['config']['model']}, "
            f"but this run asks for {model_cfg}"
        )
    backbone.load_state_dict(state["backbone"])
    return backbone


@dataclass
class _Run:
    """One classifier run's pieces, as built before the first epoch."""

    kind: str
    cfg: dict
    runtime: Runtime
    train_set: data.CutoutDataset
    val_set: data.CutoutDataset
    net: models.RedshiftClassifier
    crop: int
    model: nn.Module = None
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    scaler: object = None
    batch_size: int = 0
    steps: int = 0  # optimiser steps per epoch
    n_epochs: int = 0
    head_epochs: int = 0  # the first epochs, backbone frozen (the arm's head phase)
    frozen: bool = False
    heldout_set: data.CutoutDataset | None = None

    def build(self, lr_factor: float, fraction: float) -> None:
        cfg, rt = self.cfg, self.runtime
        self.optimizer = optim.build_optimizer(
            self.net.parameter_groups(cfg["lr"], backbone_lr_factor=lr_factor), cfg
        )
        self.batch_size = min(cfg["batch_size"], len(self.train_set))
        self.steps = max(1, len(self.train_set) // (self.batch_size * rt.world_size))
        self.n_epochs = classifier_epochs(cfg, self.steps)
        if self.n_epochs != cfg["epochs"]:
            log.info(
                "%s f=%.4g: %d steps per epoch, so %d epochs (not %s) reach min_steps %d",
                self.kind, fraction, self.steps, self.n_epochs, cfg["epochs"], cfg["min_steps"],
            )  # fmt: skip
        self.head_epochs = arms.frozen_epochs(cfg, self.n_epochs)
        self.scheduler = optim.schedule(
            self.optimizer, cfg, self.steps, self.n_epochs, self.head_epochs
        )
        self.scaler = rt.precision.grad_scaler()
        self.set_phase(0)

    def set_phase(self, epoch: int) -> None:
        """Freeze the backbone (no gradients; batch norm kept in eval mode by ``train_epoch``)
        in the epochs of the head phase, unfreeze it after; re-wrap for DDP on a change, whose
        reducer knows only the parameters that needed gradients when it was made."""
        frozen = epoch < self.head_epochs
        if self.model is not None and frozen == self.frozen:
            return
        self.frozen = frozen
        self.net.backbone.requires_grad_(not frozen)
        self.model = wrap(self.net, self.runtime)

    def train_epoch(self, epoch: int, seed: int, train_aug) -> dict:
        rt = self.runtime
        self.set_phase(epoch)
        self.model.train()
        if self.frozen:  # a frozen backbone keeps its batch-norm statistics too
            self.net.backbone.eval()
        gen = epoch_generator(seed, epoch, 2, rt.device)
        loader = epoch_loader(self.train_set, self.batch_size, rt, seed, epoch, True, True)
        losses = []
        for batch in loader:
            images = train_aug(to_device(batch["image"], rt.device), gen)
            target = self.net.z_to_bin(batch["z"].to(rt.device))
            with rt.precision.autocast():
                loss = nn.functional.cross_entropy(self.model(images).float(), target)
            losses.append(epochs.optimizer_step(loss, self.optimizer, self.scaler, self.scheduler))
        return {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}

    def recipe(self, last: int) -> dict:
        return {
            **optim.describe(self.cfg),
            "arm": self.cfg.get("arm"),
            "head_epochs": self.head_epochs,
            "lr": {g["name"]: g["initial_lr"] for g in self.optimizer.param_groups},
            "batch_size": self.batch_size,
            "world_size": self.runtime.world_size,
            "steps_per_epoch": self.steps,
            "steps_done": self.steps * last,
        }


def _split_heldout(store, train_idx: np.ndarray, heldout: float):
    """The training rows without the arm-selection slice, and the slice's rows (None at 0)."""
    if not heldout:
        return train_idx, None
    mask = holdout.in_slice(store.objid[train_idx], heldout)
    if mask.all() or not mask.any():
        raise ValueError(
            f"arm_selection.holdout {heldout}: leaves {int((~mask).sum())} training and "
            f"{int(mask.sum())} held-out labels of {len(train_idx)}; both need some"
        )
    return train_idx[~mask], train_idx[mask]


def _prepare(model_cfg, cfg, store_path, runtime, fraction, pretrained, heldout, seed) -> _Run:
    kind = "finetune" if pretrained is not None else "supervised"
    lr_factor = backbone_lr_factor(cfg, kind)
    store = data.open_store(store_path)
    train_idx = data.labeled_indices(store, "train", fraction=fraction, seed=seed)
    train_idx, heldout_idx = _split_heldout(store, train_idx, heldout)
    val_idx = data.labeled_indices(store, "val")
    train_set = data.CutoutDataset(store_path, train_idx, deredden=True)
    val_set = data.CutoutDataset(store_path, val_idx, deredden=True)
    log.info("%s: %s", kind, runtime.precision.describe())
    net = models.RedshiftClassifier(
        pretrained_backbone(model_cfg, pretrained),
        n_bins=cfg["n_bins"],
        z_min=cfg["z_min"],
        z_max=cfg["z_max"],
        hidden=arms.head_hidden(cfg),
    ).to(runtime.device, memory_format=torch.channels_last)
    run = _Run(kind, cfg, runtime, train_set, val_set, net, crop_size(model_cfg))
    if heldout_idx is not None:
        run.heldout_set = data.CutoutDataset(store_path, heldout_idx, deredden=True)
    run.build(lr_factor, fraction)
    return run


def _train_epochs(run: _Run, loop, start: int, last: int, fraction: float, seed: int) -> None:
    cfg, runtime, kind = run.cfg, run.runtime, run.kind
    train_aug = augment.FinetuneAugment(size=run.crop)
    # Scored at most MAX_VALIDATIONS times, so that a small fraction's many short epochs are not
    # dominated by scoring the whole validation set.
    eval_every = math.ceil(run.n_epochs / MAX_VALIDATIONS)
    for epoch in range(start, last):
        record = run.train_epoch(epoch, seed, train_aug)
        scored = ""
        if (epoch + 1) % eval_every == 0 or epoch + 1 == run.n_epochs:
            scores = evaluate_classifier(
                run.net, run.val_set, runtime, batch_size=cfg["batch_size"], crop_size=run.crop
            )
            record.update(scores)
            scored = f", val sigma_MAD {record['sigma_mad']:.5f}, eta {record['eta_percent']:.2f} %"
        loop.history.append(record)
        log.info(
            "%s f=%.4g seed=%d epoch %d: loss %.4f%s",
            kind, fraction, seed, epoch, record["loss"], scored,
        )  # fmt: skip
        loop.save(epoch, run.model, run.optimizer, run.scheduler, run.scaler)


def train_classifier(
    model_cfg: dict,
    cfg: dict,
    store_path: Path,
    out_path: Path,
    runtime: Runtime,
    fraction: float,
    seed: int,
    pretrained: Path | None = None,
    max_epochs: int | None = None,
    manifest: Path | None = None,
    heldout: float = 0.0,
) -> dict:
    """Fine-tune (from ``pretrained``) or train from scratch (supervised) the redshift classifier
    on the training objects with ``fraction_rank < fraction``; validate on the val split.

    ``cfg`` is the run's recipe: a fine-tuning arm's (``arms.recipe`` of the ``finetune``
    section: head at ``lr``, convolutions at ``lr * backbone_lr_factor``) or the ``supervised``
    section (every layer at ``lr``: the section has no ``backbone_lr_factor``, and one given is
    refused). ``heldout`` (``arm_selection.holdout``): the fraction of the training labels left
    out and scored at the end (``heldout`` in the summary). ``manifest`` (the store's, from
    gather) is part of the store's identity (``run_inputs``)."""
    seed_everything(seed)
    run = _prepare(model_cfg, cfg, store_path, runtime, fraction, pretrained, heldout, seed)
    kind = run.kind
    run_cfg = {
        "model": model_cfg,
        kind: cfg,  # the recipe, under its config section's name
        "fraction": fraction,
        "seed": seed,
        "kind": kind,
        "pretrained": str(pretrained) if pretrained else None,
        "heldout": heldout,
    }
    inputs = run_inputs(store_path, manifest, pretrained=pretrained)
    loop = epochs.EpochLoop(kind, run_cfg, runtime, out_path.parent, inputs)
    start = loop.resume(run.model, run.optimizer, run.scheduler, run.scaler)
    last = run.n_epochs if max_epochs is None else min(run.n_epochs, max_epochs)
    _train_epochs(run, loop, start, last, fraction, seed)
    summary = {
        "kind": kind,
        "arm": cfg.get("arm"),
        "fraction": fraction,
        "seed": seed,
        "epochs_done": last,
        "history": loop.history,
        "n_train": len(run.train_set),
        "n_val": len(run.val_set),
        "precision": runtime.precision.as_dict(),
        "recipe": run.recipe(last),
    }
    if last == run.n_epochs:
        loop.save_final(out_path, {"model": run.net.state_dict(), "head_hidden": run.net.hidden})
        if run.heldout_set is not None:  # the arm-selection score: training labels, not val
            summary["heldout"] = evaluate_classifier(
                run.net, run.heldout_set, runtime, cfg["batch_size"], crop_size=run.crop
            )
    return summary


def evaluate_classifier(
    net, dataset, runtime: Runtime, batch_size: int = 256, *, crop_size: int
) -> dict:
    """sigma_MAD, eta and bias of z_p = E(z) on a dataset (centre crops, no augmentation)."""
    from ssl_photoz.core.metrics import photoz_metrics

    preds, truth = [], []
    for batch, z_p in inference.eval_batches(
        net,
        dataset,
        runtime.device,
        runtime.precision,
        crop_size=crop_size,
        batch_size=batch_size,
        head=net.expected_z,
    ):
        preds.append(z_p.cpu())
        truth.append(batch["z"])
    z_p = torch.cat(preds).numpy()
    z_s = torch.cat(truth).numpy()
    return {f"val_{k}" if k == "n" else k: v for k, v in photoz_metrics(z_p, z_s).items()}
