"""The config is validated on every run; errors name the key and what is allowed."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import PROJECT_ROOT

from ssl_photoz.config import ConfigError, load_config, validate_config, validate_section


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
    from ssl_photoz.config import label_runs

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
