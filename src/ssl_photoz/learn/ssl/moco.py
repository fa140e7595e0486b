"""MoCo v2 (Chen et al. 2020), the pretraining of Hayat et al. (2021).

It follows the reference implementation (github.com/facebookresearch/moco, moco/builder.py):
momentum key encoder, queue of negatives, batch-shuffle BN and keys gathered across ranks under
DDP. A single process has no ranks to shuffle across, so there (``bn_splits`` > 1) both encoders
normalise over sub-batches (``SplitBatchNorm``) and the keys are shuffled across the sub-batches,
as in the MoCo authors' single-GPU demo: a query and its key never share batch statistics. The
momentum update and the enqueueing run inside the forward, as in the reference. Nothing here
moves tensors to a fixed device; everything follows the inputs.

Settings: ``pretrain.dim``, ``queue_size``, ``momentum``, ``temperature`` and ``bn_splits``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ssl_photoz.learn.models import backbone_from_config
from ssl_photoz.learn.runtime import Runtime
from ssl_photoz.learn.ssl.common import concat_all_gather, split_batch_norm, world_size
from ssl_photoz.learn.ssl.method import Method


def info_nce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE loss: cross entropy of the positive (column `labels`) against the negatives."""
    return F.cross_entropy(logits.float(), labels)


def _projection_head(in_dim: int, out_dim: int, mlp: bool) -> nn.Module:
    if not mlp:
        return nn.Linear(in_dim, out_dim)
    # MoCo v2: a 2-layer MLP with hidden size = feature size.
    return nn.Sequential(
        nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim)
    )


