"""The disk bound of the SAS frame cache (``cutouts.cache_policy``, ``cutouts.cache_max_gb``).

Three policies:

- ``keep``: every downloaded frame stays (the cache grows to the survey: ~7 TB at paper scale);
- ``lru``: after each download the cache's frames are brought back under ``cache_max_gb``,
  least recently used first (a cache hit counts as a use: it touches the file's mtime);
- ``plan``: a frame goes when every shard of the plan that needs it is done. Each cut-out job,
  once it succeeds, adds its shard to ``.done/<frame>.json`` (the plan's id and the shards done)
  for every frame of its shard (``shard_done``); a frame whose record lists all the shards that
  need it is deleted. The bound is then the frames of the shards running or waiting for a
  neighbour: jobs run in field order keep that small, but a job that keeps failing pins its
  frames and those of the shards next to it.

The cache is shared by cut-out jobs running at once, on one node or on several with a shared
file system, so everything here goes through ``fcntl.flock`` locks on files in the cache:

- a job reading a cached frame (its checksum, its bunzip2 into the job's scratch) holds a shared
  lock on that frame (``reading``); the evictor deletes only frames whose exclusive lock it gets
  without waiting, so a frame being read is never deleted under its reader;
- the evictions and the running total of the cache's bytes (``.cache-bytes``, so that a download
  does not walk the tree) go under one exclusive lock, ``.cache.lock``.

The total counts the frames and their sidecars this policy has seen added; when it passes the cap
the tree is walked, which also corrects the total for what others wrote or removed, and frames go
until the cache holds at most ``LOW_WATER`` of the cap. So after a download the cache holds at
most the cap plus the frames being downloaded at that moment (one per running job).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_POLICIES = ("keep", "lru", "plan")
LOW_WATER = 0.9  # evict down to this share of the cap, so a walk is paid once per ~10 % of it
LOCK_NAME = ".cache.lock"
TOTAL_NAME = ".cache-bytes"
DONE_DIR = ".done"
FRAME_SUFFIX = ".fits.bz2"
SIDECAR_SUFFIX = ".sha256"


@contextmanager
def reading(cached: Path) -> Iterator[bool]:
    """Hold a shared lock on the cached frame while it is read; yields whether it is there.

    The file is opened, then locked, then checked to be still the one at ``cached`` (an
    evictor may have deleted it, or a download replaced it, between the open and the lock).
    """
    try:
        fd = os.open(cached, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            present = os.stat(cached).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            present = False
        yield present
    finally:
        os.close(fd)  # closing drops the lock


def touch(cached: Path) -> None:
    """Mark a cached frame as just used (its mtime is the LRU order)."""
    try:
        os.utime(cached)
    except OSError:  # gone, or another user's file in a shared cache: the order is a hint only
        pass


def cache_bytes(root: Path) -> int:
    """Bytes of the finished frames and sidecars under ``root`` (temporary files start with '.')."""
    return sum(size for _, size, _ in _entries(root))


class CacheBound:
    """Keeps the frames under ``root`` within the policy after each download."""

    def __init__(self, root: str | os.PathLike, policy: str = "keep", max_gb: float | None = None):
        if policy not in CACHE_POLICIES:
            raise ValueError(f"cache_policy is {policy!r}; expected one of {CACHE_POLICIES}")
        if policy == "lru" and not (max_gb and max_gb > 0):
            raise ValueError(f"cache_policy 'lru' needs cache_max_gb > 0, got {max_gb!r}")
        self.root = Path(root)
        self.policy = policy
        self.max_bytes = int(max_gb * 1e9) if policy == "lru" else None
        self.evicted = 0  # frames this process evicted (for the tests and the log)

    def added(self, cached: Path) -> None:
        """A download just put ``cached`` (and its sidecar) in the cache: enforce the cap."""
        if self.max_bytes is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            total = self._read_total()
            if total is None:
                total = cache_bytes(self.root)
            else:
                total += _size(cached) + _size(_sidecar(cached))
            if total > self.max_bytes:
                total = self._evict(int(self.max_bytes * LOW_WATER))
            self._write_total(total)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _evict(self, target: int) -> int:
        """Delete least recently used frames not being read until at most ``target`` bytes stay;
        returns the bytes left."""
        entries = sorted(_entries(self.root), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        skipped = 0
        for _, size, frame in entries:
            if total <= target:
                break
            if _delete_unless_read(frame):
                total -= size
                self.evicted += 1
            else:
                skipped += 1
        log.info(
            "frame cache %s: %.2f GB after eviction (cap %.2f GB; %d frame(s) in use kept)",
            self.root,
            total / 1e9,
            self.max_bytes / 1e9,
            skipped,
        )
        return total

    def shard_done(self, plan_id: str, shard: int, needed_by: dict[Path, set[int]]) -> int:
        """Policy ``plan``: shard ``shard`` of plan ``plan_id`` is done with the frames of
        ``needed_by`` (cached path -> the plan's shards that need it); delete each frame every
        shard needing it is done with. Returns how many frames went."""
        if self.policy != "plan" or not needed_by:
            return 0
        import json

        done_dir = self.root / DONE_DIR
        done_dir.mkdir(parents=True, exist_ok=True)
        gone = 0
        with self._exclusive():
            for cached, shards in needed_by.items():
                record = done_dir / (cached.name + ".json")
                try:
                    held = json.loads(record.read_text())
                except (FileNotFoundError, ValueError):
                    held = {}
                done = set(held.get("done", [])) if held.get("plan") == plan_id else set()
                done.add(int(shard))
                if done >= set(shards):
                    there = cached.exists()
                    if there and not _delete_unless_read(cached):
                        continue  # in use (a rerun reading it): the next job done retries
                    record.unlink(missing_ok=True)
                    gone += there
                else:
                    record.write_text(json.dumps({"plan": plan_id, "done": sorted(done)}))
        self.evicted += gone
        return gone

    def _read_total(self) -> int | None:
        try:
            return int((self.root / TOTAL_NAME).read_text())
        except (FileNotFoundError, ValueError):
            return None  # first use, or a write cut short: walk the tree instead

    def _write_total(self, total: int) -> None:
        (self.root / TOTAL_NAME).write_text(str(total))


def _sidecar(cached: Path) -> Path:
    return cached.with_name(cached.name + SIDECAR_SUFFIX)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """(mtime, bytes with its sidecar, path) of each finished frame under ``root``."""
    out = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if name.startswith(".") or not name.endswith(FRAME_SUFFIX):
                continue
            frame = Path(folder) / name
            try:
                stat = frame.stat()
            except FileNotFoundError:
                continue
            out.append((stat.st_mtime, stat.st_size + _size(_sidecar(frame)), frame))
    return out


def _delete_unless_read(frame: Path) -> bool:
    """Delete ``frame`` and its sidecar if no job holds it open for reading; whether deleted."""
    try:
        # Read-write: over NFS an exclusive flock becomes a POSIX write lock, which needs it.
        fd = os.open(frame, os.O_RDWR)
    except FileNotFoundError:
        return True  # someone else removed it
    except PermissionError:
        fd = os.open(frame, os.O_RDONLY)  # enough for a local flock
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if os.stat(frame).st_ino != os.fstat(fd).st_ino:
                return False  # replaced by a fresh download since the walk: keep it
        except FileNotFoundError:
            return True
        frame.unlink()
        _sidecar(frame).unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
