"""The SAS frame cache's disk bound (cutouts.cache_policy / cache_max_gb), against the loopback
server: the cap holds through a run of several shard jobs, an evicted frame is downloaded again
with the same pixels, a frame being read is never evicted, and ``keep`` keeps everything."""

from __future__ import annotations

import bz2
import logging
import threading

import pytest
from loopback_server import LoopbackServer, Reply

from ssl_photoz.core.config import with_defaults
from ssl_photoz.surveys.sdss.conventions import FieldId
from ssl_photoz.surveys.sdss.frame_cache import CacheBound, cache_bytes, reading
from ssl_photoz.surveys.sdss.frames import make_frame_source
from ssl_photoz.surveys.sdss.refdata import FRAMES_4510_4_0030, real_path
from ssl_photoz.surveys.sdss.sas_frames import SasFrameSource

log = logging.getLogger(__name__)

R_BZ2 = (real_path(*FRAMES_4510_4_0030) / "frame-r-004510-4-0030.fits.bz2").read_bytes()
FIELDS = range(30, 42)  # the server has these fields of run 4510 camcol 4 (one real r frame)


def _path(field: int) -> str:
    return f"/sas/dr12/boss/photoObj/frames/301/4510/4/frame-r-004510-4-{field:04d}.fits.bz2"


@pytest.fixture
def server():
    with LoopbackServer() as srv:
        for field in FIELDS:
            srv.route("GET", _path(field), Reply(200, R_BZ2, content_type="application/x-bzip2"))
        yield srv


def _source(tmp_path, server, job: str, **cache) -> SasFrameSource:
    return SasFrameSource(
        tmp_path / "cache", tmp_path / job, base_url=server.url + "/sas", retries=0, **cache
    )


FRAME_BYTES = len(R_BZ2) + len(f"{'0' * 64}  frame-r-004510-4-0030.fits.bz2\n")  # with sidecar


def test_lru_cap_holds_through_shards_and_an_evicted_frame_comes_back(tmp_path, server):
    cap_frames = 3.5
    cap_gb = cap_frames * FRAME_BYTES / 1e9
    # Four shard jobs, field-ordered, each reading its fields and a neighbour on either side.
    shards = [range(30 + 3 * k - 1, 30 + 3 * k + 4) for k in range(4)]
    sizes = []
    evicted = 0
    for k, fields in enumerate(shards):
        with _source(tmp_path, server, f"work{k}", cache_policy="lru", cache_max_gb=cap_gb) as src:
            for field in fields:
                if field not in FIELDS:
                    continue
                src.release(src.fetch(FieldId(4510, 4, field), "r"))
                sizes.append(cache_bytes(tmp_path / "cache"))
            evicted += src.cache_bound.evicted
    downloads = sum(len(server.requests_to(_path(f))) for f in FIELDS)
    log.info(
        "lru cap %.0f bytes (%.1f frames): %d downloads over %d shards, %d evictions, cache "
        "largest %d bytes (%.2f frames), after the run %d",
        cap_gb * 1e9, cap_frames, downloads, len(shards), evicted, max(sizes),
        max(sizes) / FRAME_BYTES, sizes[-1],
    )  # fmt: skip
    assert evicted > 0
    assert max(sizes) <= cap_gb * 1e9 + FRAME_BYTES  # never above the cap plus one frame
    # Shards overlap by their neighbours: the neighbours still cached were not downloaded again.
    assert downloads < sum(len([f for f in s if f in FIELDS]) for s in shards)

    # Field 30 went long ago; asking for it again downloads it again, with the same pixels.
    first = FieldId(4510, 4, 30)
    before = len(server.requests_to(_path(30)))
    with _source(tmp_path, server, "again", cache_policy="lru", cache_max_gb=cap_gb) as src:
        assert not src.cache_path(first, "r").exists()
        path = src.fetch(first, "r")
        assert path.read_bytes() == bz2.decompress(R_BZ2)
        assert len(server.requests_to(_path(30))) == before + 1
        assert cache_bytes(tmp_path / "cache") <= cap_gb * 1e9 + FRAME_BYTES


