"""The config is validated on every run; errors name the key and what is allowed."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import PROJECT_ROOT

from ssl_photoz.core.config import ConfigError, load_config, validate_config, validate_section


@pytest.fixture()
def default_config():
    return load_config(PROJECT_ROOT / "config.yaml")


def test_default_config_is_valid(default_config):
    assert default_config["source"] == "mock"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(colour="blue"), "unknown key(s) ['colour'] at the top level"),
        (lambda c: c.update(source="web"), "key 'source': 'web' is not allowed; choose one of"),
        (lambda c: c["sky"]["region"].update(n_runs=0), "key 'sky.region.n_runs'"),
        (lambda c: c["sky"].pop("seed"), "missing key under 'sky': 'seed'"),
        (lambda c: c["sky"]["region"].update(ra_max=1.0), "key 'sky.region.ra_max'"),
        (lambda c: c["sky"].update(catalog_r_limit="bright"), "key 'sky.catalog_r_limit'"),
        (lambda c: c["sky"]["model"].update(red={"m_star": 3}), "key 'sky.model.red.m_star'"),
        # Several fine-tuning arms need the held-out slice that chooses the headline one.
        (lambda c: c["finetune"].update(arms=["full", "frozen"]), "key 'arm_selection.holdout'"),
        (lambda c: c["finetune"].update(arms=["full", "bogus"]), "key 'finetune.arms.1'"),
        (
            lambda c: c["finetune"].update(arms=["lpft"], epochs=1),
            "key 'finetune.epochs': 1 with arm lpft",
        ),
        (lambda c: c["finetune"].update(optimizer="rmsprop"), "key 'finetune.optimizer'"),
    ],
)
def test_bad_config_names_the_key(default_config, mutate, expected):
    config = copy.deepcopy(default_config)
    config["sky"].setdefault("model", {})
    mutate(config)
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="config.yaml")
    assert expected in str(err.value)
    assert "config.yaml is invalid" in str(err.value)


def test_section_validation_names_the_section(default_config):
    sky = copy.deepcopy(default_config["sky"])
    sky["seed"] = -1
    with pytest.raises(ConfigError, match=r"key 'sky.seed': -1 is less than the minimum"):
        validate_section("sky", sky)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sky: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)


def test_every_config_in_configs_is_valid():
    for path in sorted((PROJECT_ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_label_runs_add_seeds_to_the_lowest_fractions(default_config):
    from ssl_photoz.core.config import label_runs

    labels = {"fractions": [1.0, 0.02, 0.05, 0.4], "seeds": [0]}
    assert label_runs(labels) == [(1.0, 0), (0.02, 0), (0.05, 0), (0.4, 0)]
    labels["lowest_fractions"] = {"count": 2, "seeds": [0, 1, 2]}
    assert label_runs(labels) == [
        (1.0, 0), (0.02, 0), (0.02, 1), (0.02, 2), (0.05, 0), (0.05, 1), (0.05, 2), (0.4, 0)
    ]  # fmt: skip
    bad = {
        **default_config,
        "labels": {**default_config["labels"], "lowest_fractions": {"count": 0, "seeds": [1]}},
    }
    with pytest.raises(ConfigError, match="lowest_fractions"):
        validate_config(bad)


# --- one source of defaults ---------------------------------------------------------------


def _defaulted_keys(schema: dict) -> dict[str, object]:
    """Every property name of the schema that has a default, with that default."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            for name, sub in (node.get("properties") or {}).items():
                if isinstance(sub, dict) and "default" in sub:
                    found[name] = sub["default"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def test_no_module_restates_a_schema_default():
    """`.get("key", default)` on a key the schema defaults restates the default (and drifts
    from it): the loader fills every default, so the code indexes the key instead."""
    import ast

    from ssl_photoz.core.config import load_schema

    keys = _defaulted_keys(load_schema())
    assert {"crop_size", "bn_splits", "casjobs_url", "anomaly_k"} <= set(keys)
    offences = []
    for path in sorted((PROJECT_ROOT / "src" / "ssl_photoz").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "setdefault")
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in keys
            ):
                continue
            where = f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}"
            offences.append(f"{where}: {ast.unparse(node)}")
    assert not offences, "schema defaults restated in code:\n" + "\n".join(offences)


def test_the_loader_fills_every_default_for_snakemake_and_the_cli_alike(tmp_path):
    from ssl_photoz.core.config import load_schema, prepare_config

    raw = yaml.safe_load((PROJECT_ROOT / "configs" / "paper.yaml").read_text())
    for section in ("explore", "similarity", "probe"):
        raw.pop(section, None)
    raw["query"].pop("casjobs_url", None)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw))
    loaded = load_config(path)  # the CLI's --config
    filled = prepare_config(copy.deepcopy(raw))  # the Snakefile's
    assert loaded == filled
    schema = load_schema()["properties"]
    assert loaded["query"]["casjobs_url"] == schema["query"]["properties"]["casjobs_url"]["default"]
    assert loaded["similarity"]["anomaly_k"] == 10 and loaded["model"]["crop_size"] == 64
    assert "width" not in loaded["model"]  # resnet50 has no width to inherit
    # --section-json: one section filled the same way
    assert validate_section("query", raw["query"]) == loaded["query"]
    assert validate_section("similarity", {}) == loaded["similarity"]


def test_width_belongs_to_resnet_small_only(default_config):
    config = copy.deepcopy(default_config)
    config["model"] = {"arch": "resnet50", "width": 32}
    with pytest.raises(ConfigError, match="model.width"):
        validate_config(config)
    config["model"] = {"arch": "resnet_small"}
    with pytest.raises(ConfigError, match="width"):
        validate_config(config)
