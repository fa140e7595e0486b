"""Verbs predict, baseline-colours and evaluate (workflow/rules/evaluate.smk): the photo-z of
every model (networks and catalogue baselines), and their metrics."""

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
    """A catalogue baseline's photo-z (the colours 10-NN by default) at one label fraction, on
    the image models' training and validation objects."""
    from ssl_photoz.baselines.features import RedshiftBins
    from ssl_photoz.baselines.run import predict_baseline
    from ssl_photoz.core import kinds

    kind = kinds.get(args.baseline)
    if kind.image:
        raise SystemExit(f"{args.baseline} is a network, not a catalogue baseline")
    settings = _sections(args, (kind.section,))[kind.section]
    bins = None
    if kind.pdf:  # over the networks' bins: --pdf-bins (the rule), else the config's finetune
        if args.pdf_bins is not None:
            n_bins, z_min, z_max = args.pdf_bins
        else:
            finetune = _sections(args, ("finetune",))["finetune"]
            n_bins, z_min, z_max = (finetune[k] for k in ("n_bins", "z_min", "z_max"))
        bins = RedshiftBins(int(n_bins), z_min, z_max)
    objects = _read_parquet(args.objects, "objects table")
    usable = None
    if args.store:
        from ssl_photoz.learn.data import open_store

        store = open_store(Path(args.store))
        usable = store.objid[store.ok]
    n = predict_baseline(
        kind.name, objects, Path(args.out), settings=settings, bins=bins,
        fraction=args.fraction, usable_objids=usable, heldout=args.heldout,
    )  # fmt: skip
    log.info(
        "%s (%s, label fraction %g): %d validation predictions -> %s",
        kind.label,
        settings,
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
    p = sub.add_parser(
        "baseline-colours", help="a catalogue baseline's photo-z (rule baseline_colours)"
    )
    p.add_argument(
        "--baseline",
        default="colours_knn",
        help="the registered baseline (ssl_photoz.baselines.registry; default: %(default)s)",
    )
    p.add_argument("--objects", required=True)
    p.add_argument("--out", required=True)
    add_config(p, "of the baseline (its kind's section, e.g. baseline_colours)")
    p.add_argument(
        "--pdf-bins",
        nargs=3,
        type=float,
        metavar=("N_BINS", "Z_MIN", "Z_MAX"),
        help="the networks' redshift bins, for a baseline with a PDF (default: the config's "
        "finetune section)",
    )
    p.add_argument(
        "--fraction", type=float, default=1.0, help="label fraction: train on fraction_rank < it"
    )
    p.add_argument(
        "--heldout",
        type=float,
        default=0.0,
        help="the arm-selection slice of the training labels to leave out, as the networks do "
        "(the rule passes arm_selection.holdout; default %(default)s: none)",
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
