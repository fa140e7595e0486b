"""Which settings of config section ``cutouts`` count where, and how a verb reads them.

Only what decides the pixels and the store's layout reruns ``plan_shards`` and the jobs
(``PLAN_KEYS``; of the frame source only its own identity, ``SOURCE_KEYS``; of them
``max_missing_fraction`` reruns the jobs alone, ``job_settings``); the machine and
network settings (``MACHINE_KEYS``) reach the jobs at run time through the rule's resources and
rerun nothing; the statistics settings (``STATS_KEYS``) rerun ``stats`` only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# What decides the plan, the pixels and the store's layout: the rules' params (a change re-plans,
# and re-cuts the Zarr shards it changes). Of the frame source, only its own identity counts:
# data_release and rerun for sas, frame_dir for dir (SOURCE_KEYS).
# max_missing_fraction decides only whether a job's result stands: the jobs' params carry it
# (job_settings; a change reruns them, and they keep their Zarr shards), the plan does not.
PLAN_KEYS = (
    "frame_source",
    "shard_size",
    "store_shard",
    "data_release",
    "rerun",
    "frame_dir",
    "max_missing_fraction",
)
SOURCE_KEYS = {"mock": (), "sas": ("data_release", "rerun"), "dir": ("frame_dir",)}
# Machine and network settings: they reach the cut-out jobs at run time (the rule's resources)
# and rerun nothing; they change how frames are fetched, never which frames or their pixels.
MACHINE_KEYS = (
    "sas_url",
    "cache_dir",
    "cache_policy",
    "cache_max_gb",
    "timeout_s",
    "retries",
    "backoff_s",
)
# The channel statistics (rule stats) only.
STATS_KEYS = ("stats_max_images", "seed")


def plan_settings(cutouts_cfg: dict) -> dict:
    """The settings of a (defaulted) cutouts section that decide the plan and the pixels."""
    keys = ("frame_source", "shard_size", "store_shard", *SOURCE_KEYS[cutouts_cfg["frame_source"]])
    return {k: cutouts_cfg[k] for k in keys}


def job_settings(cutouts_cfg: dict) -> dict:
    """The cut-out jobs' params: the plan settings and ``max_missing_fraction``, which decides
    whether a job's result stands (a change reruns the jobs, which keep their Zarr shards, but
    not plan_shards: it is no part of the plan)."""
    gate = cutouts_cfg["max_missing_fraction"]
    return {**plan_settings(cutouts_cfg), "max_missing_fraction": gate}


def machine_settings(cutouts_cfg: dict) -> dict:
    """The machine and network settings of a (defaulted) cutouts section."""
    return {k: cutouts_cfg[k] for k in MACHINE_KEYS}


def stats_settings(cutouts_cfg: dict) -> dict:
    """The settings of a (defaulted) cutouts section that the channel statistics read."""
    return {k: cutouts_cfg[k] for k in STATS_KEYS}


def settings_part(given: dict, keys, source: str = "config") -> dict:
    """The ``keys`` of the cutouts section from ``given`` (the part a rule passes, or the whole
    section): validated against the section's schema, where only the required keys among
    ``keys`` are required, with the schema's defaults filled in."""
    from jsonschema import Draft202012Validator

    from ssl_photoz.core.config import ConfigError, load_schema, with_defaults

    if not isinstance(given, dict):
        raise ConfigError(f"{source}: section 'cutouts' must be a mapping, got {given!r}")
    schema = load_schema()
    section = schema["properties"]["cutouts"]
    part = {
        **section,
        "required": [k for k in section.get("required", []) if k in keys],
        "$defs": schema.get("$defs", {}),
    }
    filled = with_defaults("cutouts", given)
    errors = sorted(
        Draft202012Validator(part).iter_errors(filled), key=lambda e: list(e.absolute_path)
    )
    if errors:
        lines = "\n".join(
            f"  - key '{'.'.join(['cutouts', *map(str, e.absolute_path)])}': {e.message}"
            for e in errors
        )
        raise ConfigError(f"{source} is invalid:\n{lines}")
    return {k: filled[k] for k in keys if k in filled}


def _json_object(text: str, flag: str) -> dict:
    from ssl_photoz.core.config import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{flag} must be a JSON object, got {value!r}")
    return value


def settings_from_cli(
    keys, section_json: str | None = None, config="config.yaml", machine_json: str | None = None
) -> dict:
    """The ``keys`` of the cutouts section as a verb gets them: from ``--section-json`` (the part
    its rule passes, or the whole section) or else the config file, with ``--machine-json``
    (machine and network settings only, from the rule's resources) over either."""
    from ssl_photoz.core.config import ConfigError, load_config

    if section_json:
        given, source = _json_object(section_json, "--section-json"), "--section-json"
    else:
        given, source = load_config(config)["cutouts"], str(config)
    if machine_json:
        machine = _json_object(machine_json, "--machine-json")
        other = sorted(set(machine) - set(MACHINE_KEYS))
        if other:
            raise ConfigError(
                f"--machine-json: {other} are not machine or network settings "
                f"(those are {list(MACHINE_KEYS)})"
            )
        given, source = {**given, **machine}, f"{source} with --machine-json"
    return settings_part(given, keys, source)


def source_identity(cutouts_cfg: dict, sky_dir=None) -> dict:
    """What names the frames the pixels come from: the frame source and its identity keys; for
    ``mock`` the simulated survey's settings (its seed, footprint, depth: what the renderer
    draws from), read from ``sky_dir``/sky.json."""
    kind = cutouts_cfg["frame_source"]
    identity = {"frame_source": kind, **{k: cutouts_cfg[k] for k in SOURCE_KEYS[kind]}}
    if kind == "mock":
        if sky_dir is None:
            raise ValueError("cutouts.frame_source 'mock' needs the simulated survey's sky_dir")
        settings = json.loads((Path(sky_dir) / "sky.json").read_text())["settings"]
        identity["sky"] = _json_digest(settings)
    return identity


def _json_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
