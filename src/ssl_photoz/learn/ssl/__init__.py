"""The registry of self-supervised pretraining methods, chosen by ``pretrain.method``.

Adding a method is one module here (a ``method.Method``), one entry of ``METHODS`` and its
settings in the schema (workflow/schemas/config.schema.yaml: the ``pretrain.method`` enum, which
a test keeps equal to ``METHODS``, and its own keys under ``pretrain``).
"""

from __future__ import annotations

from ssl_photoz.learn.ssl.byol import Byol
from ssl_photoz.learn.ssl.method import Method
from ssl_photoz.learn.ssl.moco import MocoV2

METHODS: dict[str, Method] = {m.name: m for m in (MocoV2(), Byol())}

# Pretraining checkpoints written before pretrain.method existed are MoCo v2's.
LEGACY_METHOD = "moco_v2"


def get(name: str) -> Method:
    """The method registered as ``name``, or a ValueError naming the key and the methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"key 'pretrain.method': {name!r} is not a registered self-supervised method; "
            f"choose one of {sorted(METHODS)}"
        ) from None


def method_of(pretrain_cfg: dict) -> Method:
    """The method of a pretraining config section (a checkpoint's, say; one without the key
    is of the time before methods, MoCo v2's)."""
    return get(pretrain_cfg["method"] if "method" in pretrain_cfg else LEGACY_METHOD)
