"""Frame sources: where the cut-out stage gets SDSS corrected frames as local, uncompressed FITS.

MontagePy reads only plain FITS files, so every source hands back a path to an uncompressed file in
a per-job ``work_dir``. Three sources sit behind one interface, chosen by ``cutouts.frame_source``:

- ``mock``: frames (or windows of them) rendered from the simulated survey
(``ssl_photoz.surveys.sdss.sky``);
- ``sas``: frames downloaded from the SDSS Science Archive Server into a checksummed cache;
- ``dir``: frames already on disk (``frame-*.fits.bz2`` or ``frame-*.fits``, SAS naming).

A frame is named by a ``FieldId(run, camcol, field)`` (``ssl_photoz.surveys.sdss.sky.footprint``)
and a band.
This module reads only ``.run``, ``.camcol`` and ``.field`` of it, so that it imports nothing from
``ssl_photoz.surveys.sdss.sky`` outside the mock source.

Files a source writes into ``work_dir`` are reference-counted: fetching the same frame twice gives
the same path, and the file goes when it has been released as many times as it was fetched (or
when the source is closed). A source never deletes files it did not write (its cache, a user's
folder).

Two kinds of failure, which the cut-out stage treats differently: ``FrameNotFoundError`` says the
frame does not exist at the source (no such file in ``dir``, HTTP 404 from the SAS, a field
outside the mock sky), so the frame is absent and the cut-out's coverage decides; every other
``FrameError`` (a corrupt or truncated file, HTTP 5xx after the retries, a time-out) says a frame
that exists could not be read, and fails the job naming the frame.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from astropy.io import fits

if TYPE_CHECKING:
    from ssl_photoz.surveys.sdss.sky.footprint import FieldId

log = logging.getLogger(__name__)

Window = tuple[int, int, int, int]  # (x0, x1, y0, y1): 0-based, half-open column/row bounds

BANDS = ("u", "g", "r", "i", "z")
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

_CHUNK = 1 << 20


# -- errors (frame_errors.py; re-exported here for the sources' users) -----------------------
from ssl_photoz.core.provenance import file_sha256  # noqa: E402
from ssl_photoz.surveys.sdss.frame_errors import (  # noqa: E402
    CorruptFrameError,
    FrameDownloadError,
    FrameError,
    FrameNotFoundError,
    describe_frame,
)

__all__ = [
    "CorruptFrameError",
    "FrameDownloadError",
    "FrameError",
    "FrameNotFoundError",
    "describe_frame",
]


# -- helpers ------------------------------------------------------------------------------------
def frame_name(fid: FieldId, band: str, suffix: str = ".fits.bz2") -> str:
    """SDSS file name of a corrected frame, e.g. ``frame-r-004510-4-0030.fits.bz2``."""
    return f"frame-{band}-{fid.run:06d}-{fid.camcol}-{fid.field:04d}{suffix}"


def _check_band(fid: FieldId, band: str) -> None:
    if band not in BANDS:
        raise ValueError(f"{describe_frame(fid, band)}: band must be one of {BANDS}")


class _Bunzip:
    """Incremental bzip2 decoder that accepts multi-stream files (as pbzip2 writes them)."""

    def __init__(self, out):
        self.out = out
        self._dec = bz2.BZ2Decompressor()

    def feed(self, data: bytes) -> None:
        while data:
            if self._dec.eof:  # a further stream follows the one just finished
                self._dec = bz2.BZ2Decompressor()
            self.out.write(self._dec.decompress(data))
            data = self._dec.unused_data if self._dec.eof else b""

    @property
    def complete(self) -> bool:
        return self._dec.eof


def _decompress_file(src: Path, out) -> None:
    """bunzip2 ``src`` into the open binary file ``out``; OSError/EOFError when damaged."""
    bunzip = _Bunzip(out)
    with open(src, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            bunzip.feed(chunk)
    if not bunzip.complete:
        raise EOFError("bzip2 stream ends early")


def _check_fits_image(path: Path) -> str | None:
    """None if ``path`` is a FITS file whose primary HDU is a 2-D image, else what is wrong."""
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            hdr = hdul[0].header
            if hdr.get("NAXIS") != 2:
                return f"primary HDU is not a 2-D image (NAXIS={hdr.get('NAXIS')})"
            expected = hdr["NAXIS1"] * hdr["NAXIS2"] * abs(hdr["BITPIX"]) // 8
    except Exception as exc:  # astropy raises OSError, ValueError, KeyError... on damaged files
        return f"not a readable FITS file ({type(exc).__name__}: {exc})"
    # The header's data must fit in the file: a short file would be silently zero-padded.
    if path.stat().st_size < 2880 + expected:
        return f"FITS data shorter than the header says ({path.stat().st_size} bytes)"
    return None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# -- the interface ------------------------------------------------------------------------------
class FrameSource(ABC):
    """Hands out SDSS corrected frames as uncompressed FITS files in ``work_dir``.

    Use as a context manager so that every temporary file goes on exit::

        with MockFrameSource(sky_dir, work_dir) as frames:
            path = frames.fetch(fid, "r", window=(0, 200, 0, 300))
    """

    def __init__(self, work_dir: str | os.PathLike):
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._owned: dict[Path, int] = {}  # files this source wrote -> outstanding fetches
        self._lock = threading.Lock()
        self._frame_locks: dict[str, threading.Lock] = {}

    @property
    def supports_windows(self) -> bool:
        """Whether ``fetch(..., window=...)`` returns just that window (else the whole frame)."""
        return False

    @abstractmethod
    def fetch(self, fid: FieldId, band: str, window: Window | None = None) -> Path:
        """Path of an uncompressed FITS file holding the frame (or the window of it)."""

    def release(self, path: str | os.PathLike) -> None:
        """Give back a path from ``fetch``; the file is deleted once every fetch of it is released.

        Paths this source did not write (a cache entry, a user's ``.fits``) are left alone.
        """
        path = Path(path)
        with self._lock:
            count = self._owned.get(path)
            if count is None:
                return
            if count > 1:
                self._owned[path] = count - 1
                return
            del self._owned[path]
        _unlink_quietly(path)

    def release_all(self) -> None:
        with self._lock:
            paths = list(self._owned)
            self._owned.clear()
        for path in paths:
            _unlink_quietly(path)

    def close(self) -> None:
        self.release_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- for subclasses ---------------------------------------------------------------------
    def _frame_lock(self, key: str) -> threading.Lock:
        """One lock per frame so two threads of one job do not do the same work twice."""
        with self._lock:
            return self._frame_locks.setdefault(key, threading.Lock())

    def _reuse(self, target: Path) -> bool:
        """Count one more fetch of ``target`` if this source already wrote it."""
        with self._lock:
            if target in self._owned and target.exists():
                self._owned[target] += 1
                return True
        return False

    def _publish(self, target: Path, write: Callable[[object], None]) -> Path:
        """Write ``target`` in ``work_dir`` through a temporary file, then count it as fetched."""
        fd, tmp = tempfile.mkstemp(dir=self.work_dir, prefix=f".{target.name}.", suffix=".tmp")
        tmp = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        with self._lock:
            self._owned[target] = self._owned.get(target, 0) + 1
        return target

    def _bunzip_to_work(self, fid: FieldId, band: str, src: Path, target: Path) -> Path:
        def write(out) -> None:
            try:
                _decompress_file(src, out)
            except (OSError, EOFError) as exc:
                raise CorruptFrameError(fid, band, src, f"bad bzip2 data: {exc}") from exc

        self._publish(target, write)
        problem = _check_fits_image(target)
        if problem:
            self.release(target)
            raise CorruptFrameError(fid, band, src, problem)
        return target


# -- mock -----------------------------------------------------------------------------------------
class MockFrameSource(FrameSource):
    """Frames rendered from the simulated survey in ``sky_dir``; windows render only that part.

    A frame is a pure function of its identity, so fetch, release and fetch again give identical
    pixels. The MockSky (and, inside it, the sources of the last field rendered) is kept between
    fetches; cut-out jobs go field by field, so that is the cache that pays.
    """

    def __init__(self, sky_dir: str | os.PathLike, work_dir: str | os.PathLike):
        super().__init__(work_dir)
        self.sky_dir = Path(sky_dir)
        self._sky = None

    @property
    def supports_windows(self) -> bool:
        return True

    @property
    def sky(self):
        if self._sky is None:
            from ssl_photoz.surveys.sdss.sky.survey import MockSky

            self._sky = MockSky(self.sky_dir)
        return self._sky

    def _in_footprint(self, fid: FieldId) -> bool:
        fp = self.sky.footprint
        return (
            fid.run in fp.runs
            and 1 <= fid.camcol <= 6
            and fp.first_field <= fid.field < fp.first_field + fp.n_fields(fid.run, fid.camcol)
        )

    def fetch(self, fid: FieldId, band: str, window: Window | None = None) -> Path:
        _check_band(fid, band)
        if window is None:
            target = self.work_dir / frame_name(fid, band, ".fits")
        else:
            x0, x1, y0, y1 = (int(v) for v in window)
            window = (x0, x1, y0, y1)
            target = self.work_dir / frame_name(fid, band, f".x{x0}-{x1}.y{y0}-{y1}.fits")
        with self._frame_lock(target.name):
            if self._reuse(target):
                return target
            if not self._in_footprint(fid):
                raise FrameNotFoundError(fid, band, self.sky_dir, "not in the simulated footprint")
            try:
                if window is None:
                    write = self.sky.render(fid, band).writeto
                else:
                    # A window serves one cut-out: Montage reads only the image HDU, and making
                    # the calibration and sky tables (or astropy's header cards) costs more than
                    # rendering the pixels.
                    data = self.sky.render_window_fits(fid, band, window)

                    def write(out) -> None:
                        out.write(data)

            except ValueError as exc:  # a window outside the frame
                raise FrameError(fid, band, self.sky_dir, str(exc)) from exc
            return self._publish(target, write)


# -- the Science Archive Server -------------------------------------------------------------------
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
    ):
        super().__init__(work_dir)
        if int(data_release) not in SAS_FRAME_PATHS:
            raise ValueError(
                f"data_release {data_release}: frame paths are known for DR "
                f"{sorted(SAS_FRAME_PATHS)}"
            )
        self.cache_dir = Path(cache_dir)
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
        _check_band(fid, band)
        target = self.work_dir / frame_name(fid, band, ".fits")
        with self._frame_lock(target.name):
            if self._reuse(target):
                return target
            cached = self.cache_path(fid, band)
            if self._cache_is_good(fid, band, cached):
                return self._bunzip_to_work(fid, band, cached, target)
            return self._download(fid, band, cached, target)

    # -- the cache --------------------------------------------------------------------------
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
        _unlink_quietly(cached)
        _unlink_quietly(sidecar)
        return False

    @staticmethod
    def _content_is_good(cached: Path) -> bool:
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            plain = Path(tmp) / "frame.fits"
            try:
                with open(plain, "wb") as out:
                    _decompress_file(cached, out)
            except (OSError, EOFError):
                return False
            return _check_fits_image(plain) is None

    def _write_sidecar(self, cached: Path, digest: str) -> None:
        sidecar = self._sidecar(cached)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{sidecar.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{digest}  {cached.name}\n")  # the format `sha256sum -c` reads
            os.replace(tmp, sidecar)
        except BaseException:
            _unlink_quietly(Path(tmp))
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
        """One attempt: stream into a temporary cache file and, at once, bunzip2 into work_dir."""
        fd, tmp_name = tempfile.mkstemp(
            dir=cached.parent, prefix=f".{cached.name}.", suffix=".partial"
        )
        tmp = Path(tmp_name)
        plain_fd, plain_name = tempfile.mkstemp(
            dir=self.work_dir, prefix=f".{target.name}.", suffix=".tmp"
        )
        plain = Path(plain_name)
        try:
            with os.fdopen(fd, "wb") as raw, os.fdopen(plain_fd, "wb") as out:
                digest, size, expected, complete = self._stream(fid, band, url, raw, out)
            if expected is not None and size != expected:
                raise _RetryableError(f"body has {size} bytes, Content-Length said {expected}")
            if not complete:
                raise _RetryableError(f"bzip2 stream ends early after {size} bytes")
            problem = _check_fits_image(plain)
            if problem:
                # The bytes arrived whole and bzip2 is happy, so asking again will not help.
                raise CorruptFrameError(fid, band, url, problem)
            os.replace(tmp, cached)
            self._write_sidecar(cached, digest)
            os.replace(plain, target)
        finally:
            _unlink_quietly(tmp)
            _unlink_quietly(plain)
        log.info("%s: downloaded %s (%d bytes)", describe_frame(fid, band), url, size)
        with self._lock:
            self._owned[target] = self._owned.get(target, 0) + 1
        return target

    def _stream(self, fid, band, url, raw, out) -> tuple[str, int, int | None, bool]:
        digest = hashlib.sha256()
        size = 0
        bunzip = _Bunzip(out)
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
                for chunk in resp.iter_content(chunk_size=_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    raw.write(chunk)
                    try:
                        bunzip.feed(chunk)
                    except (OSError, EOFError) as exc:  # the bytes are not (good) bzip2
                        raise _RetryableError(f"bad bzip2 data near byte {size}: {exc}") from exc
        except requests.RequestException as exc:  # connection, timeout, body cut short
            raise _RetryableError(f"{type(exc).__name__}: {exc}") from exc
        return digest.hexdigest(), size, expected, bunzip.complete


# -- frames already on disk -----------------------------------------------------------------------
class DirFrameSource(FrameSource):
    """Frames in ``folder`` under their SAS names, flat or in ``<run>/<camcol>/`` subfolders.

    ``.fits.bz2`` frames are decompressed into ``work_dir``; a plain ``.fits`` frame is handed out
    where it lies (and never deleted).
    """

    def __init__(self, folder: str | os.PathLike, work_dir: str | os.PathLike):
        folder = Path(folder)
        if not folder.is_dir():
            # Else every frame would be "not found", i.e. absent, and every object a reject.
            raise FileNotFoundError(f"{folder}: the frame folder (cutouts.frame_dir) is missing")
        super().__init__(work_dir)
        self.folder = folder

    def candidates(self, fid: FieldId, band: str) -> list[Path]:
        sub = self.folder / str(fid.run) / str(fid.camcol)
        return [
            base / frame_name(fid, band, suffix)
            for base in (self.folder, sub)
            for suffix in (".fits.bz2", ".fits")
        ]

    def fetch(self, fid: FieldId, band: str, window: Window | None = None) -> Path:
        _check_band(fid, band)
        found = next((p for p in self.candidates(fid, band) if p.is_file()), None)
        if found is None:
            looked = ", ".join(str(p) for p in self.candidates(fid, band))
            raise FrameNotFoundError(fid, band, self.folder, f"no file; looked for {looked}")
        if found.suffix == ".fits":
            return found
        target = self.work_dir / frame_name(fid, band, ".fits")
        with self._frame_lock(target.name):
            if self._reuse(target):
                return target
            return self._bunzip_to_work(fid, band, found, target)


# -- from the config ------------------------------------------------------------------------------
FRAME_SOURCES = ("mock", "sas", "dir")


def make_frame_source(
    cutouts_cfg: dict,
    work_dir: str | os.PathLike,
    sky_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> FrameSource:
    """The frame source that ``cutouts_cfg`` names.

    ``cutouts_cfg`` is a cutouts section with the schema's defaults filled in
    (``ssl_photoz.core.config.with_defaults``; the CLI's sections come so). Keys: ``frame_source``
    (mock | sas | dir); for ``sas``: ``cache_dir``, ``sas_url``, ``data_release``, ``rerun``,
    ``timeout_s``, ``retries``, ``backoff_s``; for ``dir``: ``frame_dir``. ``sky_dir`` is the
    simulated survey for ``mock``. Relative paths in the config are taken from ``root``
    (default: the current folder).
    """
    kind = cutouts_cfg["frame_source"]
    base = Path(root) if root is not None else Path.cwd()

    def path_of(key: str) -> Path:
        value = cutouts_cfg[key]
        if not value:
            raise ValueError(f"cutouts.{key} is required when cutouts.frame_source is {kind!r}")
        return base / Path(value)

    if kind == "mock":
        if sky_dir is None:
            raise ValueError("cutouts.frame_source 'mock' needs the simulated survey's sky_dir")
        return MockFrameSource(sky_dir, work_dir)
    if kind == "sas":
        return SasFrameSource(
            path_of("cache_dir"),
            work_dir,
            base_url=cutouts_cfg["sas_url"],
            data_release=int(cutouts_cfg["data_release"]),
            rerun=cutouts_cfg["rerun"],
            timeout_s=cutouts_cfg["timeout_s"],
            retries=cutouts_cfg["retries"],
            backoff_s=cutouts_cfg["backoff_s"],
        )
    if kind == "dir":
        return DirFrameSource(path_of("frame_dir"), work_dir)
    raise ValueError(f"cutouts.frame_source is {kind!r}; expected one of {FRAME_SOURCES}")
