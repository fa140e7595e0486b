"""Networks of Hayat et al. (2021): 5-band ResNet backbones, MoCo v2 and the 180-bin photo-z head.

The paper network is torchvision's ResNet50 with the stem the authors use in their repository
(github.com/mahayat/ssl-sky-surveys, models/resnet.py): conv1 = Conv2d(5, 64, kernel_size=7,
stride=1, padding=3, bias=False) and no max-pool, so a 64 x 64 crop keeps full resolution into
layer1. MoCo v2 follows the reference implementation (github.com/facebookresearch/moco,
moco/builder.py): momentum key encoder, queue of negatives, batch-shuffle BN and keys gathered
across ranks under DDP. A single process has no ranks to shuffle across, so there (``bn_splits`` >
1) both encoders normalise over sub-batches (``SplitBatchNorm``) and the keys are shuffled across
the sub-batches, as in the MoCo authors' single-GPU demo (facebookresearch/moco, colab/moco_cifar10_
demo.ipynb): a query and its key never share batch statistics. Nothing here moves tensors to a
fixed device; everything follows the inputs.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.resnet import BasicBlock, ResNet

ARCHS = ("resnet50", "resnet18", "resnet_small")

# The authors' stem (ssl-sky-surveys models/resnet.py): 7x7, stride 1, padding 3, no max-pool.
STEM_KERNEL = 7


def _paper_stem(net: ResNet, in_channels: int, out_channels: int, kernel: int) -> None:
    """Replace conv1 + max-pool by one stride-1 convolution, as in the paper."""
    net.conv1 = nn.Conv2d(
        in_channels, out_channels, kernel_size=kernel, stride=1, padding=kernel // 2, bias=False
    )
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()


def _small_resnet(in_channels: int, width: int) -> ResNet:
    """torchvision ResNet with one BasicBlock per stage and base width `width` (64 = resnet10)."""
    net = ResNet(BasicBlock, [1, 1, 1, 1])
    if width != 64:
        # torchvision fixes the stage widths at 64..512, so rebuild the stages at our width with its
        # own _make_layer; the module layout (and key names) stays the torchvision one.
        net.inplanes = width
        net.bn1 = nn.BatchNorm2d(width)
        net.layer1 = net._make_layer(BasicBlock, width, 1)
        net.layer2 = net._make_layer(BasicBlock, 2 * width, 1, stride=2)
        net.layer3 = net._make_layer(BasicBlock, 4 * width, 1, stride=2)
        net.layer4 = net._make_layer(BasicBlock, 8 * width, 1, stride=2)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    # A 3x3 stem is enough for the small net; the paper archs use the authors' 7x7.
    _paper_stem(net, in_channels, width, kernel=3)
    net.feature_dim = 8 * width
    return net


def _asinh_stretch(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: x -> asinh(x / softening) per band, before the first convolution."""
    return (torch.asinh(args[0] / module.input_softening.to(args[0].dtype)), *args[1:])


def build_backbone(
    arch: str, in_channels: int = 5, width: int = 64, input_softening=None
) -> nn.Module:
    """A ResNet mapping (B, in_channels, H, W) -> (B, feature_dim), with attribute `feature_dim`.

    `width` is the base channel count of `resnet_small`; the paper archs have torchvision's widths.
    `input_softening` (one flux per band, e.g. the per-pixel sky noise) makes the network see
    asinh(flux / softening) instead of raw fluxes: galaxy fluxes span 4 decades, and raw, a
    batch's statistics in the first batch norm follow its brightest galaxy, so the running
    statistics used in evaluation describe no batch (a network that fits in training mode
    fails in eval mode). A fixed transform, not weights: state_dicts are unchanged.
    """
    if arch == "resnet_small":
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        net = _small_resnet(in_channels, width)
    elif arch in ("resnet50", "resnet18"):
        if width != 64:
            raise ValueError(f"width={width} only applies to resnet_small; {arch} has width 64")
        net = resnet50(weights=None) if arch == "resnet50" else resnet18(weights=None)
        net.feature_dim = net.fc.in_features
        _paper_stem(net, in_channels, 64, kernel=STEM_KERNEL)
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    net.fc = nn.Identity()
    if input_softening is not None:
        soft = torch.as_tensor(input_softening, dtype=torch.float32).flatten()
        if soft.numel() != in_channels or not bool((soft > 0).all()):
            raise ValueError(
                f"input_softening needs {in_channels} positive values, got {input_softening}"
            )
        net.register_buffer("input_softening", soft.view(1, -1, 1, 1), persistent=False)
        net.register_forward_pre_hook(_asinh_stretch)
    return net


