"""Pieces the self-supervised methods share: split batch norm and gathering across ranks.

``SplitBatchNorm`` gives a single process what DDP gives several: batch statistics over
sub-batches, so that MoCo can shuffle its keys across them (its shuffled BN without ranks, as in
the MoCo authors' single-GPU demo, facebookresearch/moco colab/moco_cifar10_demo.ipynb).
``concat_all_gather`` is the reference implementation's gather of keys across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each of ``num_splits`` consecutive sub-batches
    with its own statistics (what BN does on one of ``num_splits`` GPUs); in eval mode it is plain
    BN. The running statistics are the mean of the sub-batches' updates. Same parameters and
    buffers as BatchNorm2d, so state_dicts load into a plain backbone and back."""

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be positive, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n = x.shape[0]
        if n % self.num_splits:
            raise ValueError(
                f"batch of {n} does not split into {self.num_splits} equal sub-batches for "
                f"split batch norm (pretrain.bn_splits): use a batch size that is a multiple"
            )
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        momentum = 0.0 if self.momentum is None else self.momentum
        means, variances, outs = [], [], []
        for part in x.chunk(self.num_splits):
            mean = self.running_mean.clone() if self.track_running_stats else None
            var = self.running_var.clone() if self.track_running_stats else None
            outs.append(
                F.batch_norm(part, mean, var, self.weight, self.bias, True, momentum, self.eps)
            )
            means.append(mean)
            variances.append(var)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)


def split_batch_norm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` by a SplitBatchNorm with the same state."""
    if num_splits == 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            split = SplitBatchNorm(
                child.num_features,
                num_splits,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batch_norm(child, num_splits)
    return module


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0 (rank order); identity when not distributed.

    No gradient flows through the gather; every rank must pass the same shape.
    """
    world = world_size()
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)
