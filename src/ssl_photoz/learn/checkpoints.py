"""Checkpoint files and the inputs of a run: what may resume from what.

A checkpoint is written atomically, and read with ``torch.load(weights_only=True)``
(``models.safe_load``): what we save is plain data (dicts, lists, tensors, str/int/float/bool/
None), and a file whose pickle names any other global is refused, never run.

A checkpoint records the run's inputs (``run_inputs``): the config, the digest of the training
code (``codehash.code_digest(TRAINING_CODE)``, the training rules' ``code`` param), the store's
identity and, for pretraining, the channel statistics; for fine-tuning, the sha256 of the
pretrained model. Only a run with the same inputs resumes from it (``differences`` says which
differ otherwise).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ssl_photoz.core import codehash
from ssl_photoz.core.atomic import atomic_path
from ssl_photoz.core.provenance import file_sha256
from ssl_photoz.learn import models

CHECKPOINT_VERSION = 2  # 2: the run's inputs (config, code, store, pretrained model)

# The entry module of the training rules' code param; its import closure is all the training code.
TRAINING_CODE = "ssl_photoz.learn.train"

INPUT_NAMES = {  # the inputs of a run's fingerprint, as the log names them
    "config": "config",
    "code": f"code ({TRAINING_CODE} and the modules it imports)",
    "store": "store (the cut-out store and its manifest)",
    "stats": "channel statistics",
    "pretrained": "pretrained model",
}


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """One of our checkpoints, read with ``torch.load(weights_only=True)``: plain data and
    tensors only; a file that needs any other global is refused (ValueError), never run."""
    return models.safe_load(path)


def plain(obj):
    """``obj`` with numpy scalars and arrays made Python numbers and lists, tuples lists, and
    every mapping a dict with string keys: data that ``weights_only`` loading accepts."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def store_digest(store_path: Path, manifest: Path | None = None) -> str:
    """The identity of a cut-out store, cheap whatever its size: sha256 over the manifest's bytes
    (when given), the bytes of every store file but the image chunks (the Zarr metadata, whose
    attributes ``gather`` rewrites with its provenance and time on every build of the store, and
    the 1-D arrays: objid, split, z_spec, fraction_rank, ok, ...) and the name and size of each
    image chunk file. The images themselves (up to hundreds of GB) are not read: a rebuilt store
    is one that ``gather`` wrote again."""
    store_path = Path(store_path)
    if not store_path.is_dir():
        raise FileNotFoundError(f"{store_path}: the cut-out store is missing")
    digest = hashlib.sha256()
    if manifest is not None:
        digest.update(b"manifest\0" + Path(manifest).read_bytes())
    for path in sorted(p for p in store_path.rglob("*") if p.is_file()):
        rel = path.relative_to(store_path).as_posix()
        digest.update(rel.encode() + b"\0")
        if rel.startswith("images/") and path.name != "zarr.json":
            digest.update(str(path.stat().st_size).encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def code_digest() -> str:
    """The digest of the training code, the same as the training rules' ``code`` param."""
    return codehash.code_digest(TRAINING_CODE)


def run_inputs(
    store_path: Path,
    manifest: Path | None = None,
    stats_path: Path | None = None,
    pretrained: Path | None = None,
) -> dict:
    """A run's inputs but its config (``EpochLoop`` adds its hash): the code digest, the store's
    identity and the digests of the channel statistics (pretraining) or of the pretrained model
    (fine-tuning)."""
    inputs = {"code": code_digest(), "store": store_digest(store_path, manifest)}
    if stats_path is not None:
        inputs["stats"] = file_sha256(stats_path)
    if pretrained is not None:
        inputs["pretrained"] = file_sha256(pretrained)
    return inputs


def differences(saved: dict, now: dict) -> str:
    """Which inputs differ, e.g. "pretrained model differs (3f2a... there, 9c41... now)"."""
    keys = [k for k in INPUT_NAMES if saved.get(k) != now.get(k)]
    keys += sorted(
        k for k in set(saved) | set(now) if k not in INPUT_NAMES and saved.get(k) != now.get(k)
    )

    def short(value) -> str:
        return "none" if value is None else str(value)[:12]

    return "; ".join(
        f"{INPUT_NAMES.get(k, k)} differs ({short(saved.get(k))} there, {short(now.get(k))} now)"
        for k in keys
    )
