"""Provenance written next to every output: what produced it, from which settings and code."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import subprocess
from pathlib import Path

from ssl_photoz import __version__

_REPO_ROOT = Path(__file__).resolve().parents[3]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks (checkpoints, frames, statistics)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj) -> str:
    """SHA-256 of an object's canonical JSON (sorted keys), or of a string as is."""
    text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(config: dict, **extra) -> dict:
    """A provenance record: config hash, package version, git commit, time, platform and extras."""
    return {
        "package": "ssl-photoz",
        "version": __version__,
        "git_commit": git_commit(),
        "config_sha256": stable_hash(config),
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        **extra,
    }
