"""The fine-tuning arms: how a pretrained backbone becomes a redshift classifier, described once.

An arm is one entry of the config list ``finetune.arms`` and one model kind
(``ssl_photoz.core.kinds``: its models in ``results/models/<kind>/``, its predictions
``<kind>_f<fraction>_s<seed>.parquet``). Rule ``finetune`` (workflow/rules/learn.smk) has the
kind as a wildcard and passes only the arm's own recipe (:func:`recipe`), so adding an arm to the
list, or changing a setting only another arm reads, reruns none of the finished arms' jobs.
Adding an arm is one :class:`Arm` in ``ARMS`` (its kind follows from it).

- ``full``: every layer trains from the first step, the convolutions at ``backbone_lr_factor``
  of the head's rate (Hayat et al. 2021's fine-tuning);
- ``lpft``: linear probe, then fine-tune (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
  Features"): the backbone frozen for the first ``lpft_head_fraction`` of the epochs, then the
  whole network as ``full``; each phase has its own learning-rate schedule;
- ``frozen``: the backbone frozen throughout (weights and batch-norm statistics), a linear head,
  or a one-hidden-layer MLP of ``probe_hidden`` units, on its features.

The headline arm is chosen by :data:`SELECTION_RULE` on a held-out slice of the training labels
(config section ``arm_selection``), never on validation (``ssl_photoz.report.arm_selection``).

Only the standard library here: the Snakefile imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARMS",
    "OPTIMIZER_SETTINGS",
    "SELECTION_RULE",
    "Arm",
    "arm_of_kind",
    "frozen_epochs",
    "get",
    "head_hidden",
    "kind_names",
    "names",
    "recipe",
]

NEVER, FIRST, ALWAYS = "never", "first", "always"  # when the backbone is frozen

SELECTION_RULE = (
    "the arm with the smallest geometric mean, over the label fractions, of its median over "
    "seeds of sigma_MAD on the held-out slice of the training labels (arm_selection.holdout); "
    "ties go to the arm listed first in finetune.arms; validation is never read"
)

# Settings of the finetune section that only some optimisers read: an arm's recipe drops the
# others', so that they rerun nothing they do not change.
OPTIMIZER_SETTINGS = {"sgd": ("sgd",)}


@dataclass(frozen=True)
class Arm:
    """One fine-tuning arm.

    ``name``: its entry in ``finetune.arms``; ``kind``: its model kind's name; ``words``: what
    it does, for the figures' legends (``kinds``) and summary.md; ``freeze``: when the backbone
    is frozen (``never``, ``first``: the first phase, ``always``); ``settings``: the keys of
    the finetune section that only this arm reads (its recipe keeps them, the others' drop
    them).
    """

    name: str
    kind: str
    words: str
    freeze: str
    settings: tuple[str, ...] = ()

    def __post_init__(self):
        if self.freeze not in (NEVER, FIRST, ALWAYS):
            raise ValueError(f"arm {self.name!r}: freeze {self.freeze!r} is not never/first/always")


# The first is the paper's; its kind keeps the name "finetune" (and its outputs their paths).
ARMS: tuple[Arm, ...] = (
    Arm(name="full", kind="finetune", words="full fine-tune", freeze=NEVER),
    Arm(
        name="lpft",
        kind="finetune_lpft",
        words="head first, then full fine-tune",
        freeze=FIRST,
        settings=("lpft_head_fraction",),
    ),
    Arm(
        name="frozen",
        kind="finetune_frozen",
        words="frozen backbone + head",
        freeze=ALWAYS,
        settings=("probe_hidden",),
    ),
)


def names() -> list[str]:
    return [arm.name for arm in ARMS]


def kind_names() -> list[str]:
    return [arm.kind for arm in ARMS]


def get(name: str) -> Arm:
    """The registered arm ``name``; a KeyError naming the registered ones otherwise."""
    for arm in ARMS:
        if arm.name == name:
            return arm
    raise KeyError(f"fine-tuning arm {name!r} is not registered (ssl_photoz.core.arms: {names()})")


def arm_of_kind(kind: str) -> Arm:
    for arm in ARMS:
        if arm.kind == kind:
            return arm
    raise KeyError(f"{kind!r} is no fine-tuning arm's kind ({kind_names()})")


def recipe(section: dict, name: str) -> dict:
    """The finetune ``section`` as arm ``name`` reads it: without the list of arms, the other
    arms' settings and the settings of optimisers it does not use (a section still, so the
    schema validates it: the trainer adds the key ``arm``)."""
    arm = get(name)
    others = {key for other in ARMS if other is not arm for key in other.settings}
    unused = {
        key
        for optimizer, keys in OPTIMIZER_SETTINGS.items()
        if optimizer != section.get("optimizer")
        for key in keys
    }
    drop = (others - set(arm.settings)) | unused | {"arms"}
    return {k: v for k, v in section.items() if k not in drop}


def frozen_epochs(cfg: dict, n_epochs: int) -> int:
    """How many of the run's first ``n_epochs`` epochs the backbone is frozen: none for a run of
    no arm (the supervised baseline) or of ``full``, all for ``frozen``; for ``lpft``
    ``lpft_head_fraction`` of them, at least one and leaving at least one to fine-tune."""
    name = cfg.get("arm")
    if name is None:
        return 0
    arm = get(name)
    if arm.freeze == NEVER:
        return 0
    if arm.freeze == ALWAYS:
        return n_epochs
    if n_epochs < 2:
        raise ValueError(f"arm {name}: a head phase and a fine-tuning phase need >= 2 epochs")
    return min(n_epochs - 1, max(1, round(cfg["lpft_head_fraction"] * n_epochs)))


def head_hidden(cfg: dict) -> int:
    """Hidden units of the classifier's head (0: linear): ``probe_hidden`` for the frozen arm."""
    name = cfg.get("arm")
    if name is not None and get(name).freeze == ALWAYS:
        return int(cfg["probe_hidden"])
    return 0
