"""Verbs predict, baseline-colours and evaluate (workflow/rules/evaluate.smk): the photo-z of
every model, and their metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_photoz.cli.common import _read_parquet, _sections, add_config, add_precision, log


def cmd_predict(args: argparse.Namespace) -> int:
    """z_p and the PDF of every validation object from one trained classifier."""
    from ssl_photoz.evaluate.predict import predict_classifier

    n = predict_classifier(
        Path(args.model), Path(args.store), Path(args.out), args.device, args.precision
    )
    log.info("%s: %d validation predictions -> %s", args.model, n, args.out)
    return 0


def cmd_baseline_colours(args: argparse.Namespace) -> int:
    """The colours-only 10-nearest-neighbour photo-z at one label fraction, on the image models'
    training and validation objects."""
    from ssl_photoz.evaluate.predict import predict_colours

    k = _sections(args, ("baseline_colours",))["baseline_colours"]["k"]
    objects = _read_parquet(args.objects, "objects table")
    usable = None
    if args.store:
        from ssl_photoz.learn.data import open_store

        store = open_store(Path(args.store))
        usable = store.objid[store.ok]
    n = predict_colours(objects, Path(args.out), k=k, fraction=args.fraction, usable_objids=usable)
    log.info(
        "colours kNN (k=%d, label fraction %g): %d validation predictions -> %s",
        k,
        args.fraction,
        n,
        args.out,
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """sigma_MAD, eta and bias of every model, with bootstrap intervals and seed spread."""
    from ssl_photoz.evaluate.scores import evaluate

    cfg = _sections(args, ("evaluate", "finetune"))
    bins, pdf_bins = cfg["evaluate"], cfg["finetune"]  # the classifiers' PDF bins: finetune's
    objects = _read_parquet(args.objects, "objects table")
    metrics = evaluate(
        [Path(p) for p in args.predictions],
        objects,
        Path(args.out_dir),
        z_min=pdf_bins["z_min"],
        z_max=pdf_bins["z_max"],
        z_bins=bins["z_bins"],
        r_bins=bins["r_bins"],
        min_objects=bins["min_objects"],
    )
    print(metrics[["model", "n", "sigma_mad", "eta_percent", "bias"]].to_string(index=False))
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="validation predictions of one model (rule predict)")
    p.add_argument("--model", required=True, help="a finetune/supervised checkpoint")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True, help="predictions (Parquet)")
    p.add_argument("--device", default="cpu")
    add_precision(p)
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_predict)


def _add_baseline_colours(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline-colours", help="colours-only kNN photo-z (rule baseline_colours)")
    p.add_argument("--objects", required=True)
    p.add_argument("--out", required=True)
    add_config(p, "baseline_colours")
    p.add_argument(
        "--fraction", type=float, default=1.0, help="label fraction: train on fraction_rank < it"
    )
    p.add_argument(
        "--store", help="the cut-out store: only objects with a good cut-out (as the image models)"
    )
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_baseline_colours)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="photo-z metrics of every model (rule evaluate)")
    p.add_argument("--objects", required=True)
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--out-dir", required=True)
    add_config(p, "evaluate and finetune (the PDF bins)")
    p.add_argument("--log", type=Path)
    p.set_defaults(func=cmd_evaluate)


VERBS = {
    "predict": _add_predict,
    "baseline-colours": _add_baseline_colours,
    "evaluate": _add_evaluate,
}
