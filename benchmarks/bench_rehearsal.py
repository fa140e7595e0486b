"""A survey-scale rehearsal of the cut-out stage from the SAS: downloads, cache, decompression,
Montage and the store, end to end, at the paper's density, with the frame I/O options side by side.

    python benchmarks/bench_rehearsal.py [--size 1] [--options bz2:0,indexed_bzip2:0,...]

Builds a small simulated survey at high Galactic latitude (``--sky-dir``, reused), renders the
full-size frames (bzip2-compressed, the simulated survey's header layout: ``write_frame``) of
``--size`` consecutive fields of one camcol plus the neighbour on each side, and serves them at
their SAS paths (``dr12/boss/photoObj/frames/301/<run>/<camcol>/``) from ``python -m http.server``
on 127.0.0.1, in another process so that its CPU is not counted. ``--density`` objects per field
(4.4: the paper's 1.7 M objects over its ~390,000 fields with objects), the brightest galaxies of
each field, make one cut-out job, planned as for real SDSS (each object's field and its
neighbours along the scan). For each option, ``decoder:fetch_workers``, the project's own
``cut_shard`` cuts the job with a fresh ``SasFrameSource`` cache, as ``ssl-photoz cutouts`` does.
``--stream-mb-s`` caps each download's rate, to see what fetching ahead hides on a slower link.

Measured per option: five-band cut-outs per core-second (this process's CPU time: every thread
of the job, decompression and Montage included; the server's is not counted) and per wall
second, the bytes downloaded (counted by the server), the peak disk of cache + frame work
folder + Montage scratch (sampled every 50 ms), and whether the stored images are identical, NaN
for NaN, to the first option's. Copy the printed table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

SKY = {
    "seed": 42,
    # High Galactic latitude (b about +80 deg), one run: six camcols of 12 fields.
    "region": {"ra_min": 180.0, "ra_max": 182.0, "dec_min": 30.0, "n_runs": 1},
    "catalog_r_limit": 19.0,
    "frame_r_limit": 22.5,
}
CAMCOL = 3
PAPER_DENSITY = 4.4
DEFAULT_OPTIONS = "bz2:0,indexed_bzip2:0,bz2:4,indexed_bzip2:4"


def ensure_sky(sky_dir: Path, frames_root: Path) -> Path:
    """Build the sky unless ``sky_dir`` holds this one; a rebuild drops the frames rendered."""
    from ssl_photoz.surveys.sdss.sky.survey import META_NAME, SkySettings, build_survey

    want = json.loads(json.dumps(SkySettings.from_config(SKY).to_json()))
    meta = sky_dir / META_NAME
    if not (meta.exists() and json.loads(meta.read_text())["settings"] == want):
        shutil.rmtree(frames_root, ignore_errors=True)  # rendered from another sky
        build_survey(SKY, sky_dir)
    return sky_dir


def ensure_frames(sky_dir: Path, fields: list, root: Path, relative_path) -> float:
    """Render the frames missing under ``root`` (SAS layout); the seconds it took."""
    from ssl_photoz.surveys.sdss import SDSS
    from ssl_photoz.surveys.sdss.sky.render import write_frame
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

    sky = MockSky(sky_dir)
    t0 = time.perf_counter()
    for fid in fields:
        for band in SDSS.bands:
            path = root / relative_path(fid, band)
            if not path.exists():
                write_frame(sky.render(fid, band), path)
    return time.perf_counter() - t0


def pick_objects(sky_dir: Path, fields: list, density: float) -> pd.DataFrame:
    """The brightest primary galaxies of each field, ``density`` per field on average."""
    import duckdb

    from ssl_photoz.surveys.sdss.sky.survey import DB_NAME

    con = duckdb.connect(str(sky_dir / DB_NAME), read_only=True)
    try:
        df = con.execute(
            'SELECT objID AS objid, ra, dec, run, camcol, field, petroMag_r FROM "PhotoObjAll" '
            "WHERE mode = 1 AND type = 3 ORDER BY run, camcol, field, petroMag_r"
        ).df()
    finally:
        con.close()
    picks = []
    for k, fid in enumerate(fields):
        n = round(density * (k + 1)) - round(density * k)
        mine = df[
            (df["run"] == fid.run) & (df["camcol"] == fid.camcol) & (df["field"] == fid.field)
        ]
        if len(mine) < n:
            raise RuntimeError(f"field {fid} holds {len(mine)} galaxies, fewer than {n}")
        picks.append(mine.head(n))
    picked = pd.concat(picks).drop(columns="petroMag_r")
    return picked.sort_values("objid", ignore_index=True)  # the plan's field order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(root: Path, port: int, stream_mb_s: float, log: Path) -> None:
    """Serve ``root`` on 127.0.0.1:``port``, each response at most ``stream_mb_s`` (0: no limit);
    appends the bytes of each response to ``log``, one line each."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def copyfile(self, source, outputfile) -> None:
            # Counted before it is sent, so the count is complete when the client has the bytes.
            with open(log, "a") as fh:
                fh.write(f"{os.fstat(source.fileno()).st_size}\n")
            while data := source.read(1 << 16):
                outputfile.write(data)
                if stream_mb_s:
                    time.sleep(len(data) / (stream_mb_s * 1e6))

    handler = functools.partial(Handler, directory=str(root))
    ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


