"""The survey-scale rehearsal (benchmarks/bench_rehearsal.py) at its smallest: one field of
objects at the paper's density with both neighbours, downloaded from a static SAS on 127.0.0.1
and cut by ``cut_shard`` with two frame I/O options whose pixels must agree exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ssl_photoz.surveys.sdss.bzip2 import decoder_available

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rehearsal.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_rehearsal", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rehearsal_cuts_from_a_loopback_sas_with_identical_pixels(tmp_path):
    bench = load_bench()
    other = "indexed_bzip2" if decoder_available("indexed_bzip2") else "bz2"
    options = [("bz2", 0), (other, 2)]
    results, info = bench.rehearse(
        1, bench.PAPER_DENSITY, options, tmp_path / "sky", tmp_path / "sas"
    )
    assert info == {"fields": 3, "objects": 4, "render_s": info["render_s"]}
    served = sum(p.stat().st_size for p in (tmp_path / "sas").rglob("*.fits.bz2"))
    assert len(list((tmp_path / "sas").rglob("*.fits.bz2"))) == 15  # 3 fields x 5 bands
    assert [r["identical"] for r in results] == [True, True]
    for r in results:
        assert r["n"] == r["ok"] == 4
        assert r["fetched"] == served  # every frame downloaded once, neighbours included
        assert r["peak_disk"] >= served  # the cache holds them all, plus the work files
        assert np.isfinite(r["images"]).all() and r["images"].shape == (4, 5, 107, 107)
        assert r["cpu"] > 0 and r["wall"] > 0
    assert "| bz2, serial | 4 (4) |" in bench.table(results)


def test_rehearsal_options_parse():
    bench = load_bench()
    assert bench.parse_options("bz2:0, indexed_bzip2:4,bz2") == [
        ("bz2", 0),
        ("indexed_bzip2", 4),
        ("bz2", 0),
    ]
