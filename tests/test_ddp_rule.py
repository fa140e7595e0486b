"""Data-parallel pretraining as the `pretrain` rule launches it (resources ddp_processes and
ddp_launcher): on a workstation 2 gloo ranks under torchrun give the weights of the manual
`torchrun --standalone --nproc-per-node 2` command; in a SLURM job of 2 tasks (srun) the 2 ranks
start, say so in the log, and give the same weights again. The SLURM test needs a SLURM whose
default partition has a node of 2 CPUs (scripts/slurm/start_local_slurm.sh); it is skipped
without one unless SSL_PHOTOZ_REQUIRE_SLURM=1."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import PROJECT_ROOT
from test_train import MODEL, PRETRAIN, tiny_store  # noqa: F401 (a fixture)

from ssl_photoz.learn import gpu_slots
from ssl_photoz.learn.train import load_checkpoint

BIN = Path(sys.executable).parent
SECTIONS = {"model": MODEL, "pretrain": {**PRETRAIN, "epochs": 2}}


def rule_shell() -> str:
    """The pretrain rule's shell command, as written in workflow/rules/learn.smk."""
    text = (PROJECT_ROOT / "workflow" / "rules" / "learn.smk").read_text()
    block = text.split("rule pretrain:", 1)[1].split("\nrule ", 1)[0]
    shell = block.split("shell:", 1)[1]
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', shell))


def rule_command(store, stats, out: Path, processes: int, launcher: str, threads: int) -> str:
    """The rule's command for these inputs and resources (Snakemake's {x:q} is shlex.quote)."""
    q = shlex.quote
    template = rule_shell().replace("{params.sections:q}", "{sections}")
    assert ":q}" not in template
    return template.format(
        resources=SimpleNamespace(
            gpu=0, gpu_ids="auto", ddp_processes=processes, ddp_launcher=launcher, precision="fp32"
        ),
        params=SimpleNamespace(store=q(str(store)), device="cpu"),
        # The manifest is part of the run's inputs (its digest); any fixed file does here.
        input=SimpleNamespace(stats=q(str(stats)), manifest=q(str(stats))),
        output=SimpleNamespace(model=q(str(out / "model.pt")), summary=q(str(out / "s.json"))),
        log=q(str(out / "pretrain.log")),
        threads=threads,
        sections=q(json.dumps(SECTIONS)),
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "model.pt")["moco"]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def workstation(tiny_store, tmp_path_factory):  # noqa: F811
    """The rule's command with 2 processes on this machine (torchrun, 2 gloo ranks, 1 thread
    each of the job's 2)."""
    store, stats = tiny_store
    out = tmp_path_factory.mktemp("rule_torchrun")
    cmd = rule_command(store, stats, out, processes=2, launcher="torchrun", threads=2)
    done = subprocess.run(["bash", "-c", cmd], env=_env(), timeout=600)
    log = (out / "pretrain.log").read_text()
    assert done.returncode == 0, log[-4000:]
    return out, log


def test_the_rule_defaults_to_one_process():
    text = (PROJECT_ROOT / "workflow" / "rules" / "learn.smk").read_text()
    block = text.split("rule pretrain:", 1)[1].split("\nrule ", 1)[0]
    assert "ddp_processes=1," in block and 'ddp_launcher="torchrun"' in block