class StaticSas:
    """A static file server (``serve``) for ``root`` on 127.0.0.1, in its own process."""

    def __init__(self, root: Path, log: Path, stream_mb_s: float = 0.0):
        self.port, self.log = free_port(), log
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root), "--port", str(self.port),
             "--stream-mb-s", str(stream_mb_s), "--log", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("the static SAS server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def served_bytes(self) -> int:
        """Bytes of frame data sent so far."""
        if not self.log.exists():
            return 0
        return sum(int(line) for line in self.log.read_text().split())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def disk_bytes(folders: list[Path]) -> int:
    total = 0
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
    return total


class PeakDisk:
    """The most bytes ``folders`` held at once, sampled on a thread."""

    def __init__(self, folders: list[Path], every_s: float = 0.05):
        self.folders, self.every_s, self.peak = folders, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, disk_bytes(self.folders))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, disk_bytes(self.folders))


def run_option(decoder: str, workers: int, plan: dict, objects, server: StaticSas, tmp: Path):
    """One cut-out job with ``decoder`` and ``workers`` fetch threads; its measurements."""
    import zarr

    from ssl_photoz.cutouts.cut import cut_shard
    from ssl_photoz.cutouts.store import IMAGES, create_store
    from ssl_photoz.surveys.sdss.sas_frames import SasFrameSource

    name = f"{decoder}-{workers}"
    store, cache = tmp / f"{name}.zarr", tmp / f"cache-{name}"
    work, montage = tmp / f"frames-{name}", tmp / f"montage-{name}"
    for folder in (cache, work, montage):
        folder.mkdir()
    create_store(store, len(objects), plan["store_shard"])
    served_before = server.served_bytes()
    with PeakDisk([cache, work, montage]) as disk:
        c0, w0 = time.process_time(), time.perf_counter()
        with SasFrameSource(cache, work, base_url=server.url, decoder=decoder) as source:
            statuses = cut_shard(
                plan["shards"][0],
                objects,
                store,
                len(objects),
                plan["store_shard"],
                source,
                montage,
                fetch_workers=workers,
            )
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    images = zarr.open_array(str(store / IMAGES), mode="r")[:]
    return {
        "option": f"{decoder}, {workers} fetch threads" if workers else f"{decoder}, serial",
        "n": len(statuses),
        "ok": sum(s["ok"] for s in statuses),
        "cpu": cpu,
        "wall": wall,
        "fetched": server.served_bytes() - served_before,
        "peak_disk": disk.peak,
        "images": images,
    }


