"""Images per second delivered by CutoutDataset + make_loader + MocoViews on this machine's CPU.

A synthetic store (default 2,000 objects, sky noise plus a galaxy-like blob, the pipeline's
layout: chunks of one object, shards of 64, zstd) is written to a temporary directory. For each
number of workers the script times one full pass (worker start-up included) and a second pass
(persistent workers already running), for the loader alone and with two MoCo views made in the
main process, as a training loop would before moving the batch to the device.

    .venv/bin/python benchmarks/bench_loader.py [--objects 2000] [--batch 64] [--workers 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from ssl_photoz.learn.augment import MocoViews
from ssl_photoz.learn.data import CutoutDataset, make_loader, open_store, pretrain_indices

MAD = [0.0188, 0.0076, 0.0115, 0.0185, 0.0783]  # the small real store's stats.json
SHARD = 64


def write_synthetic_store(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    images = zarr.create_array(
        store=path,
        name="images",
        shape=(n, 5, 107, 107),
        chunks=(1, 5, 107, 107),
        shards=(SHARD, 5, 107, 107),
        dtype="float32",
        fill_value=np.nan,
    )
    yy, xx = np.mgrid[:107, :107] - 53
    blob = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2)).astype(np.float32)
    mad = np.asarray(MAD, np.float32)[:, None, None]
    for start in range(0, n, SHARD):  # whole shards: one write per shard file
        m = min(SHARD, n - start)
        sky = rng.normal(0.0, 1.4826, (m, 5, 107, 107)).astype(np.float32) * mad
        images[start : start + m] = sky + rng.uniform(0.05, 1.0, (m, 5, 1, 1)) * blob
    group = zarr.open_group(path, mode="r+")
    columns = {
        "objid": np.arange(n, dtype=np.int64),
        "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-10, 60, n),
        "z_spec": np.where(rng.uniform(size=n) < 0.3, rng.uniform(0, 0.4, n), np.nan),
        "ebv": rng.uniform(0, 0.1, n),
        "split": rng.choice(np.array([0, 2], np.int8), n),  # train and unlabeled only
        "fraction_rank": rng.uniform(size=n),
        "ok": np.ones(n, bool),
    }
    for name, column in columns.items():
        group.create_array(name, data=column)
    group.attrs["split_codes"] = ["train", "val", "unlabeled"]


def one_pass(loader, views: MocoViews | None, generator: torch.Generator) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    for batch in loader:
        if views is not None:
            views(batch["image"], generator)
        n += batch["image"].shape[0]
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # Other jobs on a small machine change these numbers a lot: say how busy it was.
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cutouts.zarr"
        t0 = time.perf_counter()
        write_synthetic_store(path, args.objects)
        print(f"wrote {args.objects} objects in {time.perf_counter() - t0:.1f} s")
        dataset = CutoutDataset(path, pretrain_indices(open_store(path)), deredden=False)
        views = MocoViews(MAD)

        # The augmentation alone, on one batch already in memory (best of 20: least disturbed).
        batch = torch.stack([dataset[i]["image"] for i in range(args.batch)])
        generator = torch.Generator().manual_seed(0)
        views(batch, generator)
        best = float("inf")
        for _ in range(20):
            t0 = time.perf_counter()
            views(batch, generator)
            best = min(best, time.perf_counter() - t0)
        print(f"MocoViews alone (two views, batch {args.batch}): {args.batch / best:,.0f} images/s")
        t0 = time.perf_counter()
        for i in range(256):
            dataset[i]
        print(
            f"one item read in the main process: {(time.perf_counter() - t0) / 256 * 1e3:.2f} ms\n"
        )

        header = ("workers", "pass", "loader img/s", "loader+views img/s")
        print(f"{header[0]:>7}  {header[1]:<12}  {header[2]:>12}  {header[3]:>18}")
        for workers in args.workers:
            rates = {}
            for with_views in (False, True):
                # A fresh loader per row so that the first pass includes worker start-up.
                loader = make_loader(
                    dataset, args.batch, shuffle=True, num_workers=workers, seed=0, drop_last=True
                )
                for label in ("first", "steady"):
                    n, seconds = one_pass(loader, views if with_views else None, generator)
                    rates[label, with_views] = n / seconds
                del loader
            for label in ("first", "steady"):
                print(
                    f"{workers:>7}  {label:<12}  {rates[label, False]:>12,.0f}"
                    f"  {rates[label, True]:>18,.0f}"
                )
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
