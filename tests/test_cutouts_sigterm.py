"""A cut-out job sent SIGTERM (a SLURM time limit, a cancelled job) mid-download exits with 143
and leaves nothing in its scratch: the frames it had decompressed go as on any other exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
from loopback_server import LoopbackServer, Reply

from ssl_photoz.surveys.sdss.conventions import pack_objid
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path

FRAMES = "/sas/dr12/boss/photoObj/frames/301/4510/4"


def _objects() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "objid": pack_objid(4510, 4, 30, [1, 2]).astype("int64"),
            "ra": [10.0, 10.01],
            "dec": [0.5, 0.51],
            "run": 4510,
            "camcol": 4,
            "field": 30,
            "z_spec": [0.1, float("nan")],
            "ebv": 0.02,
            "split": ["train", "unlabeled"],
            "fraction_rank": [0.1, 0.2],
        }
    )


def _cli(*argv, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssl_photoz.cli", *map(str, argv)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def test_sigterm_mid_download_exits_143_and_leaves_no_frame_in_scratch(tmp_path):
    u30 = (real_path(*FRAMES_4510_4_0030) / "frame-u-004510-4-0030.fits.bz2").read_bytes()
    section = {"frame_source": "sas", "shard_size": 8, "store_shard": 8, "stats_max_images": 1}
    objects = tmp_path / "objects.parquet"
    _objects().to_parquet(objects)
    plan, store = tmp_path / "plan.json", tmp_path / "cutouts.zarr"
    planning = _cli(
        "plan-shards", "--section-json", json.dumps(section), "--objects", objects,
        "--plan", plan, "--store", store,
    )  # fmt: skip
    assert planning.wait(timeout=120) == 0, planning.stdout.read()

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with LoopbackServer() as server:
        # u of field 29 is absent, u of field 30 arrives, u of field 31 hangs: the job is killed
        # while it waits, with field 30 decompressed in its scratch.
        server.route("GET", f"{FRAMES}/frame-u-004510-4-0030.fits.bz2", Reply(200, u30))
        server.route("GET", f"{FRAMES}/frame-u-004510-4-0031.fits.bz2", Reply(200, u30, delay_s=30))
        machine = {"sas_url": server.url + "/sas", "cache_dir": str(tmp_path / "cache")}
        machine |= {"retries": 0, "timeout_s": 60}
        env = {**os.environ, "TMPDIR": str(scratch), "NO_PROXY": "127.0.0.1,localhost"}
        job = _cli(
            "cutouts", "--section-json", json.dumps(section), "--machine-json",
            json.dumps(machine), "--objects", objects, "--plan", plan, "--shard", 0,
            "--store", store, "--out", tmp_path / "shards" / "0.json", env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (
            list(scratch.rglob("frame-u-004510-4-0030.fits"))
            and server.requests_to(f"{FRAMES}/frame-u-004510-4-0031.fits.bz2")
        ):
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "the job never reached the hanging download"
            time.sleep(0.05)
        held = [str(p.relative_to(scratch)) for p in scratch.rglob("*") if p.is_file()]
        job.send_signal(signal.SIGTERM)
        output, _ = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM, output
    assert any(name.endswith("frame-u-004510-4-0030.fits") for name in held), held
    assert list(scratch.iterdir()) == [], "the job's scratch must go on SIGTERM"
    assert not (tmp_path / "shards" / "0.json").exists()
    cached = tmp_path / "cache" / FRAMES.removeprefix("/sas/") / "frame-u-004510-4-0030.fits.bz2"
    assert cached.exists()  # the cache is no scratch: it stays