def test_a_frame_being_read_is_never_evicted(tmp_path, server):
    cap_gb = 1.5 * FRAME_BYTES / 1e9
    with _source(tmp_path, server, "reader", cache_policy="lru", cache_max_gb=cap_gb) as src:
        held = src.cache_path(FieldId(4510, 4, 30), "r")
        src.release(src.fetch(FieldId(4510, 4, 30), "r"))
        with reading(held) as present:  # another job decompressing it just now
            assert present
            for field in (31, 32, 33):
                src.release(src.fetch(FieldId(4510, 4, field), "r"))
            assert held.exists()  # the oldest, but in use: kept
        src.release(src.fetch(FieldId(4510, 4, 34), "r"))
        assert not held.exists()  # no longer in use: the next download's eviction took it


def test_readers_and_evictors_in_threads_never_lose_a_frame(tmp_path, server):
    """Jobs at once on one cache (threads here; processes take the same file locks): every
    fetch succeeds whatever the evictions, and the pixels are the frame's."""
    cap_gb = 2.5 * FRAME_BYTES / 1e9
    errors = []
    plain = bz2.decompress(R_BZ2)

    def job(k):
        try:
            with _source(tmp_path, server, f"w{k}", cache_policy="lru", cache_max_gb=cap_gb) as s:
                for field in (*FIELDS[:6], *FIELDS[:6]):
                    path = s.fetch(FieldId(4510, 4, field), "r")
                    assert path.read_bytes() == plain
                    s.release(path)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache_bytes(tmp_path / "cache") <= cap_gb * 1e9 + 3 * FRAME_BYTES


def test_keep_policy_keeps_every_frame(tmp_path, server):
    with _source(tmp_path, server, "keep", cache_policy="keep") as src:
        for field in FIELDS:
            src.release(src.fetch(FieldId(4510, 4, field), "r"))
    assert cache_bytes(tmp_path / "cache") == len(FIELDS) * FRAME_BYTES


def test_cache_settings_come_from_the_config(tmp_path):
    cfg = with_defaults("cutouts", {"frame_source": "sas", "shard_size": 8, "store_shard": 8})
    cfg["stats_max_images"] = 1
    assert cfg["cache_policy"] == "lru" and cfg["cache_max_gb"] > 0
    with make_frame_source(cfg, tmp_path / "w", root=tmp_path) as src:
        assert src.cache_bound.max_bytes == int(cfg["cache_max_gb"] * 1e9)
    with pytest.raises(ValueError, match="cache_max_gb"):
        CacheBound(tmp_path, "lru", None)
    with pytest.raises(ValueError, match="cache_policy"):
        CacheBound(tmp_path, "fifo", 1.0)


def test_plan_policy_evicts_a_frame_when_the_last_shard_needing_it_is_done(tmp_path, server):
    # Three shards of fields 30-41 that share their edge fields (33 and 37), as neighbours do.
    plan = {"shards": [{"shard": k, "frames": []} for k in range(3)]}
    for k, fields in enumerate((range(30, 34), range(33, 38), range(37, 42))):
        plan["shards"][k]["frames"] = [[4510, 4, f] for f in fields]

    def run_shard(k):
        with _source(tmp_path, server, f"w{k}", cache_policy="plan") as src:
            for _, _, field in plan["shards"][k]["frames"]:
                src.release(src.fetch(FieldId(4510, 4, field), "r"))
            return src.shard_done(plan, k), src

    def cached_fields():
        root = tmp_path / "cache" / _path(30).removeprefix("/sas/").rsplit("/", 1)[0]
        return sorted(int(p.name[-13:-9]) for p in root.glob("frame-*.fits.bz2"))

    gone, _ = run_shard(2)
    assert gone == 4 and cached_fields() == [37]  # 37 still waits for shard 1
    gone, _ = run_shard(0)
    assert gone == 3 and cached_fields() == [33, 37]
    gone, _ = run_shard(1)
    assert gone == 5 and cached_fields() == []
    # A rerun of shard 0 downloads its frames again, with the same pixels.
    before = len(server.requests_to(_path(30)))
    with _source(tmp_path, server, "again", cache_policy="plan") as src:
        path = src.fetch(FieldId(4510, 4, 30), "r")
        assert path.read_bytes() == bz2.decompress(R_BZ2)
    assert len(server.requests_to(_path(30))) == before + 1
