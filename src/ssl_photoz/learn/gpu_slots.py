"""One GPU per job on a multi-GPU workstation: ``ssl-photoz gpu-run [...] -- COMMAND``.

Snakemake counts GPUs (``resources: gpu=G`` caps the jobs' ``gpu`` requests) but hands out no
card ids, so every training job would pick ``cuda:0``. ``gpu-run`` takes N free ids from a pool,
runs COMMAND with ``CUDA_VISIBLE_DEVICES`` set to them and gives them back when COMMAND ends.

The pool has one lock file per id (``<lock dir>/<host>/gpu-<id>.lock``), held with an exclusive
``flock``. The kernel drops such a lock when the last process holding the file open ends, however
it ends (SIGKILL and the OOM killer included), so no stale lock outlives a job. The lock file is
open in both ``gpu-run`` and COMMAND (an inherited descriptor): a card is free again only when
neither is left, so killing the wrapper alone cannot hand a card that COMMAND still uses to
another job. Several ids are taken all or nothing: each free id is tried once, and if fewer than N
were free every one taken is let go before waiting and trying again; no job holds cards while it
waits, so two multi-card jobs cannot deadlock.

Where the pool comes from, first match wins:

1. ``CUDA_VISIBLE_DEVICES``, when already set (a scheduler such as SLURM sets it for a job given
   GPUs, or the user restricted the run): these are the cards this process may use. Listing no
   more than N, the job keeps them as they are and nothing is locked (the usual SLURM case);
   listing more, they are the pool (locks per host and per scheduler job). Empty or ``-1``: no GPU.
2. ``--ids 0,1,2,3`` (the profile), then the environment variable ``SSL_PHOTOZ_GPU_IDS``.
   ``none`` means no GPU; ``auto`` or empty means not given.
3. Detected: ``nvidia-smi -L`` (GPU indices, or the MIG instances' UUIDs on a GPU split into
   MIG instances), else ``torch.cuda.device_count()`` in a separate process (so that this one
   never initialises CUDA).

With no ids (a CPU machine) or ``--gpus 0``, COMMAND runs unchanged and the log says so.
``--torchrun``: a job given several cards runs COMMAND once per card (DDP pretraining).

``--processes N`` (data-parallel pretraining, N ranks; the rule's resource ``ddp_processes``):
``--launcher torchrun`` starts ``torchrun --standalone --nproc-per-node N`` on this machine (on
GPUs, or N gloo processes on a CPU); ``--launcher srun`` (inside a SLURM job of N tasks, over one
or more nodes) runs ``srun --ntasks N`` and each task takes its rank, world size and local rank
from SLURM (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) and the rendezvous (MASTER_ADDR: the
first host of the step's node list, via ``scontrol show hostnames``; MASTER_PORT) as torchrun
would set them. ``--threads T``: the job's CPUs, T // N torch threads per rank (OMP_NUM_THREADS).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ssl_photoz.learn.gpu_slots")

IDS_ENV = "SSL_PHOTOZ_GPU_IDS"
LOCK_DIR_ENV = "SSL_PHOTOZ_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(".snakemake") / "gpu-slots"
# Environment variables that name the scheduler job this process runs in: a pool taken from
# CUDA_VISIBLE_DEVICES inside such a job is that job's own (its ids may be renumbered).
SCHEDULER_JOB_ENV = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID")
# Signals passed on to COMMAND while it runs (SLURM sends SIGUSR1/2 before a time limit).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
EXIT_TIMEOUT = 75  # EX_TEMPFAIL: no free GPU within --timeout
EXIT_NOT_FOUND = 127  # as a shell: COMMAND not found
_ID = re.compile(r"^[A-Za-z0-9_.:/-]+$")


class GpuSlotTimeout(TimeoutError):
    """No N free GPUs within the timeout."""


def parse_ids(text: str | None) -> list[str] | None:
    """``"0,1,2,3"`` -> ids, in order, without repeats; ``"none"`` -> []; unset/empty/auto -> None.

    Ids are what CUDA_VISIBLE_DEVICES accepts: indices or GPU-/MIG- UUIDs."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    if text.strip().lower() == "none":
        return []
    ids: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not _ID.match(part) or part in (".", ".."):
            raise ValueError(f"GPU id {part!r} in {text!r}: expected e.g. 0,1,2,3 or GPU-<uuid>")
        if part not in ids:
            ids.append(part)
    return ids


