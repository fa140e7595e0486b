"""Only stale stages rerun: dry runs (`snakemake -n`) after one change to a finished tiny run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, snakemake, tool_env

UPSTREAM_OF_TRAINING = {"sky", "query_labeled", "query_unlabeled", "select", "plan_shards"}
CUTOUT_STAGE = {"cutouts", "gather", "stats"}


def planned_jobs(workdir: Path, *args: str, env: dict | None = None) -> dict[str, int]:
    """The job counts a dry run would execute ({} when nothing is to be done)."""
    out = snakemake(workdir, "-n", "--cores", "1", "--profile", "profiles/default", *args, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    if "Nothing to be done" in text:
        return {}
    jobs = {name: int(n) for name, n in re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.MULTILINE)}
    jobs.pop("total", None)
    assert jobs, text[-3000:]
    return jobs


def test_nothing_changed_nothing_reruns(tiny_run):
    assert planned_jobs(tiny_run) == {}


def test_a_finetune_setting_reruns_only_finetuning_and_what_follows(tiny_run, tmp_path):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["finetune"]["lr"] = config["finetune"]["lr"] * 2
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    # The supervised baselines have their own recipe (config section supervised), so they stay:
    # two label fractions x one seed of fine-tuning rerun, and their predictions.
    assert jobs["finetune"] == 2 and "supervised" not in jobs
    assert jobs["predict"] == 2 and "evaluate" in jobs
    assert not (UPSTREAM_OF_TRAINING | CUTOUT_STAGE | {"pretrain", "probe"}) & set(jobs), jobs


def test_a_supervised_setting_reruns_only_the_supervised_baselines(tiny_run, tmp_path):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["supervised"]["lr"] = config["supervised"]["lr"] * 2
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    assert jobs["supervised"] == 2 and jobs["predict"] == 2 and "evaluate" in jobs
    assert not {"finetune", "pretrain", "probe", "baseline_colours"} & set(jobs), jobs
    assert not (UPSTREAM_OF_TRAINING | CUTOUT_STAGE) & set(jobs), jobs


def test_a_pretraining_setting_leaves_the_cutouts_alone(tiny_run, tmp_path):
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["pretrain"]["temperature"] = 0.2
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    assert jobs["pretrain"] == 1 and jobs["finetune"] == 2
    assert "supervised" not in jobs and "baseline_colours" not in jobs
    assert not (UPSTREAM_OF_TRAINING | CUTOUT_STAGE) & set(jobs), jobs


def _edited_package(tmp_path: Path, module: str, edit: str = "\nCODE_CHANGED_BY_TEST = True\n"):
    """A copy of the package with ``edit`` appended to one module, first on PYTHONPATH."""
    copy = tmp_path / "src"
    shutil.copytree(PROJECT_ROOT / "src" / "ssl_photoz", copy / "ssl_photoz")
    path = copy / "ssl_photoz" / module
    path.write_text(path.read_text() + edit)
    return tool_env({"PYTHONPATH": str(copy)})


def test_a_comment_is_not_a_code_change(tiny_run, tmp_path):
    env = _edited_package(tmp_path, "train.py", edit="\n# a comment only\n")
    assert planned_jobs(tiny_run, env=env) == {}


@pytest.mark.parametrize(
    ("module", "reruns", "untouched"),
    [
        (
            "train.py",
            {"pretrain", "finetune", "supervised", "predict", "evaluate"},
            UPSTREAM_OF_TRAINING | CUTOUT_STAGE,
        ),
        (
            "evaluate.py",
            {"evaluate"},
            UPSTREAM_OF_TRAINING | CUTOUT_STAGE | {"pretrain", "finetune", "supervised", "predict"},
        ),
        (
            "frames.py",  # frame sources: the cut-out jobs only, not the shard plan
            CUTOUT_STAGE | {"pretrain", "finetune", "supervised", "predict", "evaluate"},
            UPSTREAM_OF_TRAINING,
        ),
    ],
)
def test_a_code_change_reruns_its_stage_and_dependents_only(
    tiny_run, tmp_path, module, reruns, untouched
):
    jobs = planned_jobs(tiny_run, env=_edited_package(tmp_path, module))
    assert reruns <= set(jobs), jobs
    assert not untouched & set(jobs), jobs


def test_a_deleted_shard_reruns_that_shard_and_what_follows(tiny_run, tmp_path):
    shards = sorted((tiny_run / "results/cutouts/shards").glob("*.json"))
    assert len(shards) >= 2, "the tiny config should plan several shards"
    victim = shards[0]
    kept = tmp_path / victim.name
    shutil.copy2(victim, kept)
    try:
        victim.unlink()
        jobs = planned_jobs(tiny_run)
    finally:
        shutil.copy2(kept, victim)  # the run is shared by other tests
    assert jobs["cutouts"] == 1
    assert {"gather", "stats", "pretrain", "finetune", "evaluate"} <= set(jobs)
    assert not UPSTREAM_OF_TRAINING & set(jobs), jobs
