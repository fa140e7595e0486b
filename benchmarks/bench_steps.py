"""Throughput of one MoCo v2 training step against one supervised step on the same backbone.

A MoCo step runs the query encoder forward + backward and the key encoder forward on a second view,
so it should cost about (3 + 1) / 3 = 1.33x a supervised step per image (target: at most 1.7x).

    .venv/bin/python benchmarks/bench_steps.py                    # CPU: resnet_small and resnet50
    .venv/bin/python benchmarks/bench_steps.py --device cuda      # GPU: fp32, bf16 and fp16

All precisions of one network are timed in alternation (with its MoCo and supervised steps), so
the fp32 / bf16 rates stand side by side under the same load; every step runs channels_last, as
the training does (`--fp32-contiguous` adds fp32 in the default layout). On CPU the header names
the CPU and its bf16 flags, and the end says what `--precision auto` picks for each network and
why (its timing is cached as in training: `SSL_PHOTOZ_CACHE_DIR`, default ~/.cache/ssl-photoz).

    .venv/bin/python benchmarks/bench_steps.py --archs resnet_small --width 32 --batch 64 \
        --queue-size 256                                           # the demo's network and batch
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from ssl_photoz.learn import precision as precision_mod
from ssl_photoz.learn.models import RedshiftClassifier, build_backbone
from ssl_photoz.learn.ssl.moco import MoCo, info_nce

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--archs", nargs="+", default=["resnet_small", "resnet50"])
    p.add_argument("--width", type=int, default=64, help="base width of resnet_small")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="crop size in pixels")
    p.add_argument("--queue-size", type=int, default=65536)
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 2 on GPU")
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    # ResNet50 with the stride-1 stem takes tens of seconds per batch-32 step on a laptop CPU;
    # images/s hardly depends on the batch there, so a smaller batch keeps the run short.
    p.add_argument("--cpu-resnet50-batch", type=int, default=8)
    p.add_argument("--cpu-resnet50-steps", type=int, default=2)
    p.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="fp32 and/or amp dtypes (bf16, fp16);\n"
        "default: fp32 bf16 on CPU, fp32 bf16 fp16 on GPU",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    p.add_argument(
        "--fp32-contiguous",
        action="store_true",
        help="also time fp32 in the default (NCHW) layout",
    )
    p.add_argument("--no-auto", action="store_true", help="do not report what auto picks")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps_by_name: dict, device: torch.device, warmup: int, n: int) -> dict:
    """Median seconds per call of each step function, timed in alternation so that drifts of a
    shared machine's speed hit all of them alike."""
    for _ in range(warmup):
        for step in steps_by_name.values():
            step()
    times = {name: [] for name in steps_by_name}
    for _ in range(n):
        for name, step in steps_by_name.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _optimiser(model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


def _step_pair(arch: str, precision: str, args, device: torch.device, batch: int):
    """The MoCo and the supervised step of one network in one precision ("fp32-nchw": fp32 in the
    default layout; every other one runs channels_last, as the training does)."""
    name = precision.removesuffix("-nchw")
    amp_dtype = AMP_DTYPES.get(name)
    fmt = torch.contiguous_format if precision.endswith("-nchw") else torch.channels_last

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    # fp16 needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    def backbone():
        return build_backbone(arch, width=args.width if arch == "resnet_small" else 64)

    torch.manual_seed(0)
    shape = (batch, 5, args.size, args.size)
    x_q = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    x_k = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    z_bin = torch.randint(0, 180, (batch,), device=device)

    def update(loss, opt):
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    moco = MoCo(backbone, queue_size=args.queue_size).to(device, memory_format=fmt)
    moco_opt = _optimiser(moco)
    clf = RedshiftClassifier(backbone()).to(device, memory_format=fmt)
    clf_opt = _optimiser(clf)

    def moco_step():
        with autocast():
            logits, labels = moco(x_q, x_k)
            loss = info_nce(logits.float(), labels)
        update(loss, moco_opt)

    def supervised_step():
        with autocast():
            loss = F.cross_entropy(clf(x_q).float(), z_bin)
        update(loss, clf_opt)

    label = "fp32 (NCHW)" if precision.endswith("-nchw") else f"{name}+cl"
    return label, moco_step, supervised_step


def bench_arch(
    arch: str, precisions: list, args, device: torch.device, batch: int, warmup: int, steps: int
) -> list[dict]:
    """Rows for one network, all precisions and both step kinds timed in alternation."""
    pairs = [_step_pair(arch, p, args, device, batch) for p in precisions]
    fns = {}
    for label, moco_step, supervised_step in pairs:
        fns[(label, "moco")] = moco_step
        fns[(label, "sup")] = supervised_step
    t = time_interleaved(fns, device, warmup, steps)
    return [
        {
            "arch": arch,
            "precision": label,
            "batch": batch,
            "moco_ips": batch / t[(label, "moco")],
            "sup_ips": batch / t[(label, "sup")],
            "ratio": t[(label, "moco")] / t[(label, "sup")],
            "steps": f"{warmup}+{steps}",
        }
        for label, _, _ in pairs
    ]


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions or (
        ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]
    )
    for p in precisions:
        if p != "fp32" and p not in AMP_DTYPES:
            raise SystemExit(f"unknown precision {p!r}; expected fp32, bf16 or fp16")
    if args.fp32_contiguous:
        precisions = ["fp32-nchw", *precisions]

    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        info = precision_mod.cpu_info()
        bf16_flags = sorted(f for f in info["flags"] if "bf16" in f or f.startswith("amx"))
        where = (
            f"CPU {info['model']} ({info['machine']}, torch capability {info['capability']}, "
            f"bf16-related flags: {', '.join(bf16_flags) or 'none'}), "
            f"{torch.get_num_threads()} threads"
        )
    warmup = args.warmup if args.warmup is not None else (2 if device.type == "cuda" else 1)
    print(
        f"torch {torch.__version__} on {where}; inputs 5 x {args.size}^2, queue {args.queue_size}, "
        f"resnet_small width {args.width}; median of the timed steps"
    )
    header = (
        f"{'arch':<13} {'precision':<10} {'batch':>5} {'warm+timed':>10} {'MoCo img/s':>11} "
        f"{'sup img/s':>10}"
    )
    print(header + f" {'MoCo/sup cost':>14}")
    print("-" * (len(header) + 15))
    rows = []
    for arch in args.archs:
        batch, steps = args.batch, args.steps
        if arch == "resnet50" and device.type == "cpu":
            batch, steps = args.cpu_resnet50_batch, args.cpu_resnet50_steps
        for r in bench_arch(arch, precisions, args, device, batch, warmup, steps):
            rows.append(r)
            print(
                f"{r['arch']:<13} {r['precision']:<10} {r['batch']:>5} {r['steps']:>10} "
                f"{r['moco_ips']:>11.1f} {r['sup_ips']:>10.1f} {r['ratio']:>13.2f}x",
                flush=True,
            )
    worst = max(r["ratio"] for r in rows)
    print(f"worst MoCo/supervised cost per image: {worst:.2f}x (target <= 1.7x)")
    by = {(r["arch"], r["precision"]): r for r in rows}
    for arch in args.archs:
        fp32, bf16 = by.get((arch, "fp32+cl")), by.get((arch, "bf16+cl"))
        if fp32 and bf16:
            print(
                f"{arch}: bf16 / fp32 step rate {bf16['moco_ips'] / fp32['moco_ips']:.2f}x (MoCo), "
                f"{bf16['sup_ips'] / fp32['sup_ips']:.2f}x (supervised)"
            )
    if not args.no_auto:
        for arch in args.archs:
            probe = {"arch": arch, "width": args.width if arch == "resnet_small" else 64}
            print(f"auto for {arch}: {precision_mod.resolve('auto', device, probe).describe()}")


if __name__ == "__main__":
    main()
