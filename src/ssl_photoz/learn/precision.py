"""Numerical precision of the network's steps, chosen per machine (a machine setting, not science).

``precision`` is ``auto``, ``fp32``, ``bf16`` or ``fp16``: the ``--precision`` option of the
``pretrain``, ``finetune``, ``supervised``, ``predict`` and ``embed`` verbs, which the Snakemake
rules fill from the profile's resource ``precision`` (profiles/*/config.v8+.yaml). One resolution
serves training, prediction and embeddings.

``auto``:

- CUDA: bf16 autocast where the GPU supports it, else fp16 autocast with loss scaling.
- CPU: bf16 autocast only where it is native *and* measured faster, fp32 otherwise. Without
  native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` among the x86 flags of
  /proc/cpuinfo, ``bf16`` among an Arm CPU's features) oneDNN emulates bf16, and a training step
  ran 10.8x slower than in fp32 on such an AMD EPYC; fp32 is chosen without measuring. Where bf16
  is native its gain still depends on the network and the CPU (docs/benchmarks.md: 1.7-2.3x on
  this project's Zen 4 CPU), so a few training steps of the configured network are timed in both
  precisions, once per CPU model, bf16 flags, torch version and network; the result is cached in
  ``$SSL_PHOTOZ_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ssl-photoz``, else
  ``~/.cache/ssl-photoz``), ``precision.json``. bf16 is chosen when it runs at least
  ``BF16_MIN_SPEEDUP`` times the fp32 rate. The thread count is not part of the key. Each rate
  is that of the fastest of a few alternated steps, which other jobs can slow but not speed up;
  still, delete the file to measure again after a timing on a crowded machine.
- Other devices (e.g. mps): fp32.

Explicit values are honoured, with two refusals: fp16 on a CPU (CPU autocast is meant for bf16;
fp16 there needs loss scaling and gains nothing on CPUs without AMX-FP16: use bf16 or fp32), and
bf16 on a GPU that does not support it. bf16 on a CPU without native bf16 runs, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHOICES = ("auto", "fp32", "bf16", "fp16")
SETTING_HELP = (
    "the machine setting `precision` (--precision on the command line; resource `precision` in "
    "the Snakemake profile, profiles/*/config.v8+.yaml)"
)
# The network that ``auto`` times on a CPU with native bf16 is the run's model section (arch,
# width), called the timing network here; without one, DEFAULT_TIMING_NETWORK.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86; on Arm the feature is called "bf16"
BF16_MIN_SPEEDUP = 1.1  # bf16 must beat fp32 by 10 % to be worth its 3 significant digits
CACHE_VERSION = 1
TIMING_CROP = 64  # the training crop (pixels) of the timed steps
DEFAULT_TIMING_NETWORK = {"arch": "resnet_small", "width": 32}


@dataclass(frozen=True)
class Precision:
    """The chosen precision of one process: what autocast and the loss scaler do."""

    name: str  # fp32 | bf16 | fp16
    device_type: str  # cpu | cuda | ...
    requested: str = "fp32"
    reason: str = "requested"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def amp(self) -> bool:
        return self.name != "fp32"

    def autocast(self):
        """The autocast context of the steps (a no-op in fp32)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then disabled)."""
        kind = "cuda" if self.device_type == "cuda" else "cpu"
        return torch.amp.GradScaler(kind, enabled=self.name == "fp16")

    def describe(self) -> str:
        where = f"{self.name} on {self.device_type} (asked: {self.requested})"
        return f"precision {where}: {self.reason}"

    def as_dict(self) -> dict:
        d = asdict(self)
        return {"chosen": d.pop("name"), **d}


def check_choice(value: str) -> str:
    """The setting's value, or a ValueError naming the setting and its choices."""
    if value not in CHOICES:
        raise ValueError(
            f"precision {value!r} is not one of {', '.join(CHOICES)}: set {SETTING_HELP}"
        )
    return value


