"""Only stale stages rerun: dry runs (`snakemake -n`) after one change to a finished tiny run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN, PROJECT_ROOT, snakemake, tool_env

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


def test_a_setting_of_an_arm_not_run_reruns_nothing(tiny_run, tmp_path):
    """The tiny run's one arm (full) reads neither lpft's nor frozen's settings, nor SGD's
    under Adam: its jobs hold their own arm's recipe (ssl_photoz.core.arms.recipe)."""
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["finetune"].get("arms", ["full"]) == ["full"]
    config["finetune"].update(
        lpft_head_fraction=0.25, probe_hidden=64, sgd={"momentum": 0.5, "milestones": [0.5]}
    )
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    assert not {"finetune", "supervised", "predict", "baseline_colours"} & set(jobs), jobs


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
    env = _edited_package(tmp_path, "learn/train.py", edit="\n# a comment only\n")
    assert planned_jobs(tiny_run, env=env) == {}


@pytest.mark.parametrize(
    ("module", "reruns", "untouched"),
    [
        (
            "learn/train.py",
            {"pretrain", "finetune", "supervised", "predict", "evaluate"},
            UPSTREAM_OF_TRAINING | CUTOUT_STAGE,
        ),
        (
            "evaluate/scores.py",
            {"evaluate"},
            UPSTREAM_OF_TRAINING | CUTOUT_STAGE | {"pretrain", "finetune", "supervised", "predict"},
        ),
        (
            "surveys/sdss/frames.py",  # frame sources: the cut-out jobs only, not the shard plan
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


# -- the cut-out stage (issue 19): only what makes the pixels re-plans or re-cuts -----------------
def _with_cutouts(tiny_run: Path, tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    config["cutouts"].update(changes)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    return changed


def _copy_of_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run (mtimes kept) for tests that run jobs."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, symlinks=True)
    return copy


def _shard_files(store: Path) -> dict:
    """Every Zarr shard file of the store: (inode, mtime_ns, bytes)."""
    return {
        str(p.relative_to(store)): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((store / "images" / "c").rglob("*"))
        if p.is_file()
    }


def _run_to_manifest(run: Path, *args: str, env: dict | None = None) -> str:
    out = snakemake(
        run, "results/cutouts/manifest.json", "--cores", "2", "--profile", "profiles/default",
        *args, env=env,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    return text


def _cutout_logs(run: Path) -> list[str]:
    return [p.read_text() for p in sorted((run / "results/logs/cutouts").glob("*.log"))]


def test_machine_and_network_settings_rerun_nothing_yet_reach_the_jobs(tiny_run, tmp_path):
    changed = _with_cutouts(
        tiny_run, tmp_path, retries=9, timeout_s=7.5, backoff_s=0.5,
        cache_dir="elsewhere/frames", sas_url="http://mirror.invalid/sas",
        cache_policy="keep", cache_max_gb=3.5,
    )  # fmt: skip
    # Only summary.md, which shows the whole config as run (report.smk), is redone.
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    assert set(jobs) <= {"summary", "all"}, jobs
    # A cut-out job run now gets them on its command line (the rule's resource `machine`).
    out = snakemake(
        tiny_run, "-n", "--cores", "1", "--profile", "profiles/default",
        "--configfile", str(changed), "--forcerun", "cutouts",
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    commands = [line for line in text.splitlines() if "ssl-photoz cutouts" in line]
    assert commands, text[-3000:]
    for line in commands:
        assert "--machine-json" in line and '"retries": 9' in line and '"timeout_s": 7.5' in line
        assert "elsewhere/frames" in line and "http://mirror.invalid/sas" in line
        assert '"cache_policy": "keep"' in line and '"cache_max_gb": 3.5' in line


def test_the_missing_field_limit_reruns_the_jobs_not_the_plan(tiny_run, tmp_path):
    """cutouts.max_missing_fraction decides whether a job's result stands: the jobs rerun (and
    keep their Zarr shards, as for any rerun with the same plan), plan_shards does not."""
    changed = _with_cutouts(tiny_run, tmp_path, max_missing_fraction=0.2)
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    assert jobs.get("cutouts", 0) >= 1 and "plan_shards" not in jobs, jobs


def test_a_statistics_setting_reruns_the_statistics_and_what_follows_only(tiny_run, tmp_path):
    changed = _with_cutouts(tiny_run, tmp_path, stats_max_images=5)
    jobs = planned_jobs(tiny_run, "--configfile", str(changed))
    assert jobs["stats"] == 1 and {"pretrain", "finetune", "predict", "evaluate"} <= set(jobs)
    assert not (UPSTREAM_OF_TRAINING | {"cutouts", "gather"}) & set(jobs), jobs
    # ... and the rerun gives other statistics (5 images, not all of them).
    out = tmp_path / "stats.json"
    subprocess.run(
        [
            str(BIN / "ssl-photoz"), "stats", "--section-json",
            json.dumps({"stats_max_images": 5, "seed": 0}),
            "--store", str(tiny_run / "results/cutouts.zarr"), "--out", str(out),
        ],
        check=True, env=tool_env(), capture_output=True,
    )  # fmt: skip
    old = json.loads((tiny_run / "results/cutouts/stats.json").read_text())
    new = json.loads(out.read_text())
    assert new["n_images"] == 5 < old["n_images"] and new["mad"] != old["mad"]


def test_a_code_edit_replans_but_keeps_the_store_and_its_shards(tiny_run, tmp_path):
    """The cut-out stage edited outside what cut_shard runs: plan_shards and the jobs rerun (their
    code param), the plan comes out the same, the store and every Zarr shard file stay as they
    were."""
    run = _copy_of_run(tiny_run, tmp_path)
    env = _edited_package(tmp_path, "cutouts/plan.py")
    jobs = planned_jobs(run, "results/cutouts/manifest.json", env=env)
    assert {"plan_shards", "gather"} <= set(jobs), jobs  # the jobs follow the checkpoint
    store = run / "results/cutouts.zarr"
    before = _shard_files(store)
    plan = (run / "results/cutouts/plan.json").read_text()
    statuses = {p.name: p.read_text() for p in (run / "results/cutouts/shards").glob("*.json")}
    assert len(before) >= 2 and len(statuses) >= 2
    text = _run_to_manifest(run, env=env)
    assert "checkpoint plan_shards:" in text and "rule cutouts:" in text and "rule gather:" in text
    assert (run / "results/cutouts/plan.json").read_text() == plan
    assert _shard_files(store) == before  # same inodes, mtimes and bytes: nothing rewritten
    assert all("kept as cut before" in log for log in _cutout_logs(run))
    after = {p.name: p.read_text() for p in (run / "results/cutouts/shards").glob("*.json")}
    assert after == statuses
    assert "store results/cutouts.zarr: kept" in (run / "results/logs/plan_shards.log").read_text()


def test_another_job_size_replans_and_reruns_the_jobs_but_re_cuts_nothing(tiny_run, tmp_path):
    """shard_size groups objects into jobs; no pixel and no Zarr shard file depends on it."""
    run = _copy_of_run(tiny_run, tmp_path)
    changed = _with_cutouts(tiny_run, tmp_path, shard_size=64)  # tiny.yaml: 32
    assert {"plan_shards", "gather"} <= set(
        planned_jobs(run, "results/cutouts/manifest.json", "--configfile", str(changed))
    )
    store = run / "results/cutouts.zarr"
    before = _shard_files(store)
    _run_to_manifest(run, "--configfile", str(changed))
    plan = json.loads((run / "results/cutouts/plan.json").read_text())
    assert plan["shard_size"] == 64 and plan["n_shards"] == -(-plan["n_objects"] // 64)
    assert _shard_files(store) == before
    # The plan's jobs only (the copied run also holds the logs of the old plan's other jobs).
    logs = [(run / f"results/logs/cutouts/{k}.log").read_text() for k in range(plan["n_shards"])]
    assert all("kept as cut before" in log for log in logs)


def test_a_layout_change_replans_and_re_cuts_into_another_store(tiny_run, tmp_path):
    """store_shard is the store's layout: the store is made anew, every object cut again."""
    import numpy as np
    import zarr

    run = _copy_of_run(tiny_run, tmp_path)
    changed = _with_cutouts(tiny_run, tmp_path, store_shard=16)
    assert {"plan_shards", "gather"} <= set(
        planned_jobs(run, "results/cutouts/manifest.json", "--configfile", str(changed))
    )
    store = run / "results/cutouts.zarr"
    before = _shard_files(store)
    images = zarr.open_array(str(store / "images"), mode="r")[:]
    _run_to_manifest(run, "--configfile", str(changed))
    after = _shard_files(store)
    n = json.loads((run / "results/cutouts/plan.json").read_text())["n_objects"]
    assert len(after) == -(-n // 16) > len(before)  # other shard files, none of the old ones
    assert not any(after.get(k, (0, 0, b""))[2] == v[2] for k, v in before.items())
    assert not any("kept as cut before" in log for log in _cutout_logs(run))
    assert (
        "store results/cutouts.zarr: remade" in (run / "results/logs/plan_shards.log").read_text()
    )
    regrouped = zarr.open_array(str(store / "images"), mode="r")
    assert regrouped.shards[0] == 16
    np.testing.assert_array_equal(regrouped[:], images)  # the same pixels, cut again
