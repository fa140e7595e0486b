"""Load the pipeline's config and validate it against workflow/schemas/config.schema.yaml.

The same check runs in the Snakefile (on every run) and in every CLI verb, so a bad key or value
stops the work before anything is written, with a message naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


PAPER_CROP = 64  # Hayat et al. (2021): 64 x 64 crops of the 107 x 107 cut-outs


def crop_size(model_cfg: dict) -> int:
    """The crop side of the config section ``model`` (``crop_size``; the paper's 64 when absent):
    the one every training view and evaluation crop of that network takes."""
    return int(model_cfg.get("crop_size", PAPER_CROP))


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error: ValidationError, root: str | None = None) -> str:
    parts = ([root] if root else []) + [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: ValidationError, root: str | None = None) -> str:
    key = _key_path(error, root)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = "at the top level" if key == "(top level)" else f"under '{key}'"
        return f"unknown key(s) {extra} {where}; allowed keys: {allowed}"
    if error.validator == "enum":
        return (
            f"key '{key}': {error.instance!r} is not allowed; choose one of {error.validator_value}"
        )
    if error.validator == "required":
        where = "at the top level" if key == "(top level)" else f"under '{key}'"
        return f"missing key {where}: {error.message}"
    description = schema.get("description")
    hint = f" ({description})" if description else ""
    return f"key '{key}': {error.message}{hint}"


def validate_config(config: dict, source: str = "config") -> dict:
    """Raise ConfigError listing every problem in ``config``; return it unchanged when valid."""
    validator = Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"{source} is invalid:\n{lines}")
    backend = config.get("query", {}).get("backend")
    wanted = {"mock": {"duckdb"}, "sdss": {"skyserver", "casjobs"}}[config["source"]]
    if backend not in wanted:
        raise ConfigError(
            f"{source} is invalid:\n  - key 'query.backend': {backend!r} does not fit "
            f"source {config['source']!r}; choose one of {sorted(wanted)}"
        )
    frame_source = config.get("cutouts", {}).get("frame_source")
    wanted = {"mock": {"mock"}, "sdss": {"sas", "dir"}}[config["source"]]
    if frame_source is not None and frame_source not in wanted:
        raise ConfigError(
            f"{source} is invalid:\n  - key 'cutouts.frame_source': {frame_source!r} does not "
            f"fit source {config['source']!r}; choose one of {sorted(wanted)}"
        )
    finetune, supervised = config.get("finetune", {}), config.get("supervised", {})
    for key in ("n_bins", "z_min", "z_max"):
        if key in finetune and key in supervised and finetune[key] != supervised[key]:
            raise ConfigError(
                f"{source} is invalid:\n  - key 'supervised.{key}': {supervised[key]!r} differs "
                f"from finetune.{key} ({finetune[key]!r}); both kinds must predict over the same "
                f"redshift bins to be compared"
            )
    region = config.get("sky", {}).get("region", {})
    if region and not region["ra_max"] > region["ra_min"]:
        raise ConfigError(
            f"{source} is invalid:\n  - key 'sky.region.ra_max': {region['ra_max']} must be "
            f"greater than sky.region.ra_min ({region['ra_min']})"
        )
    return config


def validate_section(name: str, section: dict, source: str = "config") -> dict:
    """Validate one top-level section (as a rule passes it to the CLI) against its schema."""
    schema = load_schema()
    if name not in schema["properties"]:
        raise ConfigError(f"{source}: unknown config section {name!r}")
    sub = {**schema["properties"][name], "$defs": schema.get("$defs", {})}
    errors = sorted(
        Draft202012Validator(sub).iter_errors(section), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = "\n".join(f"  - {_describe(e, root=name)}" for e in errors)
        raise ConfigError(f"{source} is invalid:\n{lines}")
    return section


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config, apply shallow overrides, validate it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(config).__name__}")
    config.update(overrides or {})
    return validate_config(config, source=str(path))


def label_runs(labels: dict) -> list[tuple[float, int]]:
    """Every (fraction, seed) of the config section ``labels``: each fraction with ``seeds``, and
    the ``lowest_fractions.count`` smallest fractions with ``lowest_fractions.seeds`` as well
    (where a few labels make one seed's result noisy and extra seeds are cheap)."""
    extra = labels.get("lowest_fractions") or {}
    lowest = set(sorted(labels["fractions"])[: extra.get("count", 0)])
    runs = []
    for fraction in labels["fractions"]:
        seeds = list(labels["seeds"])
        if fraction in lowest:
            seeds += [s for s in extra.get("seeds", []) if s not in seeds]
        runs += [(fraction, seed) for seed in seeds]
    return runs
