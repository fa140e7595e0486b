"""Verb gpu-run: the training rules' jobs take their GPUs through it (workflow/rules/learn.smk)."""

from __future__ import annotations

import argparse


def cmd_gpu_run(args: argparse.Namespace) -> int:
    """COMMAND on free GPUs of this machine, CUDA_VISIBLE_DEVICES set; its exit status."""
    from ssl_photoz.learn.gpu_slots import gpu_run

    return gpu_run(
        args.command,
        args.gpus,
        args.ids,
        args.lock_dir,
        args.timeout,
        torchrun=args.torchrun,
        processes=args.processes,
        launcher=args.launcher,
        threads=args.threads,
    )


def _add_gpu_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gpu-run",
        help="run COMMAND on free GPUs of this machine, one card per job (the training rules)",
        description="Take N free GPU ids (lock files, released when the job ends however it "
        "ends), run COMMAND with CUDA_VISIBLE_DEVICES set to them, exit with its status. An "
        "already set CUDA_VISIBLE_DEVICES (SLURM) is kept; with no GPU, COMMAND runs unchanged.",
    )
    p.add_argument("--gpus", type=int, default=1, help="cards for this job (default: 1)")
    p.add_argument(
        "--ids",
        help="the pool, e.g. 0,1,2,3 (or none); default: $SSL_PHOTOZ_GPU_IDS, else nvidia-smi",
    )
    p.add_argument(
        "--lock-dir",
        help="lock files, shared by the jobs of the machine "
        "(default: $SSL_PHOTOZ_GPU_LOCK_DIR, else .snakemake/gpu-slots)",
    )
    p.add_argument("--timeout", type=float, help="give up (exit 75) after this many seconds")
    p.add_argument(
        "--torchrun",
        action="store_true",
        help="given several cards, run COMMAND once per card under torchrun (DDP pretraining)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="data-parallel ranks of COMMAND (default 1: one process); on GPUs one card each",
    )
    p.add_argument(
        "--launcher",
        choices=("torchrun", "srun"),
        default="torchrun",
        help="torchrun: --standalone on this machine; srun: the tasks of this SLURM job",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="the job's CPUs: OMP_NUM_THREADS = threads // processes per rank",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    p.set_defaults(func=cmd_gpu_run)


VERBS = {"gpu-run": _add_gpu_run}
