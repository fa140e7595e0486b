"""`ssl-photoz gpu-run`: one card per job on a multi-GPU workstation, without a GPU.

Real `gpu-run` processes wrap a small Python job that records its CUDA_VISIBLE_DEVICES and
start/end times, then waits for a "go" file from the test; the ids are a fake pool. The checks
follow the order of events (who started, who waits, who got which card after which release),
not timings, so a loaded machine only makes them slower.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from ssl_photoz.learn import gpu_slots
from ssl_photoz.learn.gpu_slots import (
    GpuSlotTimeout,
    acquire,
    detect_ids,
    gpu_run,
    parse_ids,
    parse_nvidia_smi,
    plan,
    release,
    try_acquire,
)

POOL = "0,1,2,3"
# The job: CUDA_VISIBLE_DEVICES, start time and pid into <name>.start, then wait for <name>.go
# (or all.go), write <name>.end and exit with argv[3]. SIGTERM: <name>.signal, exit 7.
JOB = r"""
import os, signal, sys, time
from pathlib import Path
d, name = Path(sys.argv[1]), sys.argv[2]
def on_term(signum, frame):
    (d / f"{name}.signal").write_text(str(signum))
    sys.exit(7)
signal.signal(signal.SIGTERM, on_term)
tmp = d / f".{name}.start"
tmp.write_text(f"{os.environ.get('CUDA_VISIBLE_DEVICES')} {time.time_ns()} {os.getpid()}")
tmp.rename(d / f"{name}.start")
while not (d / f"{name}.go").exists() and not (d / "all.go").exists():
    time.sleep(0.01)
(d / f"{name}.end").write_text(str(time.time_ns()))
sys.exit(int(sys.argv[3]))
"""


def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("CUDA_VISIBLE_DEVICES", gpu_slots.IDS_ENV, gpu_slots.LOCK_DIR_ENV):
        env.pop(key, None)
    return env


class Job:
    """One `ssl-photoz gpu-run ... -- python JOB` process, in a session of its own."""

    def __init__(self, d: Path, name: str, *options: str, code: int = 0, env=None):
        self.d, self.name = d, name
        self.err = d / f"{name}.stderr"
        command = [sys.executable, "-m", "ssl_photoz.cli", "gpu-run", *options, "--"]
        command += [sys.executable, "-c", JOB, str(d), name, str(code)]
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                command, stderr=err, env=env or clean_env(), start_new_session=True
            )

    @property
    def started(self) -> bool:
        return (self.d / f"{self.name}.start").exists()

    @property
    def ids(self) -> str:
        return (self.d / f"{self.name}.start").read_text().split()[0]

    @property
    def start_ns(self) -> int:
        return int((self.d / f"{self.name}.start").read_text().split()[1])

    @property
    def child_pid(self) -> int:
        return int((self.d / f"{self.name}.start").read_text().split()[2])

    @property
    def end_ns(self) -> int:
        return int((self.d / f"{self.name}.end").read_text())

    @property
    def waiting(self) -> bool:
        return "waiting for" in self.err.read_text()

    def go(self) -> None:
        (self.d / f"{self.name}.go").touch()

    def wait(self) -> int:
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        """SIGKILL to the wrapper and its job (their process group), while the wrapper lives
        (a job left by a killed wrapper ends on all.go, see the fixture)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    """Poll until `condition()`; the limit only stops a broken run from hanging."""
    end = time.monotonic() + limit
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def jobs(tmp_path):
    made: list[Job] = []
    yield made
    (tmp_path / "all.go").touch()
    for job in made:
        job.kill()


def namespace() -> str:
    return plan(1, POOL, env={}).namespace