# -- the CPU ---------------------------------------------------------------------------------------
def cpu_info() -> dict:
    """Model name, feature flags and torch's CPU capability (flags empty where unknown)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model,
        "machine": platform.machine(),
        "flags": flags,
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def native_bf16(info: dict) -> tuple[bool, str]:
    """Whether the CPU computes bf16 natively, and the evidence in words."""
    flags = info["flags"]
    if not flags:
        return False, "CPU flags unknown (no /proc/cpuinfo)"
    found = [f for f in BF16_FLAGS if f in flags]
    if info["machine"] in ("aarch64", "arm64") and "bf16" in flags:
        found.append("bf16")
    if found:
        return True, f"native bf16 ({', '.join(found)})"
    return False, f"no native bf16 (none of {', '.join(BF16_FLAGS)} among the CPU flags)"


def cache_path() -> Path:
    root = os.environ.get("SSL_PHOTOZ_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(base, "ssl-photoz")
    return Path(root) / "precision.json"


def _network_name(timing_network: dict) -> str:
    """``resnet_small w32``; a paper arch by its name alone (``model.width`` is resnet_small's
    only: the paper archs have torchvision's widths)."""
    width = timing_network.get("width")
    return timing_network["arch"] if width is None else f"{timing_network['arch']} w{width}"


def _timing_key(info: dict, timing_network: dict) -> str:
    bf16 = sorted(f for f in info["flags"] if "bf16" in f)
    return (
        f"{info['model']} | {info['machine']} | flags {','.join(bf16) or '-'} | "
        f"torch {torch.__version__} | {_network_name(timing_network)}"
    )


def measure_cpu_step_rates(
    timing_network: dict, batch: int | None = None, steps: int = 5, warmup: int = 2
) -> dict:
    """Images per second of a classifier training step (forward, cross-entropy, backward, SGD)
    of the timing network on 5 x 64 x 64 inputs, channels_last, in fp32 and in bf16 autocast.

    The two are timed alternately, and each rate is that of its fastest step: other jobs on a
    shared machine only ever add time, so the minimum is the least disturbed estimate."""
    from ssl_photoz.learn.models import RedshiftClassifier, build_backbone

    arch, width = timing_network["arch"], timing_network.get("width")  # resnet_small's only
    if batch is None:
        batch = 32 if arch == "resnet_small" else 8
    torch.manual_seed(0)
    x = torch.randn(batch, 5, TIMING_CROP, TIMING_CROP)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 180, (batch,))
    nets = {}
    for name in ("fp32", "bf16"):
        net = RedshiftClassifier(
            build_backbone(arch, **({} if width is None else {"width": width}))
        )
        net = net.to(memory_format=torch.channels_last).train()
        nets[name] = (net, torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9))

    def step(name: str) -> float:
        net, opt = nets[name]
        start = time.perf_counter()
        ctx = Precision(name, "cpu").autocast()
        with ctx:
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for _ in range(warmup):  # oneDNN primitive creation, the allocator
        for name in nets:
            step(name)
    times = {name: [] for name in nets}
    for _ in range(steps):
        for name in nets:
            times[name].append(step(name))
    rates = {f"{name}_images_per_s": batch / min(t) for name, t in times.items()}
    spread = {f"{name}_median_over_min": statistics.median(t) / min(t) for name, t in times.items()}
    return rates | spread | {"batch": batch, "steps": steps, "threads": torch.get_num_threads()}


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return data.get("entries", {})


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside the cache, so concurrent jobs measure once, one at a time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held across the yield)
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cpu_bf16_rates(info: dict, timing_network: dict) -> tuple[dict, str]:
    """The timing network's fp32 and bf16 step rates on this CPU, from the cache or measured now
    (and cached); returns the record and where it came from."""
    path = cache_path()
    key = _timing_key(info, timing_network)
    with _locked(path):
        entries = _read_cache(path)
        if key in entries:
            return entries[key], f"cached in {path}"
        log.info("precision auto: timing fp32 and bf16 training steps of %s once (%s)", key, path)
        record = measure_cpu_step_rates(timing_network)
        record["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        entries[key] = record
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1))
            os.replace(tmp, path)
            where = f"measured now, cached in {path}"
        except OSError as exc:
            log.warning("%s: cannot cache the precision measurement: %s", path, exc)
            where = "measured now (not cached)"
    return record, where


# -- the choice ------------------------------------------------------------------------------------
def resolve(
    requested: str, device: torch.device | str, timing_network: dict | None = None
) -> Precision:
    """The precision for this process on ``device``; ``timing_network`` is the model section
    (arch, width) that ``auto`` times on a CPU with native bf16."""
    requested = check_choice(requested)
    device = torch.device(device)
    kind = device.type
    if kind == "cuda":
        return _resolve_cuda(requested, device)
    if kind == "cpu":
        return _resolve_cpu(requested, timing_network or DEFAULT_TIMING_NETWORK)
    if requested in ("auto", "fp32"):
        return Precision("fp32", kind, requested, f"autocast is not used on {kind} devices")
    raise ValueError(
        f"precision {requested!r} is not supported on device {kind!r} (fp32 or auto only): "
        f"set {SETTING_HELP}"
    )


def _resolve_cuda(requested: str, device: torch.device) -> Precision:
    name = torch.cuda.get_device_name(device)
    bf16 = torch.cuda.is_bf16_supported()
    if requested == "auto":
        if bf16:
            return Precision("bf16", "cuda", requested, f"auto: {name} supports bf16")
        return Precision(
            "fp16", "cuda", requested, f"auto: {name} lacks bf16; fp16 with loss scaling"
        )
    if requested == "bf16" and not bf16:
        raise ValueError(
            f"precision 'bf16': {name} does not support bf16; use fp16, fp32 or auto "
            f"({SETTING_HELP})"
        )
    return Precision(requested, "cuda", requested, "requested")


def _resolve_cpu(requested: str, timing_network: dict) -> Precision:
    if requested == "fp16":
        raise ValueError(
            "precision 'fp16' is refused on a CPU (CPU autocast is meant for bf16; fp16 would "
            f"need loss scaling and is not faster): use bf16, fp32 or auto for {SETTING_HELP}"
        )
    info = cpu_info()
    native, evidence = native_bf16(info)
    cpu = f"CPU {info['model']} (torch capability {info['capability']})"
    if requested == "fp32":
        return Precision("fp32", "cpu", requested, "requested")
    if requested == "bf16":
        reason = "requested"
        if not native:
            reason += f"; {cpu} has {evidence}: bf16 is emulated, expect it to be much slower"
            log.warning("precision bf16 on %s: %s", cpu, reason)
        return Precision("bf16", "cpu", requested, reason)
    if not native:
        return Precision(
            "fp32", "cpu", requested, f"auto: {cpu} has {evidence}, so bf16 would be emulated"
        )
    try:
        rates, where = cpu_bf16_rates(info, timing_network)
    except Exception as exc:  # a bf16 kernel missing in this build, say
        return Precision("fp32", "cpu", requested, f"auto: {cpu} has {evidence}, but {exc!r}")
    fp32, bf16 = rates["fp32_images_per_s"], rates["bf16_images_per_s"]
    speedup = bf16 / fp32
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    reason = (
        f"auto: {cpu} has {evidence}; a training step of {_network_name(timing_network)} "
        f"(batch {rates['batch']}) ran {fp32:.1f} img/s in fp32 and "
        f"{bf16:.1f} img/s in bf16 ({speedup:.2f}x; bf16 needs >= {BF16_MIN_SPEEDUP}x), {where}"
    )
    return Precision(chosen, "cpu", requested, reason)
