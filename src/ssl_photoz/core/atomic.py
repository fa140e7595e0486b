"""Atomic file writes: readers (and a rerun after a crash) never see a half-written output.

Everything is written to a hidden temporary name in the target's own folder, then moved over the
target with one ``os.replace`` (atomic within a file system).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data, indent: int = 1) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, default=_jsonable))


def _jsonable(value):
    """numpy scalars become Python numbers; anything else its string form."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
