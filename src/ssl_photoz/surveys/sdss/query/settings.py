"""Which settings of the ``query`` section are whose: the query's identity, or the machine's.

The identity settings (backend, data release, services) reach the query rules as params, so a
change reruns them. The CasJobs waiting and clean-up settings (`MACHINE_KEYS`) only decide how
long a run waits and what it leaves in MyDB, not the rows it writes: they reach the rules as the
resource ``machine`` (workflow/rules/catalog.smk), as the cut-out stage's machine settings do, so
changing them reruns nothing.
"""

from __future__ import annotations

import json

MACHINE_KEYS = (
    "casjobs_max_wait_s",
    "casjobs_poll_interval_s",
    "casjobs_max_poll_interval_s",
    "casjobs_outage_tolerance_s",
    "casjobs_keep_mydb_tables",
)


def identity_settings(query_cfg: dict) -> dict:
    """The settings of a (defaulted) query section that decide the rows: the rules' params."""
    return {k: v for k, v in query_cfg.items() if k not in MACHINE_KEYS}


def machine_settings(query_cfg: dict) -> dict:
    """The waiting and clean-up settings of a (defaulted) query section: the rules' resource."""
    return {k: query_cfg[k] for k in MACHINE_KEYS}


def merge_machine_json(section: dict, machine_json: str | None) -> dict:
    """``section`` with the machine settings of ``--machine-json`` over it (validated later)."""
    from ssl_photoz.core.config import ConfigError

    if not machine_json:
        return dict(section)
    try:
        machine = json.loads(machine_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--machine-json is not valid JSON: {exc}") from exc
    if not isinstance(machine, dict):
        raise ConfigError(f"--machine-json must be a JSON object, got {machine!r}")
    other = sorted(set(machine) - set(MACHINE_KEYS))
    if other:
        raise ConfigError(f"--machine-json holds {other}, which are not query machine settings")
    return {**section, **machine}
