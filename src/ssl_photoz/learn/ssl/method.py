"""What a self-supervised pretraining method is to the rest of the package.

A method (one module of ``ssl_photoz.learn.ssl``, one entry of its registry) builds its network
from the backbone of the config section ``model`` and its settings in section ``pretrain``;
turns a batch's two augmented views into the loss (through its pure loss function); makes its
per-step update after each optimiser step (an EMA target, say); names the encoder that
fine-tuning starts from and the encoder and head whose normalised output the similarity search
embeds; and checks what it needs of the pretraining pool. Everything else (data, views,
optimiser, schedule, checkpoints, resumption, DDP) is the shared pretraining loop's
(``ssl_photoz.learn.pretraining``).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_photoz.learn.runtime import Runtime


class Method:
    """The interface; the defaults are those of a method with nothing of its own to do."""

    name: str  # the value of pretrain.method
    title: str  # in logs and summaries, e.g. "MoCo v2"
    checkpoint_key: str  # the key of the whole network's state_dict in the pretrained model.pt

    def check_pool(self, cfg: dict, pool: int) -> None:
        """Refuse settings that the pretraining pool of ``pool`` images cannot serve."""

    def bn_splits(self, cfg: dict, batch_size: int, runtime: Runtime) -> int:
        """Sub-batches of split BN in this process (1: plain BN)."""
        return 1

    def describe_bn(self, bn_splits: int, runtime: Runtime) -> str:
        return "BN per rank" if runtime.distributed else "plain BN (one process)"

    def build(self, model_cfg: dict, cfg: dict, bn_splits: int = 1) -> nn.Module:
        raise NotImplementedError

    def training_loss(
        self, model: nn.Module, view_a: torch.Tensor, view_b: torch.Tensor, generator
    ) -> torch.Tensor:
        """The loss of one batch (under the caller's autocast); ``model`` may be DDP-wrapped."""
        raise NotImplementedError

    def after_step(self, network: nn.Module, step: int, total_steps: int, cfg: dict) -> None:
        """The update after optimiser step ``step`` (0-based) of ``total_steps``."""

    def backbone(self, network: nn.Module) -> nn.Module:
        """The encoder that fine-tuning and the probe start from."""
        raise NotImplementedError

    def settings(self, cfg: dict) -> list[tuple[str, str, str | None]]:
        """The method's own settings as run, for summary.md's recipe table: (setting, value,
        the key of the paper's value in the report's recipe, or None where the paper has none)."""
        return []

    def embedding_parts(self, network: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(encoder, head): the similarity search embeds normalize(head(encoder(x)))."""
        raise NotImplementedError
