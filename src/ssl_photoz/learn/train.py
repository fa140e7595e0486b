"""Training, the entry of the training rules' code digest: pretraining, fine-tuning, supervised.

``codehash.code_digest("ssl_photoz.learn.train")`` (``checkpoints.TRAINING_CODE``, the
``code`` param of rules pretrain, finetune and supervised) is the digest of this module's import
closure, so every module of the training code is imported here:

- ``runtime``: the machine (device, ranks, workers, precision), seeding, loaders;
- ``checkpoints``: checkpoint files, safe loading, the inputs a run resumes only with;
- ``epochs``: the schedule, the optimiser step, ``EpochLoop`` (resume, save per epoch);
- ``inference``: the one eval-mode loop of validation, prediction, probe and embeddings;
- ``pretraining`` with the methods of ``ssl`` (MoCo v2, BYOL): self-supervised pretraining;
- ``classifier``: fine-tuning and the supervised baselines.

The steps run channels_last, in the precision that ``precision.resolve`` chooses for the machine
(``auto``: bf16 autocast on a CPU only where bf16 is native and measured faster, else fp32; bf16
on a GPU that supports it, else fp16 with a GradScaler). Each run logs its choice and why, and
its summary records it.
"""

from __future__ import annotations

from pathlib import Path

from ssl_photoz.core.atomic import write_json
from ssl_photoz.learn import inference, ssl
from ssl_photoz.learn.checkpoints import (
    CHECKPOINT_VERSION,
    TRAINING_CODE,
    code_digest,
    load_checkpoint,
    plain,
    run_inputs,
    save_checkpoint,
    store_digest,
)
from ssl_photoz.learn.classifier import (
    MAX_VALIDATIONS,
    classifier_epochs,
    evaluate_classifier,
    train_classifier,
)
from ssl_photoz.learn.pretraining import SCALING_RULE, pretrain, pretrain_batch
from ssl_photoz.learn.runtime import Runtime, setup_runtime

__all__ = [
    "CHECKPOINT_VERSION",
    "MAX_VALIDATIONS",
    "SCALING_RULE",
    "TRAINING_CODE",
    "Runtime",
    "classifier_epochs",
    "code_digest",
    "evaluate_classifier",
    "inference",
    "load_checkpoint",
    "plain",
    "pretrain",
    "pretrain_batch",
    "run_inputs",
    "save_checkpoint",
    "setup_runtime",
    "ssl",
    "store_digest",
    "train_classifier",
    "write_summary",
]


def write_summary(path: Path, summary: dict) -> None:
    write_json(path, summary)
