"""Training: MoCo v2 pretraining, fine-tuning and supervised baselines, resumable and seeded.

Recipes (Hayat et al. 2021): pretraining on the unlabeled pool plus the training images (never the
validation images) with two augmented views per image (reddening, rotation, jitter-crop, noise);
fine-tuning from the pretrained backbone with the convolutional part's learning rate 10x smaller
than the head's (config section ``finetune``); supervised training from scratch with one learning
rate for every layer, as the authors' supervised baseline (section ``supervised``); 180-bin
classifier over 0 < z < 0.4, z_p = E(z) under the softmax. A single-process pretraining normalises
over ``pretrain.bn_splits`` sub-batches with the keys shuffled across them (``models.MoCo``), the
equivalent of DDP's shuffled BN.

Machine settings (device, workers, precision) are arguments, not science settings. The steps run
channels_last, in the precision that ``precision.resolve`` chooses for the machine (``auto``: bf16
autocast on a CPU only where bf16 is native and measured faster, else fp32; bf16 on a GPU that
supports it, else fp16 with a GradScaler). Each run logs its choice and why, and its summary
records it.

Resume. A checkpoint is written atomically after every epoch with the model, optimiser,
scheduler, scaler, MoCo queue (a buffer of the model), epoch, config and every random state.
Data order and augmentations are drawn from generators reseeded per epoch from (seed, epoch), so
a run killed after epoch e and resumed continues exactly as an uninterrupted run would.
A checkpoint also records the run's inputs (``run_inputs``): the config, the digest of the
training code (``codehash.code_digest("ssl_photoz.learn.train")``, the rule's ``code`` param), the
store's identity and, for pretraining, the channel statistics; for fine-tuning, the sha256 of
the pretrained model. Only a run with the same inputs resumes from it; any other starts afresh
and logs which input differs (Snakemake never deletes checkpoint.pt, which is no declared
output: a rerun after a change upstream would otherwise "resume" a finished run and keep its
old weights).

Loading. Every checkpoint is read with ``torch.load(weights_only=True)`` (``models.safe_load``):
what we save is plain data (dicts, lists, tensors, str/int/float/bool/None), and a file whose
pickle names any other global is refused, never run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ssl_photoz.core import codehash
from ssl_photoz.core.atomic import atomic_path, write_json
from ssl_photoz.core.config import crop_size
from ssl_photoz.core.provenance import file_sha256, stable_hash
from ssl_photoz.learn import augment, data, models
from ssl_photoz.learn import precision as precision_mod

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: the run's inputs (config, code, store, pretrained model)


# -- the machine --------------------------------------------------------------------------------
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    precision: precision_mod.Precision | None = None  # None: fp32

    def __post_init__(self):
        if self.precision is None:
            self.precision = precision_mod.Precision(
                "fp32", self.device.type, "fp32", "default of a Runtime built without one"
            )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(
    device: str = "auto", num_workers: int = 0, precision: str = "auto", probe: dict | None = None
) -> Runtime:
    """One process, or one rank of a torchrun launch (WORLD_SIZE > 1: gloo on CPU, NCCL on GPU).

    ``precision`` (auto | fp32 | bf16 | fp16) is resolved for the device; ``probe`` is the model
    section that ``auto`` times on a CPU with native bf16. Under torchrun rank 0 decides and the
    other ranks take its choice, so that all ranks compute alike."""
    precision_mod.check_choice(precision)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    chosen = [precision_mod.resolve(precision, dev, probe) if rank == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(chosen, src=0)
    return Runtime(dev, rank, world_size, num_workers, chosen[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (libraries may draw from the global RNG)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream): resumption replays it exactly."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0]))
    return gen


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """One of our checkpoints, read with ``torch.load(weights_only=True)``: plain data and
    tensors only; a file that needs any other global is refused (ValueError), never run."""
    return models.safe_load(path)


def plain(obj):
    """``obj`` with numpy scalars and arrays made Python numbers and lists, tuples lists, and
    every mapping a dict with string keys: data that ``weights_only`` loading accepts."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -- what a run is made of: a checkpoint resumes only a run with the same inputs -----------------
