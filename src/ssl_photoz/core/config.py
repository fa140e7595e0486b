"""Load the pipeline's config: fill the schema's defaults, then validate it.

workflow/schemas/config.schema.yaml is the only place a default is written. One loader serves the
Snakefile (``prepare_config``, on every run) and every CLI verb (``load_config`` for
``--config FILE``, ``validate_section`` for the ``--section-json`` the rules pass), so a key left
out means the same thing everywhere, and a bad key or value stops the work before anything is
written, with a message naming the key and what is allowed.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def crop_size(model_cfg: dict) -> int:
    """The crop side of a config section ``model`` (``model.crop_size``, its schema default where
    absent, as in a checkpoint written before the key existed): the one every training view and
    evaluation crop of that network takes."""
    return int(with_defaults("model", model_cfg)["crop_size"])


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


@cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_schema() -> dict:
    return copy.deepcopy(_schema())


def _resolve(schema: dict, defs: dict) -> dict:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return defs[ref.removeprefix("#/$defs/")]
    return schema


def _fill(value, schema: dict, defs: dict):
    """Fill the schema's defaults into ``value`` in place: every absent property that has a
    ``default`` gets a copy of it, and nested objects are filled in turn (an object's default,
    e.g. ``{}`` for an optional section, is filled too). A default under the ``then`` of an
    ``allOf`` entry applies where its ``if`` holds of the filled object (the settings section of
    the chosen pretraining method, say), filled from the property's own schema."""
    schema = _resolve(schema, defs)
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        sub = _resolve(sub, defs)
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            _fill(value[key], sub, defs)
    for branch in schema.get("allOf", []):
        if "then" not in branch or not Draft202012Validator(branch.get("if", {})).is_valid(value):
            continue
        for key, sub in branch["then"].get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
                _fill(value[key], properties.get(key, {}), defs)
    return value


def fill_defaults(config: dict) -> dict:
    """``config`` with every schema default filled in (in place; returned for convenience)."""
    schema = _schema()
    return _fill(config, schema, schema.get("$defs", {}))


def _section_schema(name: str, source: str = "config") -> dict:
    schema = _schema()
    if name not in schema["properties"]:
        raise ConfigError(f"{source}: unknown config section {name!r}")
    return {**schema["properties"][name], "$defs": schema.get("$defs", {})}


def with_defaults(name: str, section: dict) -> dict:
    """A copy of the config section ``name`` with every schema default filled (not validated)."""
    return _fill(copy.deepcopy(section), _section_schema(name), _schema().get("$defs", {}))


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
    if error.validator == "not" and isinstance(error.validator_value, dict):
        forbidden = error.validator_value.get("required", [])
        if forbidden:
            keys = ", ".join(f"'{key}.{name}'" for name in forbidden)
            return (
                f"key {keys} does not apply here ({error.instance!r}); remove it: "
                + (schema.get("properties", {}).get(forbidden[0], {}).get("description") or "")
            ).rstrip(": ")
    if error.validator == "required":
        where = "at the top level" if key == "(top level)" else f"under '{key}'"
        return f"missing key {where}: {error.message}"
    description = schema.get("description")
    hint = f" ({description})" if description else ""
    return f"key '{key}': {error.message}{hint}"


def validate_config(config: dict, source: str = "config") -> dict:
    """Raise ConfigError listing every problem in ``config``; return it unchanged when valid."""
    validator = Draft202012Validator(_schema())
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
    chosen_arms = finetune.get("arms") or []  # both filled by the schema's defaults
    if len(chosen_arms) > 1 and not (config.get("arm_selection") or {}).get("holdout"):
        raise ConfigError(
            f"{source} is invalid:\n  - key 'arm_selection.holdout': 0 with finetune.arms "
            f"{chosen_arms}; the headline arm is chosen on a held-out slice of the training "
            f"labels, never on validation: give it a fraction (e.g. 0.1)"
        )
    if "lpft" in chosen_arms and finetune.get("epochs", 2) < 2:
        raise ConfigError(
            f"{source} is invalid:\n  - key 'finetune.epochs': {finetune['epochs']} with arm "
            f"lpft, whose head phase and fine-tuning phase need an epoch each (at least 2)"
        )
    region = config.get("sky", {}).get("region", {})
    if region and not region["ra_max"] > region["ra_min"]:
        raise ConfigError(
            f"{source} is invalid:\n  - key 'sky.region.ra_max': {region['ra_max']} must be "
            f"greater than sky.region.ra_min ({region['ra_min']})"
        )
    return config


def validate_section(name: str, section: dict, source: str = "config") -> dict:
    """One top-level section (as a rule passes it to the CLI): its defaults filled, validated
    against its schema; returns the filled copy."""
    sub = _section_schema(name, source)
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping, got {section!r}")
    section = with_defaults(name, section)
    errors = sorted(
        Draft202012Validator(sub).iter_errors(section), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = "\n".join(f"  - {_describe(e, root=name)}" for e in errors)
        raise ConfigError(f"{source} is invalid:\n{lines}")
    return section


def prepare_config(config: dict, source: str = "config") -> dict:
    """The whole config as every stage sees it: defaults filled (in place), then validated."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(config).__name__}")
    return validate_config(fill_defaults(config), source=source)


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config, apply shallow overrides, fill its defaults and validate it."""
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
    return prepare_config(config, source=str(path))


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