def test_six_jobs_on_four_cards_never_share_one(tmp_path, jobs):
    locks = tmp_path / "locks"
    jobs += [Job(tmp_path, f"j{i}", "--ids", POOL, "--lock-dir", str(locks)) for i in range(6)]

    # Four run, each on a card of its own; the other two wait for a release.
    wait_for(lambda: sum(j.started for j in jobs) == 4, "four jobs to start")
    running = [j for j in jobs if j.started]
    waiting = [j for j in jobs if not j.started]
    assert sorted(j.ids for j in running) == ["0", "1", "2", "3"]
    wait_for(lambda: all(j.waiting for j in waiting), "the 5th and 6th jobs to log that they wait")
    assert sum(j.started for j in jobs) == 4

    # One ends: its card goes to exactly one of the waiting jobs.
    first = running[0]
    first.go()
    assert first.wait() == 0
    wait_for(lambda: sum(j.started for j in jobs) == 5, "the 5th job to start")
    fifth = next(j for j in waiting if j.started)
    sixth = next(j for j in waiting if j is not fifth)
    assert fifth.ids == first.ids
    assert fifth.start_ns > first.end_ns
    assert not sixth.started  # every card is taken again

    # One is killed (SIGKILL to the wrapper and its job): the kernel drops its lock, the last
    # waiting job gets the card.
    killed = running[1]
    before_kill = time.time_ns()
    killed.kill()
    assert killed.proc.returncode == -signal.SIGKILL
    wait_for(lambda: sixth.started, "the 6th job to get the killed job's card")
    assert sixth.ids == killed.ids
    assert sixth.start_ns > before_kill

    (tmp_path / "all.go").touch()
    assert [j.wait() for j in jobs if j is not killed] == [0] * 5

    # No two jobs held one card at the same time.
    ends = {j.name: (before_kill if j is killed else j.end_ns) for j in jobs}
    for card in "0123":
        spans = sorted((j.start_ns, ends[j.name]) for j in jobs if j.ids == card)
        assert all(later[0] > earlier[1] for earlier, later in pairwise(spans)), card
    # Every card is free again.
    held = try_acquire(locks, namespace(), ["0", "1", "2", "3"], 4)
    assert sorted(held) == ["0", "1", "2", "3"]
    release(held)
    for job in jobs:
        assert "released GPU(s)" in job.err.read_text() or job is killed


def test_two_card_job_takes_two_cards_all_or_nothing(tmp_path, jobs):
    locks = tmp_path / "locks"
    pool = ["0", "1", "2", "3"]
    others = {i: try_acquire(locks, namespace(), [i], 1) for i in "012"}  # three cards in use
    jobs.append(Job(tmp_path, "pair", "--gpus", "2", "--ids", POOL, "--lock-dir", str(locks)))
    wait_for(lambda: jobs[0].waiting, "the 2-card job to wait")
    # While it waits it does not sit on the one free card: another job can take it.
    for _ in range(500):
        free = try_acquire(locks, namespace(), ["3"], 1)
        if free:
            release(free)
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the waiting 2-card job keeps card 3")
    assert not jobs[0].started
    release(others["0"])
    wait_for(lambda: jobs[0].started, "the 2-card job to start")
    assert sorted(jobs[0].ids.split(",")) == ["0", "3"]
    assert try_acquire(locks, namespace(), pool, 1) == {}  # 1, 2 by the test, 0, 3 by the job
    jobs[0].go()
    assert jobs[0].wait() == 0
    for held in others.values():
        release(held)
    held = try_acquire(locks, namespace(), pool, 4)
    assert len(held) == 4
    release(held)


