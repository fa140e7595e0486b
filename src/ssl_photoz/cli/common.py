"""What the verbs share (as workflow/rules/common.smk for the rules): the config sections a verb
reads, the tables it reads, the JSON it writes, and the options several verbs take."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssl_photoz.core.config import ConfigError, load_config, validate_section

log = logging.getLogger("ssl_photoz")


def _section(args: argparse.Namespace, name: str) -> dict:
    if args.section_json:
        try:
            section = json.loads(args.section_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--section-json is not valid JSON: {exc}") from exc
        return validate_section(name, section, source="--section-json")
    return load_config(args.config)[name]


def _sections(args: argparse.Namespace, names: tuple[str, ...]) -> dict:
    """Several config sections, from --sections-json (the rules) or the config file."""
    if args.sections_json:
        try:
            given = json.loads(args.sections_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--sections-json is not valid JSON: {exc}") from exc
        missing = [n for n in names if n not in given]
        if missing:
            raise ConfigError(f"--sections-json lacks the section(s) {missing}")
        return {n: validate_section(n, given[n], source="--sections-json") for n in names}
    config = load_config(args.config)
    return {n: config[n] for n in names}


def _whole_config(args: argparse.Namespace) -> dict:
    """The whole config, from --config-json (the summary rule: the config as run) or the file."""
    from ssl_photoz.core.config import prepare_config

    if args.config_json:
        try:
            given = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config-json is not valid JSON: {exc}") from exc
        return prepare_config(given, source="--config-json")
    return load_config(args.config)


def _read_table(path: str, what: str):
    import pandas as pd

    try:
        return pd.read_csv(path, sep="\t")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: the {what} is missing") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: the {what} is not a readable TSV ({err})") from err


def _read_parquet(path: str, what: str):
    import pandas as pd

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: cannot read the {what} as Parquet: {exc}") from exc


def _write_json_atomic(path: Path, data: dict) -> None:
    from ssl_photoz.core.atomic import write_json

    write_json(path, data)


def add_config(p: argparse.ArgumentParser, sections: str) -> None:
    """--config and --sections-json: a verb that reads several sections."""
    p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
    p.add_argument(
        "--sections-json", help=f"the config sections {sections} as JSON (used by the rule)"
    )


def add_common(p: argparse.ArgumentParser) -> None:
    """--config, --section-json and --log: a verb that reads its one section."""
    p.add_argument("--config", default="config.yaml", help="config file (default: %(default)s)")
    p.add_argument("--section-json", help="this verb's config section as JSON (used by the rules)")
    p.add_argument("--log", type=Path, help="also write the log to this file")


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="machine setting (default: %(default)s: bf16 on a CPU only where native and "
        "measured faster, else fp32; bf16 on a GPU that has it, else fp16)",
    )


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (SLURM's time limit, a cancelled job) raises SystemExit(143) instead of killing
    the process outright, so every ``finally`` runs: the atomic writers remove their .partial
    files, the CasJobs job record already written stays for a rerun to reattach, and a cut-out
    job's scratch (its decompressed frames) is removed."""

    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
