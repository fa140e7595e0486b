"""BYOL (Grill et al. 2020, "Bootstrap your own latent"): no negatives, an EMA target network.

The online network is the backbone, a projector MLP (Linear, BN, ReLU, Linear to
``pretrain.dim``) and a predictor MLP of the same shape; the target network is a copy of the
online backbone and projector whose weights are an exponential moving average of the online
ones, never trained by the gradient. Each view's prediction regresses the target's projection of
the other view: the loss is the normalised MSE 2 - 2 cos(p, z'), symmetrised over the two views.
After each optimiser step the target moves towards the online network with the coefficient
tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 at step k of K (the paper's schedule, from
``tau_base`` up to 1 at the end of the run). There are no negatives, so no queue and nothing to
check against the size of the pretraining pool; the batch statistics of a plain BN leak nothing
that the loss could exploit (no negatives to tell apart), so BN is plain in one process and per
rank under DDP.

Settings: ``pretrain.dim`` (the projection size; the paper's 256) and the section
``pretrain.byol`` (``tau_base``, the paper's 0.996; ``projector_hidden`` and
``predictor_hidden``, the paper's 4096). The optimiser and learning-rate schedule are the shared
pretraining loop's (SGD with momentum, cosine), not the paper's LARS.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ssl_photoz.learn.models import backbone_from_config
from ssl_photoz.learn.ssl.method import Method


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 2 - 2 cos(prediction, target) over the batch (in fp32; no gradient to target)."""
    p = F.normalize(prediction.float(), dim=-1)
    z = F.normalize(target.detach().float(), dim=-1)
    return (2.0 - 2.0 * (p * z).sum(dim=-1)).mean()


def target_tau(tau_base: float, step: int, total_steps: int) -> float:
    """The EMA coefficient after step ``step`` of ``total_steps`` (cosine from tau_base to 1)."""
    progress = min(step, total_steps) / max(1, total_steps)
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """BYOL's projector and predictor: Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


class BYOL(nn.Module):
    """Online encoder + projector + predictor; target encoder + projector, an EMA of the online
    ones. ``online_encoder`` is the backbone that fine-tuning loads."""

    def __init__(
        self,
        backbone_fn: Callable[[], nn.Module],
        dim: int = 256,
        projector_hidden: int = 4096,
        predictor_hidden: int = 4096,
    ):
        super().__init__()
        self.online_encoder = backbone_fn()
        self.online_projector = mlp(self.online_encoder.feature_dim, projector_hidden, dim)
        self.predictor = mlp(dim, predictor_hidden, dim)
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in self._target_params():
            p.requires_grad_(False)

    def _online_params(self) -> list[torch.Tensor]:
        return [*self.online_encoder.parameters(), *self.online_projector.parameters()]

    def _target_params(self) -> list[torch.Tensor]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- tau * target + (1 - tau) * online, parameters only (BN statistics stay
        per network, as MoCo's momentum update does)."""
        torch._foreach_lerp_(self._target_params(), self._online_params(), 1.0 - tau)

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(prediction of a, prediction of b, target projection of a, of b)."""
        views = (view_a, view_b)
        # Each view in its own pass, as in the reference: BN statistics are per view.
        p_a, p_b = (self.predictor(self.online_projector(self.online_encoder(v))) for v in views)
        with torch.no_grad():
            z_a, z_b = (self.target_projector(self.target_encoder(v)) for v in views)
        return p_a, p_b, z_a, z_b


def build_byol(model_cfg: dict, pretrain_cfg: dict) -> BYOL:
    """The BYOL network of the config sections ``model`` and ``pretrain``."""
    settings = pretrain_cfg["byol"]

    def backbone():
        return backbone_from_config(model_cfg)

    return BYOL(
        backbone,
        dim=pretrain_cfg["dim"],
        projector_hidden=settings["projector_hidden"],
        predictor_hidden=settings["predictor_hidden"],
    )


class Byol(Method):
    name = "byol"
    title = "BYOL"
    checkpoint_key = "byol"

    def build(self, model_cfg: dict, cfg: dict, bn_splits: int = 1) -> BYOL:
        return build_byol(model_cfg, cfg)

    def training_loss(self, model, view_a, view_b, generator) -> torch.Tensor:
        p_a, p_b, z_a, z_b = model(view_a, view_b)
        return byol_loss(p_a, z_b) + byol_loss(p_b, z_a)

    def after_step(self, network: BYOL, step: int, total_steps: int, cfg: dict) -> None:
        network.update_target(target_tau(cfg["byol"]["tau_base"], step + 1, total_steps))

    def settings(self, cfg: dict) -> list[tuple[str, str, str | None]]:
        byol = cfg["byol"]
        return [
            ("target EMA", f"tau {byol['tau_base']} -> 1, cosine over the run", None),
            (
                "projector, predictor",
                f"hidden {byol['projector_hidden']}, "
                f"{byol['predictor_hidden']}; output {cfg['dim']}",
                None,
            ),
        ]

    def backbone(self, network: BYOL) -> nn.Module:
        return network.online_encoder

    def embedding_parts(self, network: BYOL) -> tuple[nn.Module, nn.Module]:
        return network.online_encoder, network.online_projector