def backbone_from_config(model_cfg: dict) -> nn.Module:
    """The backbone of the config section ``model`` (arch, width, input_softening)."""
    width = model_cfg.get("width")  # resnet_small's only (the paper archs have their own)
    return build_backbone(
        model_cfg["arch"],
        **({} if width is None else {"width": width}),
        input_softening=model_cfg.get("input_softening"),
    )


# ----------------------------------------------------------------------------------------------
# MoCo v2


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


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0 (rank order); identity when not distributed.

    No gradient flows through the gather; every rank must pass the same shape.
    """
    world = _world_size()
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


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
        world = _world_size()
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
        if _world_size() == 1:
            return x[inverse]
        x_all = concat_all_gather(x)
        return x_all[inverse.view(_world_size(), -1)[dist.get_rank()]]

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


# ----------------------------------------------------------------------------------------------
# Photo-z classifier


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


class RedshiftClassifier(nn.Module):
    """Backbone + linear head over `n_bins` equal redshift bins; z_p = E(z) under the softmax."""

    def __init__(
        self, backbone: nn.Module, n_bins: int = 180, z_min: float = 0.0, z_max: float = 0.4
    ):
        super().__init__()
        if n_bins < 1 or not z_max > z_min:
            raise ValueError(f"need n_bins >= 1 and z_max > z_min, got {n_bins}, {z_min}, {z_max}")
        self.n_bins = n_bins
        self.z_min = float(z_min)
        self.z_max = float(z_max)
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, n_bins)
        edges = torch.linspace(self.z_min, self.z_max, n_bins + 1, dtype=torch.float64)
        centers = (0.5 * (edges[:-1] + edges[1:])).float()
        # Derived from the config, so not saved: state_dicts hold weights only.
        self.register_buffer("bin_centers", centers, persistent=False)

    @property
    def bin_width(self) -> float:
        return (self.z_max - self.z_min) / self.n_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def pdf(self, logits: torch.Tensor) -> torch.Tensor:
        """Probability of each bin (rows sum to 1); divide by `bin_width` for a density in z."""
        return torch.softmax(logits.float(), dim=-1)

    def expected_z(self, logits: torch.Tensor) -> torch.Tensor:
        """z_p = sum_k p_k z_k, the paper's point estimate."""
        return self.pdf(logits) @ self.bin_centers

    def z_to_bin(self, z: torch.Tensor) -> torch.Tensor:
        """Bin index of each redshift, clamped into [0, n_bins - 1] (long)."""
        z = torch.as_tensor(z, device=self.bin_centers.device)
        idx = torch.floor((z.double() - self.z_min) / self.bin_width).long()
        return idx.clamp_(0, self.n_bins - 1)

    def parameter_groups(self, base_lr: float, backbone_lr_factor: float = 0.1) -> list[dict]:
        """Optimiser groups: backbone at base_lr * factor, head at base_lr (the paper's recipe)."""
        return [
            {"name": "backbone", "params": list(self.backbone.parameters()),
             "lr": base_lr * backbone_lr_factor},
            {"name": "head", "params": list(self.head.parameters()), "lr": base_lr},
        ]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The authors' released checkpoints


def _expected_backbone(arch: str) -> tuple[dict[str, torch.Tensor], int]:
    """Key names, shapes and feature size of build_backbone(arch), built on the meta device so no
    ResNet50 weights are allocated."""
    with torch.device("meta"):
        net = build_backbone(arch)
    return net.state_dict(), net.feature_dim