def test_exit_status_and_signals_reach_through(tmp_path, jobs):
    locks = tmp_path / "locks"
    options = ("--ids", POOL, "--lock-dir", str(locks))
    failing = Job(tmp_path, "fails", *options, code=3)
    terminated = Job(tmp_path, "term", *options)
    jobs += [failing, terminated]
    failing.go()
    assert failing.wait() == 3
    wait_for(lambda: terminated.started, "the job to start")
    terminated.proc.send_signal(signal.SIGTERM)  # the wrapper only: it passes SIGTERM on
    assert terminated.wait() == 7
    assert (tmp_path / "term.signal").read_text() == str(int(signal.SIGTERM))
    # A job killed by a signal: 128 + N, as a shell reports it.
    code = gpu_run(
        [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
        ids=POOL,
        lock_dir=locks,
        env=clean_env(),
    )
    assert code == 128 + signal.SIGKILL


def test_card_stays_taken_while_the_job_outlives_a_killed_wrapper(tmp_path, jobs):
    locks = tmp_path / "locks"
    job = Job(tmp_path, "orphan", "--ids", "0", "--lock-dir", str(locks))
    jobs.append(job)
    wait_for(lambda: job.started, "the job to start")
    os.kill(job.proc.pid, signal.SIGKILL)  # the wrapper alone: its job keeps the card
    job.proc.wait()
    assert try_acquire(locks, namespace(), ["0"], 1) == {}
    job.go()
    wait_for(lambda: bool(try_acquire(locks, namespace(), ["0"], 1)), "the card to be free")


def _show(tmp_path: Path, *options: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ssl_photoz.cli", "gpu-run", *options, "--lock-dir"]
    command += [str(tmp_path / "locks"), "--", sys.executable, "-c"]
    command += ["import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_cpu_machine_and_scheduler_ids_run_unchanged(tmp_path):
    env = clean_env()
    done = _show(tmp_path, "--ids", "none", env=env)
    assert (done.returncode, done.stdout) == (0, "None\n")
    assert "running the command unchanged" in done.stderr
    done = _show(tmp_path, "--gpus", "0", "--ids", POOL, env=env)
    assert (done.returncode, done.stdout) == (0, "None\n")
    # SLURM gave this job card 5: kept, nothing locked.
    done = _show(tmp_path, "--ids", POOL, env={**env, "CUDA_VISIBLE_DEVICES": "5"})
    assert (done.returncode, done.stdout) == (0, "5\n")
    assert "already set" in done.stderr
    # The pool from the environment variable.
    done = _show(tmp_path, "--gpus", "2", env={**env, gpu_slots.IDS_ENV: "7,8"})
    assert (done.returncode, done.stdout) == (0, "7,8\n")
    assert not (tmp_path / "locks" / namespace() / "gpu-5.lock").exists()
    # Nothing configured and nothing detected.
    out = tmp_path / "cvd"
    code = gpu_run(
        [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(repr(os.environ))"],
        env=env,
        detect=lambda: [],
    )
    assert code == 0 and "CUDA_VISIBLE_DEVICES" not in out.read_text()


def test_parse_ids():
    assert parse_ids("0, 1,2,,1") == ["0", "1", "2"]
    assert parse_ids("GPU-8a1b,MIG-4c2d") == ["GPU-8a1b", "MIG-4c2d"]
    assert parse_ids("none") == []
    assert parse_ids("") is None and parse_ids("auto") is None and parse_ids(None) is None
    with pytest.raises(ValueError):
        parse_ids("0 1")
    with pytest.raises(ValueError):
        parse_ids("..")


NVIDIA_SMI = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb     Device  0: (UUID: MIG-c7384736-a75d-5afc-978f-d2f1294409fd)
  MIG 3g.20gb     Device  1: (UUID: MIG-a28ad590-3fda-56dd-84fc-0a0b96edc58d)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0f2f8e2c-3b9e-4d1b-8f1d-1f5e3c1b2a11)
GPU 2: NVIDIA A100-SXM4-40GB (UUID: GPU-aa2f8e2c-3b9e-4d1b-8f1d-1f5e3c1b2a12)
"""


def test_detect_ids_from_nvidia_smi_then_torch():
    def fake(answers):
        def run(command, **kwargs):
            answer = answers[command[0]]
            if isinstance(answer, Exception):
                raise answer
            return subprocess.CompletedProcess(command, answer[0], answer[1], "")

        return run

    assert parse_nvidia_smi(NVIDIA_SMI) == [
        "MIG-c7384736-a75d-5afc-978f-d2f1294409fd",
        "MIG-a28ad590-3fda-56dd-84fc-0a0b96edc58d",
        "1",
        "2",
    ]
    smi = fake({"nvidia-smi": (0, "GPU 0: H200 (UUID: GPU-1)\nGPU 1: H200 (UUID: GPU-2)\n")})
    assert detect_ids(smi) == ["0", "1"]
    torch_only = fake({"nvidia-smi": FileNotFoundError(), "py": (0, "4\n")})
    assert detect_ids(torch_only, python="py") == ["0", "1", "2", "3"]
    neither = fake({"nvidia-smi": FileNotFoundError(), "py": (1, "")})
    assert detect_ids(neither, python="py") == []


def test_plan_order_of_the_sources():
    none = lambda: []  # noqa: E731
    four = lambda: ["0", "1", "2", "3"]  # noqa: E731
    assert plan(1, None, {}, none).mode == "cpu"
    assert plan(0, POOL, {}, four).mode == "cpu"
    assert plan(1, None, {}, four).pool == ["0", "1", "2", "3"]
    assert plan(1, None, {gpu_slots.IDS_ENV: "2,3"}, four).pool == ["2", "3"]
    assert plan(1, "1", {gpu_slots.IDS_ENV: "2,3"}, four).pool == ["1"]
    assert plan(1, None, {gpu_slots.IDS_ENV: "none"}, four).mode == "cpu"
    # CUDA_VISIBLE_DEVICES first: kept when it lists no more than the job needs ...
    slurm = {"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_ID": "42"}
    assert (plan(1, POOL, slurm, four).mode, plan(1, POOL, slurm, four).pool) == ("keep", ["0"])
    assert plan(1, POOL, {"CUDA_VISIBLE_DEVICES": ""}, four).mode == "cpu"
    # ... else shared out, with locks of that scheduler job's own.
    whole_node = plan(1, None, {"CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_ID": "42"}, four)
    assert (whole_node.mode, whole_node.pool) == ("lock", ["0", "1"])
    assert whole_node.namespace.endswith("SLURM_JOB_ID-42")
    with pytest.raises(ValueError):
        plan(-1, POOL, {}, four)


def test_acquire_is_all_or_nothing_and_times_out(tmp_path):
    pool = ["0", "1", "2", "3"]
    taken = try_acquire(tmp_path, "h", ["1", "2", "3"], 3)
    assert try_acquire(tmp_path, "h", pool, 2) == {}
    alone = try_acquire(tmp_path, "h", ["0"], 1)  # the failed attempt let card 0 go
    assert list(alone) == ["0"]
    release(alone)
    with pytest.raises(GpuSlotTimeout, match="within"):
        acquire(tmp_path, "h", pool, 2, timeout=0.2, poll=0.05)
    with pytest.raises(ValueError, match="pool has 4"):
        acquire(tmp_path, "h", pool, 5)
    release(taken)
    got = acquire(tmp_path, "h", pool, 2, timeout=5)
    assert sorted(got) == ["0", "1"]
    release(got)
    busy = try_acquire(tmp_path, gpu_slots.plan(1, "0", {}).namespace, ["0"], 1)
    assert gpu_run(["true"], ids="0", lock_dir=tmp_path, timeout=0.1, env={}) == 75
    release(busy)
    assert gpu_run(["true"], ids="0", lock_dir=tmp_path, timeout=0.1, env={}) == 0


def test_torchrun_gives_one_rank_per_card():
    command = ["ssl-photoz", "pretrain", "--out", "m.pt"]
    assert gpu_slots.per_card(command, 1, torchrun=True) == command
    assert gpu_slots.per_card(command, 4, torchrun=False) == command
    ranks = gpu_slots.per_card(command, 4, torchrun=True)
    assert ranks[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "--no-python",
        *command,
    ]
