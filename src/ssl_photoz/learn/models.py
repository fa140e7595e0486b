"""Networks of Hayat et al. (2021): 5-band ResNet backbones and the 180-bin photo-z head; the
authors' released checkpoints; safe loading of checkpoint files.

The paper network is torchvision's ResNet50 with the stem the authors use in their repository
(github.com/mahayat/ssl-sky-surveys, models/resnet.py): conv1 = Conv2d(5, 64, kernel_size=7,
stride=1, padding=3, bias=False) and no max-pool, so a 64 x 64 crop keeps full resolution into
layer1. The self-supervised networks built on these backbones (MoCo v2, BYOL) are
``ssl_photoz.learn.ssl``'s. Nothing here moves tensors to a fixed device; everything follows
the inputs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
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
# Photo-z classifier


class RedshiftClassifier(nn.Module):
    """Backbone + head over `n_bins` equal redshift bins; z_p = E(z) under the softmax. The head
    is linear (the paper's), or with ``hidden`` > 0 one hidden ReLU layer of that width (the
    frozen-backbone arm's MLP probe)."""

    def __init__(
        self,
        backbone: nn.Module,
        n_bins: int = 180,
        z_min: float = 0.0,
        z_max: float = 0.4,
        hidden: int = 0,
    ):
        super().__init__()
        if n_bins < 1 or not z_max > z_min:
            raise ValueError(f"need n_bins >= 1 and z_max > z_min, got {n_bins}, {z_min}, {z_max}")
        self.n_bins = n_bins
        self.z_min = float(z_min)
        self.z_max = float(z_max)
        self.backbone = backbone
        self.hidden = int(hidden)
        if self.hidden:
            self.head = nn.Sequential(
                nn.Linear(backbone.feature_dim, self.hidden),
                nn.ReLU(),
                nn.Linear(self.hidden, n_bins),
            )
        else:
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
