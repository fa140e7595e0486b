"""The machine a network runs on: device, ranks, loader workers and precision; seeding.

Machine settings (device, workers, precision) are arguments, not science settings. Under torchrun
(WORLD_SIZE > 1) each process is one rank: gloo on CPU, NCCL on GPU. Data order and augmentations
are drawn from generators seeded from (seed, epoch, stream) alone, so that a resumed run replays
exactly what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ssl_photoz.learn import data
from ssl_photoz.learn import precision as precision_mod


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
    device: str = "auto",
    num_workers: int = 0,
    precision: str = "auto",
    timing_network: dict | None = None,
) -> Runtime:
    """One process, or one rank of a torchrun launch (WORLD_SIZE > 1: gloo on CPU, NCCL on GPU).

    ``precision`` (auto | fp32 | bf16 | fp16) is resolved for the device; ``timing_network`` is
    the model section that ``auto`` times on a CPU with native bf16. Under torchrun rank 0
    decides and the other ranks take its choice, so that all ranks compute alike."""
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
    chosen = [precision_mod.resolve(precision, dev, timing_network) if rank == 0 else None]
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


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; an image batch (4-d) channels_last, the layout every network runs."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the module itself otherwise)."""
    return model.module if hasattr(model, "module") else model


def wrap(module: nn.Module, runtime: Runtime) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun, as it is otherwise."""
    if runtime.distributed:
        return nn.parallel.DistributedDataParallel(module)
    return module


def epoch_loader(
    dataset, batch_size, rt: Runtime, seed: int, epoch: int, shuffle: bool, drop_last: bool
):
    """The training loader of one epoch: this rank's share under DDP (DistributedSampler),
    else the whole set in an order seeded from (seed, epoch)."""
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