def _check_layout(
    converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str
) -> None:
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong_shape = [
        f"{k}: {tuple(converted[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(converted) & set(expected))
        if converted[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return

    def show(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

    lines = [f"checkpoint does not match {what}:"]
    if missing:
        lines.append(f"  missing keys: {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {show(unexpected)}")
    if wrong_shape:
        lines.append(f"  wrong shapes: {show(wrong_shape)}")
    raise ValueError("\n".join(lines))


def load_authors_checkpoint(state_dict: Mapping, arch: str = "resnet50") -> dict:
    """Convert a checkpoint of Hayat et al. (ssl-sky-surveys) into one of ours.

    - MoCo pretraining (keys `module.encoder_q.<resnet keys>`, projection head `fc` or `fc.0/fc.2`,
      plus `encoder_k`, `queue`, `queue_ptr`) -> the state_dict of `build_backbone(arch)`.
    - Fine-tuned / supervised (keys `[module.]<resnet keys>`, `fc.weight` (n_bins, features))
      -> the state_dict of `RedshiftClassifier(build_backbone(arch), n_bins)`.
    The whole torch.load() result may be passed: its `model_state` / `state_dict` entry is used.
    Raises ValueError naming missing, unexpected and wrongly shaped keys.
    """
    for wrapper in ("model_state", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
            break
    expected, feature_dim = _expected_backbone(arch)
    keys = list(state_dict)

    if any("encoder_q." in k for k in keys):
        # Pretrained: keep the query encoder, drop its projection head, the key encoder and queue.
        out = {}
        for key, value in state_dict.items():
            name = key.removeprefix("module.")
            if name.startswith("encoder_q."):
                name = name.removeprefix("encoder_q.")
                if not name.startswith("fc."):
                    out[name] = value
            elif not (name.startswith("encoder_k.") or name in ("queue", "queue_ptr")):
                out[key] = value  # reported as unexpected below
        _fill_bn_counters(out, expected)
        _check_layout(out, expected, f"a MoCo-pretrained {arch} backbone")
        return out

    # Fine-tuned or supervised classifier.
    stripped = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if "fc.weight" not in stripped:
        raise ValueError(
            "checkpoint is neither MoCo-pretrained (no 'module.encoder_q.*' keys) nor a classifier "
            f"(no 'fc.weight'); first keys: {keys[:5]}"
        )
    n_bins = stripped["fc.weight"].shape[0]
    out = {}
    for name, value in stripped.items():
        out[("head." + name[3:]) if name.startswith("fc.") else ("backbone." + name)] = value
    expected_cls = {"backbone." + k: v for k, v in expected.items()}
    expected_cls["head.weight"] = torch.empty(n_bins, feature_dim, device="meta")
    expected_cls["head.bias"] = torch.empty(n_bins, device="meta")
    _fill_bn_counters(out, expected_cls)
    _check_layout(out, expected_cls, f"a {n_bins}-bin RedshiftClassifier on {arch}")
    return out


def _fill_bn_counters(out: dict, expected: Mapping[str, torch.Tensor]) -> None:
    # BN's num_batches_tracked is bookkeeping only (unused with momentum set); old checkpoints may
    # lack it, which should not make an otherwise complete checkpoint fail.
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in out:
            prefix = key.removesuffix("num_batches_tracked")
            if prefix + "running_mean" in out:
                out[key] = torch.zeros((), dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Safe loading: torch.load(weights_only=True), never the pickle's own code


def _authors_safe_globals() -> list:
    """The globals beyond plain data and tensors that MoCo / torchvision-style training scripts
    put in their ``.pth.tar`` files: an ``argparse.Namespace`` of the run's arguments (``args``),
    numpy scalars (a best accuracy, say). Each only builds data; none calls anything."""
    import argparse

    import numpy as np

    scalar = np._core.multiarray.scalar
    dtypes = [
        getattr(np.dtypes, f"{kind}{bits}DType")
        for kind, sizes in (("Float", (16, 32, 64)), ("Int", (8, 16, 32, 64)),
                            ("UInt", (8, 16, 32, 64)))
        for bits in sizes
    ]  # fmt: skip
    return [
        argparse.Namespace,
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),  # the name in files written under numpy 1
        np.dtype,
        np.dtypes.BoolDType,
        *dtypes,
    ]


def _unsafe_globals(path: Path, exc: Exception) -> list[str]:
    """The globals of ``path`` that weights_only loading refuses (under the current allow-list)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: the name is in the error's text
        found = []
    return found or sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))


def safe_load(path: Path | str, allowed: Sequence = (), what: str = "checkpoint"):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with the globals ``allowed``
    (objects, or (object, "module.name") pairs) added to torch's plain-data ones. A file whose
    pickle needs any other global (a class to build, a function to call) is refused, with a
    ValueError naming the file and the global(s); nothing of the file is run."""
    path = Path(path)
    with torch.serialization.safe_globals(list(allowed)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            unsafe = _unsafe_globals(path, exc)
            if unsafe:
                kinds = "plain data and tensors" + (" (and the allow-listed types)" * bool(allowed))
                raise ValueError(
                    f"{path}: refused: the {what} needs the global(s) {', '.join(unsafe)} to "
                    f"load; only {kinds} are loaded, and nothing of the file was run"
                ) from exc
            raise ValueError(f"{path}: cannot read the {what}: {exc}") from exc
        except Exception as exc:
            raise ValueError(f"{path}: cannot read the {what}: {exc}") from exc


def read_authors_checkpoint(path: Path | str):
    """One of the authors' released files (``.pth`` / ``.pth.tar``), loaded safely: plain data,
    tensors and the globals of ``_authors_safe_globals``; pass the result to
    ``load_authors_checkpoint``."""
    return safe_load(path, _authors_safe_globals(), what="released checkpoint")
