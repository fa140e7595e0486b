"""Verbs pretrain, finetune, supervised and import-checkpoint (workflow/rules/learn.smk): the
networks."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from ssl_photoz.cli.common import _sections, add_precision, log


def _training_runtime(args: argparse.Namespace, model_cfg: dict):
    from ssl_photoz.learn.train import setup_runtime

    return setup_runtime(args.device, args.num_workers, args.precision, timing_network=model_cfg)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Self-supervised pretraining (pretrain.method: MoCo v2, the paper's, or BYOL) on the
    unlabeled pool plus the training images."""
    from ssl_photoz.learn.train import pretrain, write_summary

    cfg = _sections(args, ("model", "pretrain"))
    summary = pretrain(
        cfg["model"],
        cfg["pretrain"],
        Path(args.store),
        Path(args.stats),
        Path(args.out),
        _training_runtime(args, cfg["model"]),
        max_epochs=args.max_epochs,
        manifest=Path(args.manifest) if args.manifest else None,
    )
    write_summary(Path(args.summary), summary)
    return 0


def _classifier(args: argparse.Namespace, pretrained: Path | None) -> int:
    from ssl_photoz.core import arms
    from ssl_photoz.learn.train import train_classifier, write_summary

    recipe = "finetune" if pretrained is not None else "supervised"
    cfg = _sections(args, ("model", recipe, "arm_selection"))
    if pretrained is not None:  # the arm's own settings only (ssl_photoz.core.arms)
        cfg[recipe] = {**arms.recipe(cfg[recipe], args.arm), "arm": args.arm}
    if not 0.0 < args.fraction <= 1.0:
        raise ValueError(f"--fraction {args.fraction}: must lie in (0, 1]")
    summary = train_classifier(
        cfg["model"],
        cfg[recipe],
        Path(args.store),
        Path(args.out),
        _training_runtime(args, cfg["model"]),
        fraction=args.fraction,
        seed=args.seed,
        pretrained=pretrained,
        max_epochs=args.max_epochs,
        manifest=Path(args.manifest) if args.manifest else None,
        heldout=cfg["arm_selection"]["holdout"],
    )
    write_summary(Path(args.summary), summary)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune the pretrained backbone on a fraction of the labels."""
    return _classifier(args, Path(args.pretrained))


def cmd_supervised(args: argparse.Namespace) -> int:
    """The supervised baseline: the same network from scratch, its own recipe (section
    ``supervised``: one learning rate for every layer)."""
    return _classifier(args, None)


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """Import the authors' released models (mahayat/ssl-sky-surveys) into our checkpoint format:
    MoCo-pretrained ones become a ``pretrain`` checkpoint whose backbone ``finetune`` can start
    from; fine-tuned / supervised ones become a classifier checkpoint."""
    from ssl_photoz.learn.models import load_authors_checkpoint, read_authors_checkpoint
    from ssl_photoz.learn.train import save_checkpoint

    source = Path(args.checkpoint)
    if not source.exists():
        raise FileNotFoundError(f"{source}: checkpoint not found")
    # weights_only: plain data, tensors and the few types their files hold; any other global
    # (a function the pickle would call) is refused with a ValueError naming it, never run.
    raw = read_authors_checkpoint(source)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a dict of weights, got {type(raw).__name__}")
    state = load_authors_checkpoint(raw, arch=args.arch)
    model_cfg = {"arch": args.arch}
    imported = {"imported_from": str(source), "config": {"model": model_cfg}}
    if any(k.startswith("head.") for k in state):
        n_bins = int(state["head.weight"].shape[0])
        out = {**imported, "kind": "classifier", "model": state, "n_bins": n_bins}
        log.info("%s: classifier with %d bins", source, n_bins)
    else:
        out = {**imported, "kind": "pretrain", "backbone": state}
        log.info("%s: MoCo-pretrained %s backbone", source, args.arch)
    save_checkpoint(Path(args.out), out)
    return 0


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
    p.add_argument("--sections-json", help="the model and recipe sections as JSON (rules)")
    p.add_argument("--log", type=Path, help="also write the log to this file")
    p.add_argument("--store", required=True, help="the cut-out store (Zarr)")
    p.add_argument(
        "--manifest",
        help="the store's manifest (gather's): part of the store's identity, so that a "
        "checkpoint of a run on another store is not resumed",
    )
    p.add_argument("--out", required=True, help="the final model checkpoint")
    p.add_argument("--summary", required=True, help="training history (JSON)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (machine setting)")
    add_precision(p)
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers")
    p.add_argument("--max-epochs", type=int, help="stop after this many epochs (resumable)")


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="self-supervised pretraining, MoCo v2 or BYOL (rule pretrain)"
    )
    _add_training(p)
    p.add_argument("--stats", required=True, help="per-channel MAD (stats rule's JSON)")
    p.set_defaults(func=cmd_pretrain)


def _add_classifier(sub: argparse._SubParsersAction, verb: str, func, text: str) -> None:
    p = sub.add_parser(verb, help=text)
    _add_training(p)
    p.add_argument("--fraction", type=float, required=True, help="label fraction in (0, 1]")
    p.add_argument("--seed", type=int, required=True)
    if verb == "finetune":
        p.add_argument("--pretrained", required=True, help="pretraining checkpoint")
        p.add_argument(
            "--arm",
            default="full",
            help="fine-tuning arm (ssl_photoz.core.arms: full, lpft, frozen; default %(default)s)",
        )
    p.set_defaults(func=func)


def _add_import_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-checkpoint", help="import the paper authors' released models")
    p.add_argument("checkpoint", help="their .pth/.pth.tar file")
    p.add_argument("--arch", default="resnet50", choices=["resnet50", "resnet18", "resnet_small"])
    p.add_argument("--out", required=True, help="our checkpoint file to write")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_import_checkpoint)


VERBS = {
    "pretrain": _add_pretrain,
    "finetune": partial(
        _add_classifier,
        verb="finetune",
        func=cmd_finetune,
        text="fine-tune the pretrained backbone (rule finetune)",
    ),
    "supervised": partial(
        _add_classifier,
        verb="supervised",
        func=cmd_supervised,
        text="supervised baseline from scratch (rule supervised)",
    ),
    "import-checkpoint": _add_import_checkpoint,
}
