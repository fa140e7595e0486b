"""The conda environments list exactly pyproject.toml's dependencies, with the same bounds."""

from __future__ import annotations

import re
import tomllib

import yaml
from conftest import PROJECT_ROOT

# conda-forge names that differ from PyPI's.
CONDA_TO_PYPI = {"pytorch": "torch", "python-duckdb": "duckdb"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, requirement
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _pyproject() -> dict[str, str]:
    data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return dict(_split(r) for r in data["project"]["dependencies"])


def _conda_env(path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    out = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item in ("pip",) or item.startswith("python="):
                continue
            name, spec = _split(item)
            out[CONDA_TO_PYPI.get(name, name)] = spec
    return out


def test_every_env_matches_pyproject():
    wanted = _pyproject()
    envs = sorted((PROJECT_ROOT / "envs").glob("*.yaml"))
    assert envs, "no conda environment files in envs/"
    for path in envs:
        have = _conda_env(path)
        assert have == wanted, (
            f"{path.name} drifted from pyproject.toml: missing "
            f"{sorted(set(wanted) - set(have))}, extra {sorted(set(have) - set(wanted))}, "
            f"different bounds {sorted(k for k in wanted if k in have and have[k] != wanted[k])}"
        )
