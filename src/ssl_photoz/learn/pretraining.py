"""Self-supervised pretraining on the pretraining pool, by the method of ``pretrain.method``.

Recipe (Hayat et al. 2021): the unlabeled pool plus the training images (never the validation
images), two augmented views per image (reddening, rotation, jitter-crop, noise), SGD with
momentum 0.9 and a per-step cosine schedule after ``pretrain.warmup_epochs``. The method
(``ssl_photoz.learn.ssl``: MoCo v2, the paper's, by default; BYOL) builds the network, turns the
two views into the loss and makes its per-step update; everything else is here: data, views,
batch sharing under DDP (``SCALING_RULE``), optimiser, resumption, the summary and the model
file, which holds the backbone (``backbone``: what fine-tuning and the probe load) and the whole
network under the method's ``checkpoint_key`` (``moco``, ``byol``: what the embeddings load).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssl_photoz.core.config import crop_size
from ssl_photoz.learn import augment, data, epochs, ssl
from ssl_photoz.learn.checkpoints import run_inputs
from ssl_photoz.learn.runtime import (
    Runtime,
    epoch_generator,
    epoch_loader,
    seed_everything,
    to_device,
    wrap,
)

log = logging.getLogger(__name__)

SCALING_RULE = (
    "per-process batch = pretrain.batch_size / world size: the effective batch and the lr are "
    "the configured ones whatever the number of processes"
)


def pretrain_batch(cfg: dict, pool: int, runtime: Runtime) -> tuple[int, int]:
    """(effective batch, per-process batch) under SCALING_RULE. The effective batch is
    ``pretrain.batch_size`` (or the pool when smaller); each of the world size's processes takes
    an equal share of it, so changing the number of processes changes neither the batch nor
    the learning rate (``pretrain.lr``) of the recipe."""
    effective = min(cfg["batch_size"], pool)
    if effective % runtime.world_size:
        raise ValueError(
            f"the pretraining batch of {effective} images (pretrain.batch_size, or the pool when "
            f"smaller) does not divide among {runtime.world_size} processes: choose a number "
            f"of processes (resource ddp_processes) that divides it"
        )
    return effective, effective // runtime.world_size


@dataclass
class _Run:
    """One pretraining run's pieces, as built before the first epoch."""

    method: ssl.Method
    cfg: dict
    runtime: Runtime
    dataset: data.CutoutDataset
    views: augment.MocoViews
    effective_batch: int
    batch_size: int
    bn_splits: int
    network: nn.Module = None  # the method's network (unwrapped)
    model: nn.Module = None  # the network, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    scaler: object = None
    steps: int = 0  # optimiser steps per epoch

    def build(self, model_cfg: dict) -> None:
        cfg, rt = self.cfg, self.runtime
        network = self.method.build(model_cfg, cfg, bn_splits=self.bn_splits)
        self.network = network.to(rt.device, memory_format=torch.channels_last)
        self.model = wrap(self.network, rt)
        self.optimizer = torch.optim.SGD(
            self.network.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"]
        )
        self.steps = max(1, len(self.dataset) // self.effective_batch)
        self.scheduler = epochs.cosine_schedule(
            self.optimizer, cfg["epochs"], self.steps, cfg["warmup_epochs"]
        )
        self.scaler = rt.precision.grad_scaler()

    def train_epoch(self, epoch: int) -> dict:
        """One epoch's steps; its record (mean loss, images per second)."""
        cfg, rt = self.cfg, self.runtime
        self.model.train()
        gen = epoch_generator(cfg["seed"], epoch, 1, rt.device)
        loader = epoch_loader(self.dataset, self.batch_size, rt, cfg["seed"], epoch, True, True)
        losses, t0, seen = [], time.perf_counter(), 0
        total = self.steps * cfg["epochs"]
        for batch in loader:
            images = to_device(batch["image"], rt.device)
            view_a, view_b = self.views(images, gen)
            with rt.precision.autocast():
                loss = self.method.training_loss(self.model, view_a, view_b, gen)
            losses.append(epochs.optimizer_step(loss, self.optimizer, self.scaler, self.scheduler))
            self.method.after_step(self.network, epoch * self.steps + len(losses) - 1, total, cfg)
            seen += len(images)
        return {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "images_per_s": seen * rt.world_size / max(time.perf_counter() - t0, 1e-9),
        }

    def recipe(self, last: int) -> dict:
        cfg, rt = self.cfg, self.runtime
        return {
            "method": self.method.name,
            "method_title": self.method.title,
            "method_settings": [list(row) for row in self.method.settings(cfg)],
            "optimizer": "SGD (momentum 0.9)",
            "lr": {"all": cfg["lr"]},
            "schedule": f"cosine per step, {cfg['warmup_epochs']} warm-up epoch(s)",
            "batch_size": self.batch_size,
            "world_size": rt.world_size,
            "per_process_batch": self.batch_size,
            "effective_batch": self.effective_batch,
            "scaling": SCALING_RULE,
            "bn": self.method.describe_bn(self.bn_splits, rt),
            "steps_per_epoch": self.steps,
            "steps_done": self.steps * last,
        }


def _prepare(model_cfg: dict, cfg: dict, store_path: Path, stats_path: Path, rt: Runtime) -> _Run:
    """The pool, the views and the batch of a run, its settings checked; the network built."""
    method = ssl.get(cfg["method"])
    store = data.open_store(store_path)
    dataset = data.CutoutDataset(store_path, data.pretrain_indices(store), deredden=False)
    method.check_pool(cfg, len(dataset))
    log.info("pretrain: %s", rt.precision.describe())
    views = augment.MocoViews(data.load_stats(stats_path).to(rt.device), size=crop_size(model_cfg))
    effective_batch, batch_size = pretrain_batch(cfg, len(dataset), rt)
    bn_splits = method.bn_splits(cfg, batch_size, rt)
    log.info(
        "pretrain: rank %d of %d (world size %d): %d images per process and step, "
        "effective batch %d, lr %g, method %s",
        rt.rank, rt.world_size, rt.world_size, batch_size, effective_batch, cfg["lr"],
        method.title,
    )  # fmt: skip
    run = _Run(method, cfg, rt, dataset, views, effective_batch, batch_size, bn_splits)
    run.build(model_cfg)
    return run


def pretrain(
    model_cfg: dict,
    cfg: dict,
    store_path: Path,
    stats_path: Path,
    out_path: Path,
    runtime: Runtime,
    max_epochs: int | None = None,
    manifest: Path | None = None,
) -> dict:
    """Pretraining by ``cfg["method"]`` on the pretraining pool. ``max_epochs`` stops early
    (tests of resumption); ``manifest`` (the store's, from gather) is part of the store's
    identity (``run_inputs``)."""
    seed_everything(cfg["seed"])
    run = _prepare(model_cfg, cfg, store_path, stats_path, runtime)
    inputs = run_inputs(store_path, manifest, stats_path=stats_path)
    loop = epochs.EpochLoop(
        "pretrain", {"model": model_cfg, "pretrain": cfg}, runtime, out_path.parent, inputs
    )
    start = loop.resume(run.model, run.optimizer, run.scheduler, run.scaler)
    last = cfg["epochs"] if max_epochs is None else min(cfg["epochs"], max_epochs)
    for epoch in range(start, last):
        record = run.train_epoch(epoch)
        loop.history.append(record)
        log.info(
            "pretrain epoch %d: loss %.4f, %.0f images/s",
            epoch,
            record["loss"],
            record["images_per_s"],
        )
        loop.save(epoch, run.model, run.optimizer, run.scheduler, run.scaler)
    if last == cfg["epochs"]:
        loop.save_final(
            out_path,
            {
                "backbone": run.method.backbone(run.network).state_dict(),
                run.method.checkpoint_key: run.network.state_dict(),
            },
        )
    return {
        "epochs_done": last,
        "history": loop.history,
        "n_images": len(run.dataset),
        "precision": runtime.precision.as_dict(),
        "recipe": run.recipe(last),
    }