def parse_nvidia_smi(text: str) -> list[str]:
    """Ids in ``nvidia-smi -L``: each GPU's index, or the UUIDs of its MIG instances if any."""
    ids: list[str] = []
    current: str | None = None
    migs: dict[str, list[str]] = {}
    for line in text.splitlines():
        gpu = re.match(r"^GPU (\d+):", line)
        if gpu:
            current = gpu.group(1)
            ids.append(current)
            continue
        mig = re.match(r"^\s+MIG\b.*\(UUID:\s*(MIG-[^)\s]+)\)", line)
        if mig and current is not None:
            migs.setdefault(current, []).append(mig.group(1))
    return [m for i in ids for m in migs.get(i, [i])]


Runner = Callable[..., subprocess.CompletedProcess]


def detect_ids(runner: Runner = subprocess.run, python: str = sys.executable) -> list[str]:
    """This machine's GPU ids: ``nvidia-smi -L``, else torch in a child process, else []."""
    try:
        done = runner(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            ids = parse_nvidia_smi(done.stdout)
            if ids:
                return ids
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        done = runner(
            [python, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:
            return [str(i) for i in range(int(done.stdout.strip().splitlines()[-1]))]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        pass
    return []


@dataclass
class Plan:
    """What gpu-run does: ``cpu`` (run unchanged), ``keep`` (CUDA_VISIBLE_DEVICES as given,
    nothing locked) or ``lock`` (take ``gpus`` ids of ``pool``, locks under ``namespace``)."""

    mode: str
    gpus: int
    pool: list[str] = field(default_factory=list)
    source: str = ""
    namespace: str = ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def plan(
    gpus: int,
    ids: str | None = None,
    env: dict[str, str] | None = None,
    detect: Callable[[], list[str]] = detect_ids,
) -> Plan:
    """Decide where the ids come from (see the module's docstring for the order)."""
    if gpus < 0:
        raise ValueError(f"--gpus {gpus}: must be >= 0")
    env = dict(os.environ if env is None else env)
    if gpus == 0:
        return Plan("cpu", 0, source="--gpus 0")
    host = _safe(socket.gethostname())
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        given = parse_ids(visible) if visible.strip() not in ("-1", "NoDevFiles") else []
        given = [] if given is None else given  # "" hides every GPU
        if not given:
            return Plan("cpu", gpus, source=f"CUDA_VISIBLE_DEVICES={visible!r} (no GPU)")
        if len(given) <= gpus:
            return Plan("keep", gpus, given, source="CUDA_VISIBLE_DEVICES")
        job = next((f"{k}-{_safe(env[k])}" for k in SCHEDULER_JOB_ENV if env.get(k)), "")
        return Plan("lock", gpus, given, "CUDA_VISIBLE_DEVICES", f"{host}-{job}" if job else host)
    for text, source in ((ids, "--ids"), (env.get(IDS_ENV), IDS_ENV)):
        pool = parse_ids(text)
        if pool is not None:
            if not pool:
                return Plan("cpu", gpus, source=f"{source} none")
            return Plan("lock", gpus, pool, source, host)
    pool = detect()
    if not pool:
        return Plan("cpu", gpus, source="no GPU detected (nvidia-smi, torch)")
    return Plan("lock", gpus, pool, "detected", host)


def lock_path(lock_dir: Path, namespace: str, gpu_id: str) -> Path:
    return Path(lock_dir) / namespace / f"gpu-{_safe(gpu_id)}.lock"


def try_acquire(lock_dir: Path, namespace: str, pool: Sequence[str], n: int) -> dict[str, int]:
    """N free ids of ``pool`` as {id: open, locked descriptor}, or {} (and nothing held)."""
    import fcntl

    folder = Path(lock_dir) / namespace
    folder.mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = {}
    for gpu_id in pool:
        fd = os.open(lock_path(lock_dir, namespace, gpu_id), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another job (other errors, e.g. ENOLCK, are raised)
            os.close(fd)
            continue
        held[gpu_id] = fd
        if len(held) == n:
            return held
    release(held)  # all or nothing
    return {}


def release(held: dict[str, int]) -> None:
    for fd in held.values():
        os.close(fd)  # the last descriptor closed drops the lock
    held.clear()


def _note_holder(fd: int, ids: Sequence[str], command: Sequence[str]) -> None:
    """Who holds the card, for the waiting jobs' log (the lock itself is the flock)."""
    text = f"pid {os.getpid()} ({' '.join(command)[:200]}) since {time.strftime('%H:%M:%S')}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + f" cards {','.join(ids)}\n").encode(), 0)


def holders(lock_dir: Path, namespace: str, pool: Sequence[str]) -> str:
    notes = []
    for gpu_id in pool:
        try:
            note = lock_path(lock_dir, namespace, gpu_id).read_text().strip()
        except OSError:
            note = ""
        notes.append(f"{gpu_id}: {note or '?'}")
    return "; ".join(notes)


def acquire(
    lock_dir: Path,
    namespace: str,
    pool: Sequence[str],
    n: int,
    timeout: float | None = None,
    poll: float = 0.1,
    max_poll: float = 2.0,
    report_every: float = 60.0,
) -> dict[str, int]:
    """Wait until N ids of ``pool`` are free and take them (see try_acquire)."""
    if n > len(pool):
        raise ValueError(f"{n} GPU(s) asked for, but the pool has {len(pool)}: {','.join(pool)}")
    start = time.monotonic()
    next_report = start
    delay = poll
    while True:
        held = try_acquire(lock_dir, namespace, pool, n)
        if held:
            return held
        now = time.monotonic()
        if timeout is not None and now - start >= timeout:
            raise GpuSlotTimeout(
                f"no {n} free GPU(s) of {','.join(pool)} within {timeout:g} s "
                f"(held: {holders(lock_dir, namespace, pool)})"
            )
        if now >= next_report:
            log.info(
                "waiting for %d free GPU(s) of %s (held: %s)",
                n,
                ",".join(pool),
                holders(lock_dir, namespace, pool),
            )
            next_report = now + report_every
        time.sleep(delay)
        delay = min(delay * 1.5, max_poll)


def _run_child(command: Sequence[str], env: dict[str, str], fds: Sequence[int]) -> int:
    """COMMAND as a child, with the signals above passed on; its exit status (128+N if killed)."""
    pending: list[int] = []
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child is None:
            pending.append(signum)
        elif child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        try:
            child = subprocess.Popen(list(command), env=env, pass_fds=tuple(fds))
        except FileNotFoundError:
            log.error("command not found: %s", command[0])
            return EXIT_NOT_FOUND
        except PermissionError:
            log.error("command not executable: %s", command[0])
            return 126
        for signum in pending:
            child.send_signal(signum)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


def per_card(command: Sequence[str], cards: int, torchrun: bool) -> list[str]:
    """COMMAND, or with ``torchrun`` and several cards one rank per card on this node:
    ``python -m torch.distributed.run --standalone --nproc-per-node K --no-python COMMAND``
    (each rank takes cuda:LOCAL_RANK of the cards it sees)."""
    if not torchrun or cards <= 1:
        return list(command)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc-per-node={cards}", "--no-python", *command]


LAUNCHERS = ("torchrun", "srun")
RANK_ENTRY = "rank-from-slurm"  # python -m ssl_photoz.learn.gpu_slots rank-from-slurm -- COMMAND


def threads_per_rank(threads: int | None, processes: int) -> int | None:
    """The job's CPUs shared among its ranks on one machine (at least 1 each)."""
    return None if not threads else max(1, threads // max(1, processes))


def launch(
    command: Sequence[str],
    processes: int,
    launcher: str = "torchrun",
    threads: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """COMMAND as ``processes`` data-parallel ranks: the argv and the environment to run it in.

    One process: COMMAND unchanged. torchrun: ``--standalone --nproc-per-node N`` here. srun:
    ``srun --ntasks N`` in the current SLURM allocation, each task entering through
    ``rank_env`` (the rendezvous that torchrun would otherwise set)."""
    if processes < 1:
        raise ValueError(f"--processes {processes}: must be >= 1")
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher {launcher!r}: one of {', '.join(LAUNCHERS)}")
    env = dict(os.environ if env is None else env)
    per = threads_per_rank(threads, processes)
    if per is not None:
        env["OMP_NUM_THREADS"] = str(per)  # torchrun and srun keep a value that is set
    if processes == 1:
        return list(command), env
    if launcher == "torchrun":
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        return [*torchrun, f"--nproc-per-node={processes}", "--no-python", *command], env
    if not env.get("SLURM_JOB_ID"):
        raise ValueError("--launcher srun: not inside a SLURM job (no SLURM_JOB_ID)")
    env.setdefault("MASTER_PORT", str(free_port()))
    srun = ["srun", f"--ntasks={processes}", "--kill-on-bad-exit=1", "--export=ALL"]
    if per is not None:
        srun.append(f"--cpus-per-task={per}")
    return [
        *srun,
        sys.executable,
        "-m",
        "ssl_photoz.learn.gpu_slots",
        RANK_ENTRY,
        "--",
        *command,
    ], env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def first_host(nodelist: str, runner: Runner = subprocess.run) -> str:
    """The first host of a SLURM node list (``node[01-04]``): ``scontrol show hostnames``."""
    if not re.search(r"[\[,]", nodelist):
        return nodelist
    done = runner(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60
    )
    hosts = done.stdout.split() if done.returncode == 0 else []
    if not hosts:
        raise RuntimeError(f"scontrol show hostnames {nodelist}: {done.stderr.strip()}")
    return hosts[0]


def rank_env(env: dict[str, str], runner: Runner = subprocess.run) -> dict[str, str]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) from SLURM's."""
    env = dict(env)
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"]
    local = int(env.get("SLURM_LOCALID", "0"))
    # A task bound to its own card(s) (--ntasks-per-gpu implies --gpu-bind=single) sees only
    # those: its device is cuda:(local rank modulo the cards it sees).
    visible = parse_ids(env.get("CUDA_VISIBLE_DEVICES"))
    env["LOCAL_RANK"] = str(local % len(visible) if visible else local)
    env["MASTER_ADDR"] = first_host(nodelist, runner) if nodelist else "127.0.0.1"
    if not env.get("MASTER_PORT"):
        job = int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0)
        env["MASTER_PORT"] = str(20000 + job % 20000)
    return env


def _rank_main(argv: Sequence[str]) -> int:
    """One srun task: set the rank's variables, log them, run COMMAND."""
    command = list(argv)
    if command and command[0] == "--":
        command = command[1:]
    env = rank_env(dict(os.environ))
    print(
        f"ssl-photoz rank {env['RANK']} of {env['WORLD_SIZE']} (local rank {env['LOCAL_RANK']})"
        f" on {socket.gethostname()}, rendezvous {env['MASTER_ADDR']}:{env['MASTER_PORT']}",
        file=sys.stderr,
        flush=True,
    )
    return _run_child(command, env, ())


def gpu_run(
    command: Sequence[str],
    gpus: int = 1,
    ids: str | None = None,
    lock_dir: str | os.PathLike | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    detect: Callable[[], list[str]] = detect_ids,
    torchrun: bool = False,
    processes: int = 1,
    launcher: str = "torchrun",
    threads: int | None = None,
) -> int:
    """Run COMMAND on ``gpus`` free GPUs of this machine; its exit status. ``torchrun``: with
    more than one card, one process of COMMAND per card (see per_card). ``processes`` > 1: that
    many data-parallel ranks, started by ``launcher`` (see launch), on GPUs or not."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("gpu-run: no COMMAND given (ssl-photoz gpu-run [options] -- COMMAND ...)")
    env = dict(os.environ if env is None else env)
    if launcher == "srun":  # SLURM gave the job its nodes and cards: nothing to lock
        argv, env = launch(command, processes, launcher, threads, env)
        log.info("gpu-run: %d rank(s) by srun: %s", processes, " ".join(argv[:4]))
        return _run_child(argv, env, ())
    if torchrun and processes == 1:
        processes = 0  # one per card, below
    what = plan(gpus, ids, env, detect)
    if what.mode != "cpu" and processes > max(gpus, 1):
        raise ValueError(f"gpu-run: {processes} processes on {gpus} card(s): one card each")

    def ranks(cards: int) -> tuple[list[str], dict[str, str]]:
        n = processes or (cards if cards > 1 else 1)
        log.info("gpu-run: %d process(es) (%s)", n, "torchrun" if n > 1 else "no launcher")
        return launch(command, n, "torchrun", threads, env)

    if what.mode == "cpu":
        log.info("gpu-run: no GPU for this job (%s): running the command unchanged", what.source)
        argv, env = ranks(0)
        return _run_child(argv, env, ())
    if what.mode == "keep":
        if len(what.pool) < gpus:
            log.warning(
                "gpu-run: %d GPU(s) asked for, CUDA_VISIBLE_DEVICES=%s lists %d",
                gpus,
                env["CUDA_VISIBLE_DEVICES"],
                len(what.pool),
            )
        log.info(
            "gpu-run: CUDA_VISIBLE_DEVICES=%s already set (by the scheduler?): kept, no lock",
            env["CUDA_VISIBLE_DEVICES"],
        )
        argv, env = ranks(len(what.pool))
        return _run_child(argv, env, ())
    return _run_on_locked_cards(command, what, gpus, lock_dir, timeout, env, ranks)


def _run_on_locked_cards(command, what: Plan, gpus, lock_dir, timeout, env, ranks) -> int:
    """gpu_run's usual case: lock ``gpus`` free cards of the pool, run the ranks on them with
    CUDA_VISIBLE_DEVICES set, release the locks however the command ends."""
    folder = Path(lock_dir or env.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)
    try:
        held = acquire(folder, what.namespace, what.pool, gpus, timeout)
    except GpuSlotTimeout as exc:
        log.error("gpu-run: %s", exc)
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    try:
        chosen = list(held)
        for fd in held.values():
            _note_holder(fd, chosen, command)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        if what.source != "CUDA_VISIBLE_DEVICES":
            env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # the ids nvidia-smi shows
        log.info(
            "gpu-run: CUDA_VISIBLE_DEVICES=%s (pool %s from %s, locks in %s)",
            env["CUDA_VISIBLE_DEVICES"],
            ",".join(what.pool),
            what.source,
            folder / what.namespace,
        )
        argv, env = ranks(len(chosen))
        code = _run_child(argv, env, list(held.values()))
    finally:
        release(held)
    log.info("gpu-run: released GPU(s) %s (exit status %d)", ",".join(chosen), code)
    return code


if __name__ == "__main__":  # an srun task of --launcher srun
    if sys.argv[1:2] != [RANK_ENTRY]:
        sys.exit(f"usage: python -m ssl_photoz.learn.gpu_slots {RANK_ENTRY} -- COMMAND ...")
    sys.exit(_rank_main(sys.argv[2:]))