TRAINING_CODE = "ssl_photoz.learn.train"  # the entry module of the training rules' code param

INPUT_NAMES = {  # the inputs of a run's fingerprint, as the log names them
    "config": "config",
    "code": f"code ({TRAINING_CODE} and the modules it imports)",
    "store": "store (the cut-out store and its manifest)",
    "stats": "channel statistics",
    "pretrained": "pretrained model",
}


def store_digest(store_path: Path, manifest: Path | None = None) -> str:
    """The identity of a cut-out store, cheap whatever its size: sha256 over the manifest's bytes
    (when given), the bytes of every store file but the image chunks (the Zarr metadata, whose
    attributes ``gather`` rewrites with its provenance and time on every build of the store, and
    the 1-D arrays: objid, split, z_spec, fraction_rank, ok, ...) and the name and size of each
    image chunk file. The images themselves (up to hundreds of GB) are not read: a rebuilt store
    is one that ``gather`` wrote again."""
    store_path = Path(store_path)
    if not store_path.is_dir():
        raise FileNotFoundError(f"{store_path}: the cut-out store is missing")
    digest = hashlib.sha256()
    if manifest is not None:
        digest.update(b"manifest\0" + Path(manifest).read_bytes())
    for path in sorted(p for p in store_path.rglob("*") if p.is_file()):
        rel = path.relative_to(store_path).as_posix()
        digest.update(rel.encode() + b"\0")
        if rel.startswith("images/") and path.name != "zarr.json":
            digest.update(str(path.stat().st_size).encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def code_digest() -> str:
    """The digest of the training code, the same as the training rules' ``code`` param."""
    return codehash.code_digest(TRAINING_CODE)


def run_inputs(
    store_path: Path,
    manifest: Path | None = None,
    stats_path: Path | None = None,
    pretrained: Path | None = None,
) -> dict:
    """A run's inputs but its config (``EpochLoop`` adds its hash): the code digest, the store's
    identity and the digests of the channel statistics (pretraining) or of the pretrained model
    (fine-tuning)."""
    inputs = {"code": code_digest(), "store": store_digest(store_path, manifest)}
    if stats_path is not None:
        inputs["stats"] = file_sha256(stats_path)
    if pretrained is not None:
        inputs["pretrained"] = file_sha256(pretrained)
    return inputs


def _differences(saved: dict, now: dict) -> str:
    """Which inputs differ, e.g. "pretrained model differs (3f2a... there, 9c41... now)"."""
    keys = [k for k in INPUT_NAMES if saved.get(k) != now.get(k)]
    keys += sorted(
        k for k in set(saved) | set(now) if k not in INPUT_NAMES and saved.get(k) != now.get(k)
    )

    def short(value) -> str:
        return "none" if value is None else str(value)[:12]

    return "; ".join(
        f"{INPUT_NAMES.get(k, k)} differs ({short(saved.get(k))} there, {short(now.get(k))} now)"
        for k in keys
    )


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _cosine(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0):
    total = max(1, epochs * steps_per_epoch)
    warm = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class EpochLoop:
    """Shared skeleton: resume, per-epoch seeding, checkpoint after each epoch, final model."""

    def __init__(self, kind: str, cfg: dict, runtime: Runtime, work_dir: Path, inputs: dict):
        self.kind = kind
        self.cfg = plain(cfg)
        self.rt = runtime
        self.work_dir = Path(work_dir)
        self.checkpoint = self.work_dir / "checkpoint.pt"
        self.config_hash = stable_hash(self.cfg)
        # The run's fingerprint (run_inputs and the config): only a checkpoint of the same resumes.
        self.inputs = {"config": self.config_hash, **inputs}
        self.history: list[dict] = []

    def _afresh(self, why: str) -> int:
        log.warning("%s: %s; starting afresh", self.checkpoint, why)
        return 0

    def resume(self, model, optimizer, scheduler, scaler) -> int:
        """Load the last epoch's checkpoint if it is of a run with the same inputs (config, code,
        store, pretrained model); return the next epoch. Any other starts afresh, saying why."""
        if not self.checkpoint.exists():
            return 0
        try:
            state = load_checkpoint(self.checkpoint)
        except ValueError as exc:
            return self._afresh(f"not resumable ({exc})")
        if state.get("kind") != self.kind:
            return self._afresh(f"checkpoint of a {state.get('kind')} run, not {self.kind}")
        recorded = state.get("inputs")
        if state.get("version") != CHECKPOINT_VERSION or not isinstance(recorded, dict):
            return self._afresh(
                f"checkpoint of version {state.get('version')}, which does not record its "
                f"inputs (this is version {CHECKPOINT_VERSION})"
            )
        if recorded != self.inputs:
            return self._afresh(
                f"checkpoint of other inputs: {_differences(recorded, self.inputs)}"
            )
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and scaler.is_enabled():  # empty when saved by a disabled scaler
            scaler.load_state_dict(state["scaler"])
        saved = state.get("precision")
        if saved and saved != self.rt.precision.name:
            log.warning(
                "%s: saved in %s, resuming in %s (the run stays valid, not bit-identical)",
                self.checkpoint,
                saved,
                self.rt.precision.name,
            )
        self.history = state.get("history", [])
        log.info("%s: resuming after epoch %d", self.checkpoint, state["epoch"] + 1)
        return state["epoch"] + 1

    def save(self, epoch, model, optimizer, scheduler, scaler, extra=None) -> None:
        if not self.rt.is_main:
            return
        save_checkpoint(
            self.checkpoint,
            {
                "version": CHECKPOINT_VERSION,
                "kind": self.kind,
                "epoch": epoch,
                "config": self.cfg,
                "config_hash": self.config_hash,
                "inputs": self.inputs,
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": plain(self.history),
                "precision": self.rt.precision.name,
                **(extra or {}),
            },
        )


def _loader(
    dataset, batch_size, rt: Runtime, seed: int, epoch: int, shuffle: bool, drop_last: bool
):
    if rt.distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=rt.world_size, rank=rt.rank, shuffle=shuffle, seed=seed
        )
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=rt.num_workers,
            drop_last=drop_last,
        )
    return data.make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=rt.num_workers,
        seed=int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]),
        drop_last=drop_last,
    )


