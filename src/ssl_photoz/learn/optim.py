"""The classifiers' optimiser recipes (config key ``optimizer`` of sections finetune and
supervised) and their per-step learning-rate schedules, phase by phase.

- ``adam``: Adam, cosine decay per step to 0 over each phase (this pipeline's recipe; Hayat et
  al. 2021 name no optimiser);
- ``sgd``: SGD with momentum (section key ``sgd``: momentum, milestones, gamma), the rate
  multiplied by ``gamma`` at each milestone. The defaults are the authors' released training
  (github.com/mahayat/ssl-sky-surveys, train.py with config/photoz.yaml: momentum 0.9, lr 0.004,
  MultiStepLR at epochs 60 and 90 of 100, gamma 0.1); the milestones are given as fractions of
  the run's epochs (0.6, 0.9), so they scale with the configured epochs.

A run of phases (LP-FT: the head alone, then every layer) restarts the schedule at each phase's
first step.
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adam", "sgd")


def build_optimizer(groups: list[dict], cfg: dict) -> torch.optim.Optimizer:
    name = cfg["optimizer"]
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=cfg["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(
            groups, momentum=cfg["sgd"]["momentum"], weight_decay=cfg["weight_decay"]
        )
    raise ValueError(f"optimizer {name!r}: not one of {OPTIMIZERS}")


def phase_factor(cfg: dict, phase_starts: list[int], total: int):
    """The learning-rate factor of each step: the optimiser's schedule within the phase that
    the step is in (phases begin at ``phase_starts``, the last ends at ``total``)."""
    bounds = sorted(set(phase_starts)) + [total]
    name = cfg["optimizer"]
    sgd = cfg["sgd"] if name == "sgd" else None  # an arm's recipe holds it for SGD only

    def factor(step: int) -> float:
        start, end = 0, total
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if a <= step < b:
                start, end = a, b
        progress = (step - start) / max(1, end - start)
        if name == "sgd":
            passed = sum(progress >= m for m in sgd["milestones"])
            return sgd["gamma"] ** passed
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def schedule(optimizer, cfg: dict, steps_per_epoch: int, n_epochs: int, head_epochs: int = 0):
    """The run's LambdaLR: one phase, or two where the first ``head_epochs`` (< n_epochs) train
    the head alone."""
    starts = [0] if head_epochs in (0, n_epochs) else [0, head_epochs * steps_per_epoch]
    factor = phase_factor(cfg, starts, max(1, n_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def describe(cfg: dict) -> dict:
    """The optimiser and schedule as the training summary records them."""
    if cfg["optimizer"] == "sgd":
        sgd = cfg["sgd"]
        return {
            "optimizer": f"SGD (momentum {sgd['momentum']})",
            "schedule": f"x{sgd['gamma']} at {list(sgd['milestones'])} of each phase's steps",
        }
    return {"optimizer": "Adam", "schedule": "cosine per step over each phase, no warm-up"}
