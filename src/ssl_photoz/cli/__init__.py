"""The ``ssl-photoz`` command line: one verb per rule of the Snakemake DAG.

Every verb takes its settings either from a config file (``--config config.yaml``, validated in
full) or, as the Snakemake rules call it, from the one config section it needs as JSON
(``--section-json``), validated against that section's schema. Rules pass only their own section
so that Snakemake's params trigger reruns exactly the stages whose settings changed.

One module per stage, as workflow/rules/*.smk: each holds its verbs (``cmd_*``) and the parsers
of them (its ``VERBS``); :mod:`.common` what they share. A verb imports what it needs when it
runs (torch only in the verbs that train or embed), so that the command line starts fast.
"""

from __future__ import annotations

import argparse
import sys

from ssl_photoz import __version__
from ssl_photoz.cli import (
    catalog,
    cutouts,
    evaluate,
    explore,
    learn,
    machine,
    probe,
    report,
    similarity,
    sky,
)
from ssl_photoz.cli.common import log
from ssl_photoz.core.config import ConfigError
from ssl_photoz.core.progress import setup_logging

STAGES = (sky, catalog, cutouts, learn, evaluate, probe, similarity, explore, report, machine)

# The order of the verbs in --help (the DAG's, as it has always been); a verb that a stage adds
# and this list lacks comes after these.
VERB_ORDER = (
    "sky",
    "query-labeled",
    "query-unlabeled",
    "select",
    "plan-shards",
    "cutouts",
    "gather",
    "pretrain",
    "finetune",
    "supervised",
    "predict",
    "baseline-colours",
    "probe",
    "evaluate",
    "embed",
    "similar",
    "similarity",
    "explore",
    "figures",
    "summary",
    "import-checkpoint",
    "stats",
    "gpu-run",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-photoz",
        description="Self-supervised photometric redshifts (Hayat et al. 2021), stage by stage.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    adders = {verb: add for stage in STAGES for verb, add in stage.VERBS.items()}
    later = [verb for verb in adders if verb not in VERB_ORDER]
    for verb in [*(v for v in VERB_ORDER if v in adders), *later]:
        adders[verb](sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log", None))
    from ssl_photoz.surveys.sdss.query.http_errors import RemoteQueryError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError, RemoteQueryError) as exc:
        # A remote service's failure (no token, refused, gave up) is said in one line too.
        log.error("%s", exc)
        print(f"ssl-photoz {args.verb}: error: {exc}", file=sys.stderr)
        return 2