def _optimizer_step(loss, optimizer, scaler, scheduler) -> float:
    """One step: backward through the (possibly disabled) loss scaler, then the LR schedule."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


# -- pretraining -----------------------------------------------------------------------------------
def check_queue_fits_pool(queue_size: int, pool: int) -> None:
    """Refuse a MoCo queue that is not smaller than the pretraining pool.

    Each epoch enqueues one key per pool image, so a queue of K >= N keys (N images) holds keys of
    every image, and every query meets older keys of its own image among its negatives. Below N
    the chance is K^2 / (2 N^2) with shuffled epochs (K = N/2: 1 query in 8)."""
    if queue_size >= pool:
        raise ValueError(
            f"pretrain.queue_size {queue_size} is not smaller than the pretraining pool of "
            f"{pool} images (train + unlabeled with good cut-outs): every query would meet "
            f"older keys of its own image as negatives. Set pretrain.queue_size below {pool} "
            f"(at most about {pool // 2} keeps that to 1 query in 8)"
        )


def pretrain_bn_splits(cfg: dict, batch_size: int, runtime: Runtime) -> int:
    """Sub-batches of split BN: ``pretrain.bn_splits`` in one process, 1 under DDP (each rank is
    a sub-batch there, with the keys shuffled across ranks). The batch must divide evenly."""
    if runtime.distributed:
        return 1
    splits = int(cfg["bn_splits"])
    if batch_size % splits:
        raise ValueError(
            f"pretrain.bn_splits {splits} does not divide the batch of {batch_size} images "
            f"(pretrain.batch_size, or the pool when smaller): choose a divisor"
        )
    return splits


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


def _log_precision(what: str, runtime: Runtime) -> None:
    log.info("%s: %s", what, runtime.precision.describe())


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
    """MoCo v2 on the pretraining pool. ``max_epochs`` stops early (tests of resumption);
    ``manifest`` (the store's, from gather) is part of the store's identity (``run_inputs``)."""
    seed_everything(cfg["seed"])
    store = data.open_store(store_path)
    indices = data.pretrain_indices(store)
    dataset = data.CutoutDataset(store_path, indices, deredden=False)
    check_queue_fits_pool(cfg["queue_size"], len(dataset))
    _log_precision("pretrain", runtime)
    views = augment.MocoViews(
        data.load_stats(stats_path).to(runtime.device), size=crop_size(model_cfg)
    )
    effective_batch, batch_size = pretrain_batch(cfg, len(dataset), runtime)
    bn_splits = pretrain_bn_splits(cfg, batch_size, runtime)
    log.info(
        "pretrain: rank %d of %d (world size %d): %d images per process and step, "
        "effective batch %d, lr %g",
        runtime.rank,
        runtime.world_size,
        runtime.world_size,
        batch_size,
        effective_batch,
        cfg["lr"],
    )

    moco = models.build_moco(model_cfg, cfg, bn_splits=bn_splits)
    moco = moco.to(runtime.device, memory_format=torch.channels_last)
    model = moco
    if runtime.distributed:
        model = nn.parallel.DistributedDataParallel(moco)
    optimizer = torch.optim.SGD(
        moco.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"]
    )
    steps = max(1, len(dataset) // effective_batch)
    scheduler = _cosine(optimizer, cfg["epochs"], steps, cfg["warmup_epochs"])
    scaler = runtime.precision.grad_scaler()
    inputs = run_inputs(store_path, manifest, stats_path=stats_path)
    run_cfg = {"model": model_cfg, "pretrain": cfg}
    loop = EpochLoop("pretrain", run_cfg, runtime, out_path.parent, inputs)
    start = loop.resume(model, optimizer, scheduler, scaler)
    last = cfg["epochs"] if max_epochs is None else min(cfg["epochs"], max_epochs)
    for epoch in range(start, last):
        model.train()
        gen = epoch_generator(cfg["seed"], epoch, 1, runtime.device)
        loader = _loader(dataset, batch_size, runtime, cfg["seed"], epoch, True, True)
        losses, t0, seen = [], time.perf_counter(), 0
        for batch in loader:
            images = _to_device(batch["image"], runtime.device)
            im_q, im_k = views(images, gen)
            with runtime.precision.autocast():
                logits, labels = model(im_q, im_k, generator=gen)
                loss = models.info_nce(logits.float(), labels)
            losses.append(_optimizer_step(loss, optimizer, scaler, scheduler))
            seen += len(images)
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "images_per_s": seen * runtime.world_size / max(time.perf_counter() - t0, 1e-9),
        }
        loop.history.append(record)
        log.info(
            "pretrain epoch %d: loss %.4f, %.0f images/s",
            epoch,
            record["loss"],
            record["images_per_s"],
        )
        loop.save(epoch, model, optimizer, scheduler, scaler)
    summary = {
        "epochs_done": last,
        "history": loop.history,
        "n_images": len(dataset),
        "precision": runtime.precision.as_dict(),
        "recipe": {
            "optimizer": "SGD (momentum 0.9)",
            "lr": {"all": cfg["lr"]},
            "schedule": f"cosine per step, {cfg['warmup_epochs']} warm-up epoch(s)",
            "batch_size": batch_size,
            "world_size": runtime.world_size,
            "per_process_batch": batch_size,
            "effective_batch": effective_batch,
            "scaling": SCALING_RULE,
            "bn": (
                "shuffled BN across ranks"
                if runtime.distributed
                else f"split BN over {bn_splits} sub-batches, keys shuffled across them"
                if bn_splits > 1
                else "plain BN (no shuffle: one process)"
            ),
            "steps_per_epoch": steps,
            "steps_done": steps * last,
        },
    }
    if runtime.is_main and last == cfg["epochs"]:
        save_checkpoint(
            out_path,
            {
                "kind": "pretrain",
                "config": loop.cfg,
                "inputs": loop.inputs,
                "backbone": moco.backbone.state_dict(),
                "moco": moco.state_dict(),
                "history": plain(loop.history),
            },
        )
    return summary


# -- fine-tuning and supervised ------------------------------------------------------------------
MAX_VALIDATIONS = 25  # validation scores per classifier run (the last epoch always)


def classifier_epochs(cfg: dict, steps_per_epoch: int) -> int:
    """``cfg["epochs"]``, or more where that many epochs of ``steps_per_epoch`` would take fewer
    than ``cfg["min_steps"]`` optimiser steps (small label fractions)."""
    min_steps = cfg.get("min_steps")
    if not min_steps:
        return cfg["epochs"]
    return max(cfg["epochs"], math.ceil(min_steps / steps_per_epoch))


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
) -> dict:
    """Fine-tune (from ``pretrained``) or train from scratch (supervised) the redshift classifier
    on the training objects with ``fraction_rank < fraction``; validate on the val split.

    ``cfg`` is the run's recipe: the ``finetune`` section (head at ``lr``, convolutions at
    ``lr * backbone_lr_factor``) or the ``supervised`` one (every layer at ``lr``: the section
    has no ``backbone_lr_factor``, and one given is refused). ``manifest`` (the store's, from
    gather) is part of the store's identity (``run_inputs``)."""
    kind = "finetune" if pretrained is not None else "supervised"
    if kind == "finetune":
        backbone_lr_factor = cfg["backbone_lr_factor"]
    else:
        if "backbone_lr_factor" in cfg:
            raise ValueError(
                f"a supervised run trains every layer at one learning rate (the authors' "
                f"baseline); got backbone_lr_factor {cfg['backbone_lr_factor']}: give the "
                f"supervised section's lr alone"
            )
        backbone_lr_factor = 1.0
    seed_everything(seed)
    store = data.open_store(store_path)
    train_idx = data.labeled_indices(store, "train", fraction=fraction)
    val_idx = data.labeled_indices(store, "val")
    train_set = data.CutoutDataset(store_path, train_idx, deredden=True)
    val_set = data.CutoutDataset(store_path, val_idx, deredden=True)
    _log_precision(kind, runtime)
    backbone = models.backbone_from_config(model_cfg)
    if pretrained is not None:
        state = load_checkpoint(pretrained)
        if state.get("kind") != "pretrain":
            raise ValueError(f"{pretrained}: not a pretraining checkpoint")
        if state["config"]["model"] != plain(model_cfg):
            raise ValueError(
                f"{pretrained}: pretrained with model {state['config']['model']}, "
                f"but this run asks for {model_cfg}"
            )
        backbone.load_state_dict(state["backbone"])
    net = models.RedshiftClassifier(
        backbone, n_bins=cfg["n_bins"], z_min=cfg["z_min"], z_max=cfg["z_max"]
    ).to(runtime.device, memory_format=torch.channels_last)
    model = nn.parallel.DistributedDataParallel(net) if runtime.distributed else net
    optimizer = torch.optim.Adam(
        net.parameter_groups(cfg["lr"], backbone_lr_factor=backbone_lr_factor),
        weight_decay=cfg["weight_decay"],
    )
    batch_size = min(cfg["batch_size"], len(train_set))
    steps = max(1, len(train_set) // (batch_size * runtime.world_size))
    epochs = classifier_epochs(cfg, steps)
    if epochs != cfg["epochs"]:
        log.info(
            "%s f=%.4g: %d steps per epoch, so %d epochs (not %s) reach min_steps %d",
            kind, fraction, steps, epochs, cfg["epochs"], cfg["min_steps"],
        )  # fmt: skip
    scheduler = _cosine(optimizer, epochs, steps)
    scaler = runtime.precision.grad_scaler()
    run_cfg = {
        "model": model_cfg,
        kind: cfg,  # the recipe, under its config section's name
        "fraction": fraction,
        "seed": seed,
        "kind": kind,
        "pretrained": str(pretrained) if pretrained else None,
    }
    inputs = run_inputs(store_path, manifest, pretrained=pretrained)
    loop = EpochLoop(kind, run_cfg, runtime, out_path.parent, inputs)
    start = loop.resume(model, optimizer, scheduler, scaler)
    train_aug = augment.FinetuneAugment(size=crop_size(model_cfg))
    # The validation curve is a diagnostic (the last epoch's weights are kept, never the best
    # on validation): scored at most MAX_VALIDATIONS times, so a small fraction's many short
    # epochs are not dominated by scoring the whole validation set.
    eval_every = math.ceil(epochs / MAX_VALIDATIONS)
    last = epochs if max_epochs is None else min(epochs, max_epochs)
    for epoch in range(start, last):
        model.train()
        gen = epoch_generator(seed, epoch, 2, runtime.device)
        loader = _loader(train_set, batch_size, runtime, seed, epoch, True, True)
        losses = []
        for batch in loader:
            images = train_aug(_to_device(batch["image"], runtime.device), gen)
            target = net.z_to_bin(batch["z"].to(runtime.device))
            with runtime.precision.autocast():
                loss = nn.functional.cross_entropy(model(images).float(), target)
            losses.append(_optimizer_step(loss, optimizer, scaler, scheduler))
        record = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}
        scored = ""
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            record.update(
                evaluate_classifier(
                    net,
                    val_set,
                    runtime,
                    batch_size=cfg["batch_size"],
                    crop_size=crop_size(model_cfg),
                )
            )
            scored = f", val sigma_MAD {record['sigma_mad']:.5f}, eta {record['eta_percent']:.2f} %"
        loop.history.append(record)
        log.info(
            "%s f=%.4g seed=%d epoch %d: loss %.4f%s",
            kind, fraction, seed, epoch, record["loss"], scored,
        )  # fmt: skip
        loop.save(epoch, model, optimizer, scheduler, scaler)
    summary = {
        "kind": kind,
        "epochs_done": last,
        "history": loop.history,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "precision": runtime.precision.as_dict(),
        "recipe": {
            "optimizer": "Adam",
            "lr": {g["name"]: g["initial_lr"] for g in optimizer.param_groups},
            "schedule": "cosine per step, no warm-up",
            "batch_size": batch_size,
            "world_size": runtime.world_size,
            "steps_per_epoch": steps,
            "steps_done": steps * last,
        },
    }
    if runtime.is_main and last == epochs:
        save_checkpoint(
            out_path,
            {
                "kind": kind,
                "config": loop.cfg,
                "inputs": loop.inputs,
                "model": net.state_dict(),
                "history": plain(loop.history),
            },
        )
    return summary


@torch.no_grad()
def evaluate_classifier(
    net, dataset, runtime: Runtime, batch_size: int = 256, *, crop_size: int
) -> dict:
    """sigma_MAD, eta and bias of z_p = E(z) on a dataset (centre crops, no augmentation)."""
    from ssl_photoz.evaluate.metrics import photoz_metrics

    net.eval()
    crop = augment.EvalTransform(crop_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    preds, truth = [], []
    for batch in loader:
        images = crop(_to_device(batch["image"], runtime.device))
        with runtime.precision.autocast():
            logits = net(images).float()
        preds.append(net.expected_z(logits).cpu())
        truth.append(batch["z"])
    z_p = torch.cat(preds).numpy()
    z_s = torch.cat(truth).numpy()
    return {f"val_{k}" if k == "n" else k: v for k, v in photoz_metrics(z_p, z_s).items()}


def write_summary(path: Path, summary: dict) -> None:
    write_json(path, summary)
