"""Compare two finished runs file by file: what differs, and whether only in bookkeeping.

    python scripts/compare_runs.py RUN_A RUN_B

RUN_A and RUN_B are working directories of two runs (each with ``results/`` and ``resources/``),
for example the tiny config before and after a refactor, or on two machines. Every file (logs and
Snakemake's benchmark timings left out) is compared byte for byte; a file that differs is then
compared by content: Parquet and DuckDB tables as data frames, JSON and checkpoints field by
field (tensors exactly), so that a difference in the bookkeeping alone (timestamps, the git
commit, code digests, throughput) is told apart from a difference in the science. Exit status 1
when a file is missing on one side or differs in anything but bookkeeping.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# Fields that record how and when a file was made, not what it holds.
# "/pretrained" and "/store" are digests of input files, whose own contents are compared.
BOOKKEEPING = (
    "created_utc",
    "git_commit",
    "seconds",
    "images_per_s",
    "/code",
    "/store",
    "/pretrained",
)


def files_of(run: Path) -> set[str]:
    skipped = ("logs", "benchmarks")
    return {
        str(p.relative_to(run))
        for top in ("results", "resources")
        if (run / top).is_dir()
        for p in (run / top).rglob("*")
        if p.is_file() and not set(p.relative_to(run).parts) & set(skipped)
    }


def flatten(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}/{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from flatten(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _equal(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def differing_fields(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in a or k not in b or not _equal(a[k], b[k])]


def _explorer_data(path: Path):
    match = re.search(r'<script[^>]*id="explorer-data"[^>]*>(.*?)</script>', path.read_text(), re.S)
    return json.loads(match.group(1)) if match else None


def compare_content(path_a: Path, path_b: Path) -> tuple[bool, str]:
    """(only bookkeeping differs, what differs) for two files of the same name."""
    suffix = path_a.suffix
    if suffix == ".parquet":
        import pandas as pd

        same = pd.read_parquet(path_a).equals(pd.read_parquet(path_b))
        return same, "same table (metadata differs)" if same else "tables differ"
    if suffix == ".duckdb":
        import duckdb

        ca, cb = duckdb.connect(str(path_a), read_only=True), duckdb.connect(str(path_b), True)
        query = "select table_name from information_schema.tables order by 1"
        tables = [t for (t,) in ca.execute(query).fetchall()]
        if tables != [t for (t,) in cb.execute(query).fetchall()]:
            return False, "different tables"
        bad = [
            t
            for t in tables
            if not ca.execute(f'select * from "{t}"')
            .df()
            .equals(cb.execute(f'select * from "{t}"').df())
        ]
        return not bad, f"tables differ: {bad}" if bad else "same tables (file layout differs)"
    if suffix in (".json", ".pt"):
        if suffix == ".json":
            a, b = (json.loads(p.read_text()) for p in (path_a, path_b))
        else:
            import torch

            a, b = (torch.load(p, map_location="cpu", weights_only=False) for p in (path_a, path_b))
        fields = differing_fields(dict(flatten(a)), dict(flatten(b)))
        science = [f for f in fields if not any(word in f for word in BOOKKEEPING)]
        return not science, f"fields {science or fields}"
    if suffix == ".html":  # the explorer: its data, apart from the page's code and comments
        a, b = (_explorer_data(p) for p in (path_a, path_b))
        if a is None or b is None:
            return False, "bytes differ"
        fields = differing_fields(dict(flatten(a)), dict(flatten(b)))
        return not fields, f"fields {fields}" if fields else "same data (page code differs)"
    return False, "bytes differ"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    files_a, files_b = files_of(args.run_a), files_of(args.run_b)
    status = 0
    for name in sorted(files_a ^ files_b):
        print(f"only in {'A' if name in files_a else 'B'}: {name}")
        status = 1
    same_bytes = 0
    for name in sorted(files_a & files_b):
        a, b = args.run_a / name, args.run_b / name
        if a.read_bytes() == b.read_bytes():
            same_bytes += 1
            continue
        bookkeeping, what = compare_content(a, b)
        print(f"{'bookkeeping' if bookkeeping else 'DIFFERS'}: {name}: {what}")
        status = status or (0 if bookkeeping else 1)
    print(f"{same_bytes} of {len(files_a & files_b)} common files identical byte for byte")
    return status


if __name__ == "__main__":
    sys.exit(main())
