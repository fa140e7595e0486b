"""The whole DAG of the tiny config through a real SLURM with `--profile profiles/slurm`.

Needs a running SLURM whose default partition accepts jobs (scripts/slurm/start_local_slurm.sh
starts a one-node cluster on this machine; .ci/run does so before the tests). Skipped when
`sinfo` is missing or does not answer, unless SSL_PHOTOZ_REQUIRE_SLURM=1 (CI), which turns the
skip into a failure. Checks that every job that is not a local rule ran as a SLURM job (its
SLURM log, named by the job id, shows it executed and finished) and that the results equal those
of a local run of the same config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import BIN, PROJECT_ROOT, tool_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE = PROJECT_ROOT / "profiles" / "slurm" / "config.v8+.yaml"
# Rules that may run on the submitting host: `all` and the network-bound ones.
MAY_BE_LOCAL = {"all", "query_labeled", "query_unlabeled"}
RUN_TIMEOUT_S = 1800


def _no_slurm(reason: str):
    if os.environ.get("SSL_PHOTOZ_REQUIRE_SLURM") == "1":
        pytest.fail(f"SSL_PHOTOZ_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(f"{reason} (scripts/slurm/start_local_slurm.sh starts a one-node SLURM)")


@pytest.fixture(scope="module")
def node_cpus() -> int:
    """CPUs of the smallest node of the default partition; skips when SLURM does not answer."""
    if shutil.which("sinfo") is None:
        _no_slurm("no SLURM here: sinfo not found")
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--format=%P|%a|%c|%T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        _no_slurm("sinfo does not answer within 30 s")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        _no_slurm(f"sinfo does not answer: {last}")
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 3]
    default = [r for r in rows if r[0].endswith("*") and r[1] == "up"]
    usable = [r for r in default if r[3].rstrip("*~#$@") in {"idle", "mixed", "allocated"}]
    if not usable:
        _no_slurm(f"no usable node in an up default partition: sinfo says {out.stdout!r}")
    return min(int(r[2].rstrip("+")) for r in usable)


def _workdir(path: Path) -> Path:
    """A scratch working directory with the workflow's relative assets and the tiny config."""
    for name in ("workflow", "profiles", "envs", "configs"):
        shutil.copytree(PROJECT_ROOT / name, path / name, symlinks=True)
    shutil.copy(PROJECT_ROOT / "configs" / "tiny.yaml", path / "config.yaml")
    return path


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    """Snakemake in the background, its output in workdir/snakemake.out."""
    with open(workdir / "snakemake.out", "w") as log:
        return subprocess.Popen(
            [str(BIN / "snakemake"), "--snakefile", str(PROJECT_ROOT / "Snakefile"), *args],
            cwd=workdir,
            env=tool_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finish(proc: subprocess.Popen, workdir: Path) -> str:
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # snakemake cancels its SLURM jobs (scancel) on SIGTERM
        proc.wait(timeout=120)
    text = (workdir / "snakemake.out").read_text()
    assert proc.returncode == 0, f"snakemake in {workdir} failed:\n{text[-6000:]}"
    return text


# Data-parallel pretraining in both runs (the profiles' machine settings, set in the copies):
# SLURM: one job of 2 tasks of 1 CPU, started by srun (the plugin's `mpi` job: no srun -n1
# around the rule's command); locally: torchrun with 2 gloo ranks, 1 thread each of the 2.
DDP_SLURM = {"ddp_processes": 2, "ddp_launcher": "srun", "tasks": 2, "mpi": "srun"}
DDP_LOCAL = {"ddp_processes": 2, "ddp_launcher": "torchrun"}


def _set_pretrain(profile: Path, settings: dict) -> None:
    """Add settings to the pretrain rule's set-resources of a copied profile."""
    data = yaml.safe_load(profile.read_text())
    data.setdefault("set-resources", {}).setdefault("pretrain", {}).update(settings)
    profile.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def runs(node_cpus, tmp_path_factory):
    """The tiny config run through SLURM and, at the same time, locally (the reference)."""
    profile = yaml.safe_load(PROFILE.read_text())
    slurm_dir = _workdir(tmp_path_factory.mktemp("slurm_run"))
    local_dir = _workdir(tmp_path_factory.mktemp("local_run"))
    per_rank = max(1, min(int(profile["set-threads"]["pretrain"]), node_cpus) // 2)
    _set_pretrain(
        slurm_dir / "profiles" / "slurm" / "config.v8+.yaml",
        {**DDP_SLURM, "cpus_per_task": per_rank},
    )
    _set_pretrain(local_dir / "profiles" / "default" / "config.v8+.yaml", DDP_LOCAL)
    # --workflow-profile none, as on any cluster: profiles/default (the workstation) would
    # otherwise be loaded too and override the profile. Test-only overrides for a small one-node
    # cluster without an accounting database:
    # --max-threads: no job may ask for more CPUs than the node has (the profile asks up to 8);
    # --slurm-status-command squeue: no sacct here (slurm.conf keeps jobs for MinJobAge=600 s);
    # --slurm-init-seconds-before-status-checks: poll soon, the tiny jobs take seconds;
    # --slurm-no-account: no accounts without a database (the plugin would guess with sacct).
    slurm = _start(
        slurm_dir,
        "--profile",
        "profiles/slurm",
        "--workflow-profile",
        "none",
        "--max-threads",
        str(node_cpus),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--slurm-no-account",
    )
    # The reference: the same config on this machine with the same threads per rule as the
    # SLURM jobs get (torch's CPU sums depend on the thread count in the last bits).
    threads = [f"{rule}={min(int(n), node_cpus)}" for rule, n in profile["set-threads"].items()]
    local = _start(
        local_dir,
        "--profile",
        "profiles/default",
        "--cores",
        str(node_cpus),
        "--set-threads",
        *threads,
    )
    try:
        local_log = _finish(local, local_dir)
        slurm_log = _finish(slurm, slurm_dir)
    finally:  # one run failed: stop the other (snakemake cancels its SLURM jobs on SIGTERM)
        for proc in (local, slurm):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
    return {"slurm": (slurm_dir, slurm_log), "local": (local_dir, local_log)}


JOB_HEADER = re.compile(r"^(local)?(rule|checkpoint) (\w+):$")


def _jobs(text: str) -> list[dict]:
    """The job blocks Snakemake prints: rule, local or not, jobid and wildcards."""
    jobs, current = [], None
    for line in text.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            current = {"local": bool(header[1]), "rule": header[3], "wildcards": ""}
            jobs.append(current)
        elif current is not None and line.startswith("    "):
            key, _, value = line.strip().partition(": ")
            if key in ("jobid", "wildcards"):
                current[key] = value
        else:
            current = None
    return jobs


def _slurm_logs(workdir: Path) -> dict[str, dict]:
    """SLURM job id (from the log's name, %j or %A_%a) -> the jobs that ran in it, finished or not.

    A SLURM job runs Snakemake, which starts each job of it (one; several for a job group) as a
    job step that runs it as a local job: the `localrule`/`localcheckpoint` blocks of the log are
    the jobs that actually ran (the first, non-local block of an array task names the array's
    first job, not the task's).
    """
    logs = {}
    for path in sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log")):
        text = path.read_text()
        logs[path.stem] = {
            "path": path,
            "jobs": {(job["rule"], job["wildcards"]) for job in _jobs(text) if job["local"]},
            "done": re.search(r"^(\d+) of \1 steps \(100%\) done$", text, re.MULTILINE),
        }
    return logs


def test_every_job_ran_under_slurm(runs):
    workdir, text = runs["slurm"]
    jobs = _jobs(text)
    remote = {(j["rule"], j["wildcards"]) for j in jobs if not j["local"]}
    local = {j["rule"] for j in jobs if j["local"]}
    assert {"sky", "select", "plan_shards", "cutouts", "pretrain", "evaluate"} <= {
        rule for rule, _ in remote
    }, remote
    assert local <= MAY_BE_LOCAL, f"ran on the submitting host, not under SLURM: {local}"

    logs = _slurm_logs(workdir)
    assert logs, "no SLURM logs in .snakemake/slurm_logs (slurm-keep-successful-logs?)"
    for job_id, log in logs.items():
        assert re.fullmatch(r"\d+(_\d+)?", job_id), log["path"]
        assert log["jobs"], f"{log['path']}: no job ran in SLURM job {job_id}"
    # Every remote job finished inside a SLURM job (a retried job also has the failed try's log).
    finished = set().union(*(log["jobs"] for log in logs.values() if log["done"]))
    assert remote <= finished, f"jobs without a finished SLURM job: {remote - finished}"
    assert set().union(*(log["jobs"] for log in logs.values())) <= remote

    # The main process named the same SLURM ids: one per single job, one per array.
    submitted = set(re.findall(r"has been submitted with SLURM jobid (\d+) ", text))
    arrays = set(re.findall(r"Submitted array job with .* SLURM job ID (\d+)\.", text))
    assert {job_id.split("_")[0] for job_id in logs} == submitted | arrays
    in_arrays = {rule for job_id, log in logs.items() if "_" in job_id for rule, _ in log["jobs"]}
    assert "cutouts" in in_arrays, "the cut-out shards were not submitted as a job array"

    # SLURM itself knows them as completed (those still listed: squeue keeps MinJobAge seconds).
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs", ",".join(logs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    states = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
    assert set(states.values()) <= {"COMPLETED"}, states


def _frames_equal(a: Path, b: Path, exact: bool) -> None:
    left, right = pd.read_parquet(a), pd.read_parquet(b)
    if exact:
        pd.testing.assert_frame_equal(left, right, check_exact=True)
        return
    # Model outputs: same threads as the reference, so equal; a tolerance in the last bits only.
    assert list(left.columns) == list(right.columns) and len(left) == len(right), a
    for column in left.columns:
        x, y = left[column].to_numpy(), right[column].to_numpy()
        if x.dtype == object:  # per-object arrays (the redshift PDFs)
            x, y = np.stack(x).astype(np.float64), np.stack(y).astype(np.float64)
        if np.issubdtype(np.asarray(x).dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9, err_msg=f"{a}: {column}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{a}: {column}")


def test_results_equal_a_local_run(runs):
    import zarr

    slurm, local = runs["slurm"][0] / "results", runs["local"][0] / "results"
    for name in ("labeled", "unlabeled", "objects", "rejects"):
        _frames_equal(slurm / f"catalog/{name}.parquet", local / f"catalog/{name}.parquet", True)
    _frames_equal(slurm / "cutouts/rejects.parquet", local / "cutouts/rejects.parquet", True)
    for name in ("catalog/counts.json", "cutouts/plan.json", "cutouts/manifest.json"):
        assert json.loads((slurm / name).read_text()) == json.loads((local / name).read_text())
    assert json.loads((slurm / "cutouts/stats.json").read_text()) == json.loads(
        (local / "cutouts/stats.json").read_text()
    )

    # The cut-out store, array by array: images, masks and the 1-D columns.
    store_s = zarr.open_group(str(slurm / "cutouts.zarr"), mode="r")
    store_l = zarr.open_group(str(local / "cutouts.zarr"), mode="r")
    names = sorted(name for name, _ in store_l.arrays())
    assert names and names == sorted(name for name, _ in store_s.arrays())
    for name in names:
        np.testing.assert_array_equal(store_s[name][:], store_l[name][:], err_msg=name)

    predictions = sorted(p.name for p in (local / "predictions").glob("*.parquet"))
    assert predictions == sorted(p.name for p in (slurm / "predictions").glob("*.parquet"))
    # 2 fractions x 1 seed x 2 kinds, and the colours kNN at each of the 2 fractions
    assert len(predictions) == 2 * 2 + 2
    for name in predictions:
        _frames_equal(slurm / "predictions" / name, local / "predictions" / name, False)

    for name in ("metrics.tsv", "metrics_summary.tsv", "metrics_bins.tsv"):
        if not (local / name).read_text().strip():  # no rows (too few objects per bin)
            assert (slurm / name).read_text() == (local / name).read_text(), name
            continue
        left = pd.read_csv(slurm / name, sep="\t")
        right = pd.read_csv(local / name, sep="\t")
        pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-6, atol=1e-9)


def test_pretraining_ran_two_ranks_under_srun(runs):
    """The pretrain job of 2 tasks ran 2 ranks (srun) with the weights of the local 2 ranks."""
    from ssl_photoz.learn.train import load_checkpoint

    slurm, local = runs["slurm"][0] / "results", runs["local"][0] / "results"
    log = (slurm / "logs" / "pretrain.log").read_text()
    for rank in (0, 1):
        assert f"ssl-photoz rank {rank} of 2" in log, log[-4000:]
        assert f"pretrain: rank {rank} of 2" in log, log[-4000:]
    assert "pretrain: rank 1 of 2" in (local / "logs" / "pretrain.log").read_text()
    for where in (slurm, local):
        recipe = json.loads((where / "models/pretrain/summary.json").read_text())["recipe"]
        assert (recipe["world_size"], recipe["per_process_batch"]) == (2, 8), where
    a = load_checkpoint(slurm / "models/pretrain/model.pt")["moco"]
    b = load_checkpoint(local / "models/pretrain/model.pt")["moco"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
