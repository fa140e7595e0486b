"""The skeleton both trainers share: the LR schedule, one optimiser step, and ``EpochLoop``
(resume from the last epoch's checkpoint of a run with the same inputs, checkpoint after each
epoch).

Resume. A checkpoint is written atomically after every epoch with the model, optimiser,
scheduler, scaler, every buffer of the model (MoCo's queue, BYOL's target network), epoch,
config and history. Data order and augmentations are drawn from generators reseeded per epoch
from (seed, epoch), so a run killed after epoch e and resumed continues exactly as an
uninterrupted run would. Only a run with the same inputs (``checkpoints.run_inputs`` and the
config) resumes; any other starts afresh and logs which input differs (Snakemake never deletes
checkpoint.pt, which is no declared output: a rerun after a change upstream would otherwise
"resume" a finished run and keep its old weights).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from ssl_photoz.core.provenance import stable_hash
from ssl_photoz.learn.checkpoints import (
    CHECKPOINT_VERSION,
    differences,
    load_checkpoint,
    plain,
    save_checkpoint,
)
from ssl_photoz.learn.runtime import Runtime, unwrap

log = logging.getLogger(__name__)


def cosine_schedule(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0):
    """Cosine decay per step to 0 over the run, after a linear warm-up of ``warmup_epochs``."""
    total = max(1, epochs * steps_per_epoch)
    warm = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(loss, optimizer, scaler, scheduler) -> float:
    """One step: backward through the (possibly disabled) loss scaler, then the LR schedule."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return float(loss.detach())


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

    def _resumable(self) -> dict | int:
        """The checkpoint's state, or 0 (start afresh, having said why)."""
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
            return self._afresh(f"checkpoint of other inputs: {differences(recorded, self.inputs)}")
        return state

    def resume(self, model, optimizer, scheduler, scaler) -> int:
        """Load the last epoch's checkpoint if it is of a run with the same inputs (config, code,
        store, pretrained model); return the next epoch. Any other starts afresh, saying why."""
        if not self.checkpoint.exists():
            return 0
        state = self._resumable()
        if not isinstance(state, dict):
            return state
        unwrap(model).load_state_dict(state["model"])
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
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "history": plain(self.history),
                "precision": self.rt.precision.name,
                **(extra or {}),
            },
        )

    def save_final(self, path: Path, weights: dict) -> None:
        """The finished run's model file: kind, config, inputs, history and ``weights``."""
        if not self.rt.is_main:
            return
        save_checkpoint(
            path,
            {
                "kind": self.kind,
                "config": self.cfg,
                "inputs": self.inputs,
                **weights,
                "history": plain(self.history),
            },
        )