class MoCo(nn.Module):
    """MoCo v2 (Chen et al. 2020) as a plain module; wrap it in DDP for multi-rank training.

    `encoder_q` is the backbone being trained (its state_dict is what fine-tuning loads),
    `head_q` the projection head; `encoder_k`/`head_k` are their momentum copies.
    """

    def __init__(
        self,
        backbone_fn: Callable[[], nn.Module],
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        mlp: bool = True,
        bn_splits: int = 1,
    ):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {queue_size}")
        if bn_splits < 1:
            raise ValueError(f"bn_splits must be positive, got {bn_splits}")
        self.dim = dim
        self.queue_size = queue_size
        self.momentum = momentum
        self.temperature = temperature
        # Sub-batches of split BN in a single process (1: plain BN); ignored under DDP, where
        # each rank normalises its own part and the keys are shuffled across ranks.
        self.bn_splits = bn_splits

        self.encoder_q = split_batch_norm(backbone_fn(), bn_splits)
        self.head_q = _projection_head(self.encoder_q.feature_dim, dim, mlp)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.head_k = copy.deepcopy(self.head_q)
        for p in self._key_params():
            p.requires_grad_(False)

        # Persistent buffers, so a checkpoint resumes with the same negatives.
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def backbone(self) -> nn.Module:
        return self.encoder_q

    def _query_params(self) -> list[torch.Tensor]:
        return [*self.encoder_q.parameters(), *self.head_q.parameters()]

    def _key_params(self) -> list[torch.Tensor]:
        return [*self.encoder_k.parameters(), *self.head_k.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, parameters only (BN statistics stay per encoder)."""
        # lerp(k, q, 1 - m) = k + (1 - m)(q - k) = m k + (1 - m) q, one fused op per tensor list.
        torch._foreach_lerp_(self._key_params(), self._query_params(), 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write this step's keys (gathered from all ranks) into the queue, oldest out first.

        Unlike the reference, K need not be a multiple of the batch: the columns written are
        (ptr + i) mod K, so a batch that crosses the end continues at column 0. The pointer stays
        on the device (no int(queue_ptr)), so the step never waits for the GPU.
        """
        keys = concat_all_gather(keys)
        n = keys.shape[0]
        size = self.queue_size
        skip = max(n - size, 0)  # of a batch larger than the queue only the newest K keys survive
        offsets = torch.arange(skip, n, device=self.queue.device)
        columns = (self.queue_ptr + offsets) % size
        self.queue.index_copy_(1, columns, keys[skip:].detach().T.to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(size)

    @torch.no_grad()
    def _shuffle(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shuffle the batch across ranks so key-encoder BN statistics cannot leak the positive.

        In one process with split BN the keys are shuffled across the sub-batches instead (drawn
        from ``generator`` when given, so a resumed run replays them); with plain BN and one
        process there is nothing to shuffle across."""
        world = world_size()
        if world == 1:
            if self.bn_splits == 1:
                return x, None
            perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
            return x[perm], torch.argsort(perm)
        x_all = concat_all_gather(x)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(perm, src=0)  # every rank must use rank 0's permutation
        mine = perm.view(world, -1)[dist.get_rank()]
        return x_all[mine], torch.argsort(perm)

    @torch.no_grad()
    def _unshuffle(self, x: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:
        if inverse is None:
            return x
        if world_size() == 1:
            return x[inverse]
        x_all = concat_all_gather(x)
        return x_all[inverse.view(world_size(), -1)[dist.get_rank()]]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised query embeddings (the 128-d vectors of the similarity search)."""
        return F.normalize(self.head_q(self.encoder_q(x)), dim=1)

    def forward(
        self, im_q: torch.Tensor, im_k: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, labels): logits (B, 1 + K) = [l_pos, l_neg] / T, labels all zero.

        ``generator`` draws the single-process key shuffle of split BN."""
        q = self.embed(im_q)
        with torch.no_grad():
            self.momentum_update()
            im_k, inverse = self._shuffle(im_k, generator)
            k = F.normalize(self.head_k(self.encoder_k(im_k)), dim=1)
            k = self._unshuffle(k, inverse)
        # Similarities in fp32 even under autocast: with T = 0.2 bf16 rounding is not negligible.
        with torch.autocast(q.device.type, enabled=False):
            q32, k32 = q.float(), k.float()
            l_pos = (q32 * k32).sum(dim=1, keepdim=True)
            l_neg = q32 @ self.queue.clone()  # clone: enqueue below writes into the queue
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.enqueue(k32)
        return logits, labels


def build_moco(model_cfg: dict, pretrain_cfg: dict, bn_splits: int = 1) -> MoCo:
    """The MoCo v2 model of the config sections ``model`` and ``pretrain``; ``bn_splits`` > 1
    gives single-process training split BN (pretraining passes ``pretrain.bn_splits``)."""

    def backbone():
        return backbone_from_config(model_cfg)

    return MoCo(
        backbone,
        dim=pretrain_cfg["dim"],
        queue_size=pretrain_cfg["queue_size"],
        momentum=pretrain_cfg["momentum"],
        temperature=pretrain_cfg["temperature"],
        bn_splits=bn_splits,
    )


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


class MocoV2(Method):
    name = "moco_v2"
    title = "MoCo v2"
    checkpoint_key = "moco"

    def check_pool(self, cfg: dict, pool: int) -> None:
        check_queue_fits_pool(cfg["queue_size"], pool)

    def bn_splits(self, cfg: dict, batch_size: int, runtime: Runtime) -> int:
        return pretrain_bn_splits(cfg, batch_size, runtime)

    def describe_bn(self, bn_splits: int, runtime: Runtime) -> str:
        if runtime.distributed:
            return "shuffled BN across ranks"
        if bn_splits > 1:
            return f"split BN over {bn_splits} sub-batches, keys shuffled across them"
        return "plain BN (no shuffle: one process)"

    def build(self, model_cfg: dict, cfg: dict, bn_splits: int = 1) -> MoCo:
        return build_moco(model_cfg, cfg, bn_splits=bn_splits)

    def training_loss(self, model, view_a, view_b, generator) -> torch.Tensor:
        logits, labels = model(view_a, view_b, generator=generator)
        return info_nce(logits.float(), labels)

    def settings(self, cfg: dict) -> list[tuple[str, str, str | None]]:
        return [
            ("queue (negatives)", f"{cfg['queue_size']:,}", "queue"),
            ("key-encoder momentum", str(cfg["momentum"]), "momentum"),
            ("temperature", str(cfg["temperature"]), "temperature"),
        ]

    def backbone(self, network: MoCo) -> nn.Module:
        return network.encoder_q

    def embedding_parts(self, network: MoCo) -> tuple[nn.Module, nn.Module]:
        return network.encoder_q, network.head_q