def test_rule_with_two_processes_equals_manual_torchrun(workstation, tiny_store, tmp_path):  # noqa: F811
    out, log = workstation
    summary = json.loads((out / "s.json").read_text())
    recipe = summary["recipe"]
    assert recipe["world_size"] == 2
    assert (recipe["per_process_batch"], recipe["effective_batch"]) == (8, 16)
    assert recipe["lr"] == {"all": PRETRAIN["lr"]}
    assert "rank 0 of 2" in log and "rank 1 of 2" in log
    store, stats = tiny_store
    manual = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(BIN / "ssl-photoz"),
        "pretrain",
        "--sections-json",
        json.dumps(SECTIONS),
        "--store",
        str(store),
        "--stats",
        str(stats),
        "--out",
        str(tmp_path / "model.pt"),
        "--summary",
        str(tmp_path / "s.json"),
        "--device",
        "cpu",
        "--precision",
        "fp32",
    ]
    done = subprocess.run(
        manual, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_same(_weights(out), _weights(tmp_path))


def _slurm_node_cpus() -> int:
    def no(reason):
        if os.environ.get("SSL_PHOTOZ_REQUIRE_SLURM") == "1":
            pytest.fail(f"SSL_PHOTOZ_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)

    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        no("no SLURM here: sinfo/sbatch not found")
    try:
        done = subprocess.run(
            ["sinfo", "--noheader", "--format=%P|%a|%c"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        no("sinfo does not answer within 30 s")
    rows = [r.split("|") for r in done.stdout.splitlines() if r.count("|") == 2]
    up = [int(r[2].rstrip("+")) for r in rows if r[0].endswith("*") and r[1] == "up"]
    if done.returncode != 0 or not up:
        no(f"no up default SLURM partition: {done.stdout!r} {done.stderr!r}")
    return max(up)


@pytest.mark.slurm
def test_slurm_job_of_two_tasks_runs_two_ranks(workstation, tiny_store, tmp_path):  # noqa: F811
    """One SLURM job, 2 tasks of 1 CPU, the rule's command with ddp_launcher=srun, run as the
    SLURM executor plugin runs an `mpi` job: in the batch step, with the allocation's SLURM_*
    variables removed but SLURM_JOB_ID (snakemake-executor-plugin-slurm-jobstep does so)."""
    if _slurm_node_cpus() < 2:
        pytest.skip("the SLURM node has fewer than 2 CPUs")
    store, stats = tiny_store
    cmd = rule_command(store, stats, tmp_path, processes=2, launcher="srun", threads=2)
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        "for v in $(compgen -e | grep -E '^(SLURM_|SRUN_|SBATCH_)' | grep -vx SLURM_JOB_ID); do"
        " unset $v; done\n"
        f"{cmd}\n"
    )
    done = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            "--cpus-per-task=1",
            "--time=20",
            f"--output={tmp_path / 'slurm.out'}",
            f"--chdir={tmp_path}",
            str(script),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    log = (tmp_path / "pretrain.log").read_text() if (tmp_path / "pretrain.log").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log[-4000:]
    for rank in (0, 1):
        assert f"ssl-photoz rank {rank} of 2" in log, log[-4000:]
        assert f"pretrain: rank {rank} of 2" in log, log[-4000:]
    _assert_same(_weights(workstation[0]), _weights(tmp_path))


def test_srun_ranks_take_torchrun_variables_from_slurm():
    def hostnames(argv, **_):
        assert argv == ["scontrol", "show", "hostnames", "gpu[03-04]"]
        return subprocess.CompletedProcess(argv, 0, "gpu03\ngpu04\n", "")

    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[03-04]",
    }
    env = gpu_slots.rank_env(slurm, runner=hostnames)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "8", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu03", str(20000 + 4242))
    # a task bound to one card (--ntasks-per-gpu): cuda:0, the one it sees
    bound = gpu_slots.rank_env({**slurm, "CUDA_VISIBLE_DEVICES": "2"}, runner=hostnames)
    assert bound["LOCAL_RANK"] == "0"


def test_launch_n_processes_by_torchrun_or_srun():
    command = ["ssl-photoz", "pretrain"]
    argv, env = gpu_slots.launch(command, 1, "torchrun", threads=8, env={})
    assert argv == command and env["OMP_NUM_THREADS"] == "8"
    argv, env = gpu_slots.launch(command, 4, "torchrun", threads=8, env={})
    assert "--nproc-per-node=4" in argv and argv[-2:] == command
    assert env["OMP_NUM_THREADS"] == "2"
    argv, env = gpu_slots.launch(command, 2, "srun", threads=2, env={"SLURM_JOB_ID": "7"})
    assert argv[:2] == ["srun", "--ntasks=2"] and "--cpus-per-task=1" in argv
    assert argv[-3:] == ["--", *command] and gpu_slots.RANK_ENTRY in argv
    with pytest.raises(ValueError, match="not inside a SLURM job"):
        gpu_slots.launch(command, 2, "srun", env={})
