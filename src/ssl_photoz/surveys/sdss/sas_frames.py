"""The SAS frame source: SDSS corrected frames downloaded from the Science Archive Server into
a checksummed cache (``cutouts.frame_source: sas``).

The cache mirrors the SAS tree and holds a ``.sha256`` sidecar beside each frame; a download is
checked before it replaces the cache entry in one step (see ``SasFrameSource``). The interface,
the reference counting of the files handed out and the error classes are those of every frame
source (``ssl_photoz.surveys.sdss.frames``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from ssl_photoz.core.provenance import file_sha256
from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.bzip2 import CHUNK, Bunzip, decompress_file, resolve_decoder
from ssl_photoz.surveys.sdss.conventions import FieldId
from ssl_photoz.surveys.sdss.frame_cache import CacheBound, reading, touch
from ssl_photoz.surveys.sdss.frame_errors import (
    CorruptFrameError,
    FrameDownloadError,
    FrameNotFoundError,
    describe_frame,
)
from ssl_photoz.surveys.sdss.frames import (
    FrameSource,
    Window,
    check_band,
    check_fits_image,
    frame_name,
    unlink_quietly,
)

__all__ = [
    "DEFAULT_DATA_RELEASE",
    "DEFAULT_RERUN",
    "SAS_BASE_URL",
    "SAS_FRAME_PATHS",
    "SasFrameSource",
]

log = logging.getLogger(__name__)

SAS_BASE_URL = "https://data.sdss.org/sas"
DEFAULT_DATA_RELEASE = 12
DEFAULT_RERUN = 301

# Where each data release keeps the corrected frames under the SAS root, e.g. DR12:
#   https://data.sdss.org/sas/dr12/boss/photoObj/frames/301/4510/4/frame-r-004510-4-0030.fits.bz2
# The imaging was last reprocessed for DR8 (rerun 301); later releases republish the same frames:
# under boss/ through DR12 (SDSS-III) and under eboss/ from DR13 on (SDSS-IV).
SAS_FRAME_PATHS = {
    9: "dr9/boss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    10: "dr10/boss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    11: "dr11/boss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    12: "dr12/boss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    13: "dr13/eboss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    14: "dr14/eboss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    15: "dr15/eboss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    16: "dr16/eboss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
    17: "dr17/eboss/photoObj/frames/{rerun}/{run}/{camcol}/{name}",
}


class _RetryableError(Exception):
    """One download attempt failed in a way another attempt may fix."""


class SasFrameSource(FrameSource):
    """Frames from the SDSS Science Archive Server, kept bzip2-compressed in ``cache_dir``.

    The cache mirrors the SAS tree (``cache_dir/dr12/boss/photoObj/frames/301/<run>/<camcol>/``)
    and holds ``<file>.sha256`` beside each frame. A download is checked (length against
    Content-Length, a complete bzip2 stream, a FITS file with a 2-D primary image) before it
    replaces the cache entry in one step, so the cache never holds a half-written file and two
    processes fetching one frame both end with the same good file. A cached file is checked
    against its sidecar on every use; a damaged one is downloaded again.

    Connection errors, timeouts, HTTP 5xx/429, short bodies and broken bzip2 are retried up to
    ``retries`` times after the first attempt, waiting ``backoff_s * 2**k`` seconds before retry
    k; HTTP 404 raises ``FrameNotFoundError`` at once and other 4xx ``FrameDownloadError``.

    ``cache_policy`` bounds the cache's disk (``ssl_photoz.surveys.sdss.frame_cache``): ``keep``
    every frame, ``lru`` (least recently used frames go after a download that takes the cache
    over ``cache_max_gb``) or ``plan`` (a frame goes once every shard needing it is done,
    ``shard_done``); a frame some job is reading is never deleted. An evicted frame is simply
    downloaded again when a job needs it.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        base_url: str = SAS_BASE_URL,
        data_release: int = DEFAULT_DATA_RELEASE,
        rerun: int = DEFAULT_RERUN,
        timeout_s: float = 60,
        retries: int = 4,
        backoff_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        cache_policy: str = "keep",
        cache_max_gb: float | None = None,
        decoder: str | None = None,
    ):
        super().__init__(work_dir)
        self.decoder = decoder
        if int(data_release) not in SAS_FRAME_PATHS:
            raise ValueError(
                f"data_release {data_release}: frame paths are known for DR "
                f"{sorted(SAS_FRAME_PATHS)}"
            )
        self.cache_dir = Path(cache_dir)
        self.cache_bound = CacheBound(self.cache_dir, cache_policy, cache_max_gb)
        self.base_url = base_url.rstrip("/")
        self.data_release = int(data_release)
        self.rerun = int(rerun)
        self.timeout_s = timeout_s
        self.retries = int(retries)
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._session = session
        self._own_session = session is None

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def close(self) -> None:
        super().close()
        if self._own_session and self._session is not None:
            self._session.close()
            self._session = None

    def relative_path(self, fid: FieldId, band: str) -> str:
        return SAS_FRAME_PATHS[self.data_release].format(
            rerun=self.rerun, run=fid.run, camcol=fid.camcol, name=frame_name(fid, band)
        )

    def url(self, fid: FieldId, band: str) -> str:
        return f"{self.base_url}/{self.relative_path(fid, band)}"

    def cache_path(self, fid: FieldId, band: str) -> Path:
        return self.cache_dir / self.relative_path(fid, band)

    def fetch(self, fid: FieldId, band: str, window: Window | None = None) -> Path:
        check_band(fid, band)
        target = self.work_dir / frame_name(fid, band, ".fits")
        with self._frame_lock(target.name):
            if self._reuse(target):
                return target
            cached = self.cache_path(fid, band)
            # Read under a shared lock: an evictor in another job skips the frame meanwhile.
            with reading(cached) as present:
                if present and self._cache_is_good(fid, band, cached):
                    touch(cached)  # the LRU order
                    return self._bunzip_to_work(fid, band, cached, target)
            path = self._download(fid, band, cached, target)
            self.cache_bound.added(cached)
            return path

    # -- the cache --------------------------------------------------------------------------
    def shard_done(self, plan: dict, shard: int) -> int:
        """Cache policy ``plan``: cut-out job ``shard`` of ``plan`` (plan.json) succeeded, so
        its frames that no other shard still needs leave the cache; returns how many went."""
        if self.cache_bound.policy != "plan":
            return 0
        mine = {tuple(f) for f in plan["shards"][shard]["frames"]}
        needers: dict[tuple, set[int]] = {f: set() for f in mine}
        for other in plan["shards"]:
            for f in other["frames"]:
                if tuple(f) in needers:
                    needers[tuple(f)].add(int(other["shard"]))
        needed_by = {
            self.cache_path(FieldId(*f), band): shards
            for f, shards in needers.items()
            for band in SDSS.bands
        }
        # The plan's shards and their frames say who needs what: a new plan starts afresh.
        plan_id = hashlib.sha256(repr(plan["shards"]).encode()).hexdigest()[:16]
        return self.cache_bound.shard_done(plan_id, shard, needed_by)

    @staticmethod
    def _sidecar(cached: Path) -> Path:
        return cached.with_name(cached.name + ".sha256")

    def _cache_is_good(self, fid: FieldId, band: str, cached: Path) -> bool:
        if not cached.exists():
            return False
        sidecar = self._sidecar(cached)
        try:
            recorded = sidecar.read_text().split()[0]
        except (FileNotFoundError, IndexError):
            recorded = None
        if recorded is not None and file_sha256(cached) == recorded:
            return True
        if recorded is None:
            # Another process may have published the file but not yet its sidecar: check the
            # content itself before calling it bad.
            if self._content_is_good(cached):
                self._write_sidecar(cached, file_sha256(cached))
                return True
            why = "no checksum sidecar and the content does not check out"
        else:
            why = f"sha256 differs from {sidecar.name}"
        log.warning(
            "%s: cached %s is damaged (%s); downloading it again",
            describe_frame(fid, band),
            cached,
            why,
        )
        unlink_quietly(cached)
        unlink_quietly(sidecar)
        return False

    @staticmethod
    def _content_is_good(cached: Path) -> bool:
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            plain = Path(tmp) / "frame.fits"
            try:
                with open(plain, "wb") as out:
                    decompress_file(cached, out)
            except (OSError, EOFError):
                return False
            return check_fits_image(plain) is None

    def _write_sidecar(self, cached: Path, digest: str) -> None:
        sidecar = self._sidecar(cached)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{sidecar.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{digest}  {cached.name}\n")  # the format `sha256sum -c` reads
            os.replace(tmp, sidecar)
        except BaseException:
            unlink_quietly(Path(tmp))
            raise

    # -- downloading ------------------------------------------------------------------------
    def _download(self, fid: FieldId, band: str, cached: Path, target: Path) -> Path:
        url = self.url(fid, band)
        cached.parent.mkdir(parents=True, exist_ok=True)
        attempts = self.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                wait = self.backoff_s * 2 ** (attempt - 1)
                log.info(
                    "%s: retry %d/%d in %.1f s",
                    describe_frame(fid, band),
                    attempt,
                    self.retries,
                    wait,
                )
                self._sleep(wait)
            try:
                return self._download_once(fid, band, url, cached, target)
            except _RetryableError as exc:
                last = exc
                log.warning(
                    "%s: download from %s failed (attempt %d/%d): %s",
                    describe_frame(fid, band),
                    url,
                    attempt + 1,
                    attempts,
                    exc,
                )
        raise FrameDownloadError(
            fid, band, url, f"gave up after {attempts} attempts; last error: {last}"
        ) from last

    def _download_once(self, fid: FieldId, band: str, url: str, cached: Path, target: Path):
        """One attempt: stream into a temporary cache file and bunzip2 it into work_dir (bz2: as
        the bytes arrive; indexed_bzip2: once they are all there)."""
        fd, tmp_name = tempfile.mkstemp(
            dir=cached.parent, prefix=f".{cached.name}.", suffix=".partial"
        )
        tmp = Path(tmp_name)
        plain_fd, plain_name = tempfile.mkstemp(
            dir=self.work_dir, prefix=f".{target.name}.", suffix=".tmp"
        )
        plain = Path(plain_name)
        try:
            inline = resolve_decoder(self.decoder) == "bz2"
            with os.fdopen(fd, "wb") as raw, os.fdopen(plain_fd, "wb") as out:
                # bz2 decodes as the bytes arrive; another decoder reads the finished file.
                digest, size, expected, complete = self._stream(
                    fid, band, url, raw, out if inline else None
                )
            if expected is not None and size != expected:
                raise _RetryableError(f"body has {size} bytes, Content-Length said {expected}")
            if not inline:
                complete = self._decode_download(tmp, plain, size)
            if not complete:
                raise _RetryableError(f"bzip2 stream ends early after {size} bytes")
            problem = check_fits_image(plain)
            if problem:
                # The bytes arrived whole and bzip2 is happy, so asking again will not help.
                raise CorruptFrameError(fid, band, url, problem)
            os.replace(tmp, cached)
            self._write_sidecar(cached, digest)
            os.replace(plain, target)
        finally:
            unlink_quietly(tmp)
            unlink_quietly(plain)
        log.info("%s: downloaded %s (%d bytes)", describe_frame(fid, band), url, size)
        with self._lock:
            self._owned[target] = self._owned.get(target, 0) + 1
        return target

    def _decode_download(self, tmp: Path, plain: Path, size: int) -> bool:
        """Decompress a whole downloaded file into ``plain``; whether its bzip2 is complete."""
        try:
            with open(plain, "wb") as out:
                decompress_file(tmp, out, self.decoder)
        except EOFError:
            return False
        except OSError as exc:
            raise _RetryableError(f"bad bzip2 data in {size} bytes: {exc}") from exc
        return True

    def _stream(self, fid, band, url, raw, out) -> tuple[str, int, int | None, bool]:
        """Download ``url`` into ``raw`` (and bunzip2 it into ``out`` as it comes, unless None)."""
        digest = hashlib.sha256()
        size = 0
        bunzip = Bunzip(out) if out is not None else None
        try:
            # identity: the length check and the checksum are about the file's own bytes.
            with self.session.get(
                url, stream=True, timeout=self.timeout_s, headers={"Accept-Encoding": "identity"}
            ) as resp:
                if resp.status_code == 404:
                    raise FrameNotFoundError(fid, band, url, "not found (HTTP 404)")
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise _RetryableError(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise FrameDownloadError(fid, band, url, f"HTTP {resp.status_code}")
                length = resp.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                for chunk in resp.iter_content(chunk_size=CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    raw.write(chunk)
                    if bunzip is None:
                        continue
                    try:
                        bunzip.feed(chunk)
                    except (OSError, EOFError) as exc:  # the bytes are not (good) bzip2
                        raise _RetryableError(f"bad bzip2 data near byte {size}: {exc}") from exc
        except requests.RequestException as exc:  # connection, timeout, body cut short
            raise _RetryableError(f"{type(exc).__name__}: {exc}") from exc
        return digest.hexdigest(), size, expected, bunzip is None or bunzip.complete