def rehearse(
    size: int,
    density: float,
    options: list[tuple[str, int]],
    sky_dir: Path,
    frames_root: Path,
    stream_mb_s: float = 0.0,
):
    """Run every option on one job of ``size`` fields; one result dict per option."""
    from ssl_photoz.cutouts.plan import plan_shards
    from ssl_photoz.surveys.sdss.bzip2 import decoder_available
    from ssl_photoz.surveys.sdss.conventions import FieldId
    from ssl_photoz.surveys.sdss.sas_frames import SasFrameSource
    from ssl_photoz.surveys.sdss.sky.survey import MockSky

    ensure_sky(sky_dir, frames_root)
    fp = MockSky(sky_dir).footprint
    run = fp.runs[0]
    if size + 2 > fp.n_fields(run, CAMCOL):
        most = fp.n_fields(run, CAMCOL) - 2
        raise ValueError(f"--size {size}: at most {most} fields of the rehearsal sky hold objects")
    fields = [FieldId(run, CAMCOL, fp.first_field + k) for k in range(size + 2)]
    naming = SasFrameSource(frames_root, frames_root)  # only for its SAS paths
    render_s = ensure_frames(sky_dir, fields, frames_root, naming.relative_path)
    # The objects sit in the inner fields, so each has both neighbours along the scan.
    objects = pick_objects(sky_dir, fields[1:-1], density)
    store_shard = 64
    shard_size = store_shard * -(-len(objects) // store_shard)
    plan = plan_shards(objects, shard_size, store_shard)
    results = []
    with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp_name:
        server = StaticSas(frames_root, Path(tmp_name) / "served.log", stream_mb_s)
        try:
            for decoder, workers in options:
                if not decoder_available(decoder):
                    print(f"{decoder}: not installed, skipped")
                    continue
                results.append(run_option(decoder, workers, plan, objects, server, Path(tmp_name)))
        finally:
            server.close()
    for r in results:
        r["identical"] = np.array_equal(r["images"], results[0]["images"], equal_nan=True)
    return results, {"fields": len(fields), "objects": len(objects), "render_s": render_s}


def parse_options(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        decoder, _, workers = item.partition(":")
        out.append((decoder.strip(), int(workers or 0)))
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| option | cut-outs (ok) | CPU s | wall s | per core-second | per wall second "
        "| fetched | peak disk | pixels vs first |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['option']} | {r['n']} ({r['ok']}) | {r['cpu']:.1f} | {r['wall']:.1f} "
            f"| **{r['n'] / r['cpu']:.2f}** | {r['n'] / r['wall']:.2f} "
            f"| {r['fetched'] / 1e6:.1f} MB | {r['peak_disk'] / 1e6:.0f} MB "
            f"| {'identical' if r['identical'] else 'DIFFERENT'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1, help="fields holding objects (one job)")
    parser.add_argument("--density", type=float, default=PAPER_DENSITY, help="objects per field")
    parser.add_argument("--options", default=DEFAULT_OPTIONS, help="decoder:fetch_workers,...")
    parser.add_argument("--sky-dir", type=Path)
    parser.add_argument("--frames-dir", type=Path, help="rendered SAS tree (reused)")
    parser.add_argument(
        "--stream-mb-s", type=float, default=0.0, help="cap each download's rate (0: loopback)"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.stream_mb_s, args.log)
        return 0
    base = Path(tempfile.gettempdir()) / "ssl-photoz-rehearsal"
    sky_dir = args.sky_dir or base / "sky"
    frames_root = args.frames_dir or base / "sas"
    options = parse_options(args.options)
    results, info = rehearse(
        args.size, args.density, options, sky_dir, frames_root, args.stream_mb_s
    )
    rate = f"{args.stream_mb_s:g} MB/s per download" if args.stream_mb_s else "no rate cap"
    print(
        f"{info['objects']} objects in {args.size} fields ({args.density} per field), "
        f"{info['fields']} fields of frames served (neighbours included, {rate}); "
        f"frames rendered in {info['render_s']:.0f} s"
    )
    print(table(results))
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
