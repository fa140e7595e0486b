"""Frame sources: where the cut-out stage gets SDSS corrected frames as local, uncompressed FITS.

MontagePy reads only plain FITS files, so every source hands back a path to an uncompressed file in
a per-job ``work_dir``. Three sources sit behind one interface, chosen by ``cutouts.frame_source``:

- ``mock``: frames (or windows of them) rendered from the simulated survey
(``ssl_photoz.surveys.sdss.sky``);
- ``sas``: frames downloaded from the SDSS Science Archive Server into a checksummed cache
  (``ssl_photoz.surveys.sdss.sas_frames``);
- ``dir``: frames already on disk (``frame-*.fits.bz2`` or ``frame-*.fits``, SAS naming).

A frame is named by a ``FieldId(run, camcol, field)`` (``ssl_photoz.surveys.sdss.conventions``)
and a band; this module imports nothing from ``ssl_photoz.surveys.sdss.sky`` outside the mock
source.

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

import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from astropy.io import fits

from ssl_photoz.surveys.sdss import SDSS
from ssl_photoz.surveys.sdss.bzip2 import decompress_file
from ssl_photoz.surveys.sdss.conventions import FieldId
from ssl_photoz.surveys.sdss.frame_errors import (  # re-exported for the sources' users
    CorruptFrameError,
    FrameDownloadError,
    FrameError,
    FrameNotFoundError,
    describe_frame,
)

__all__ = [
    "FRAME_SOURCES",
    "CorruptFrameError",
    "DirFrameSource",
    "FrameDownloadError",
    "FrameError",
    "FrameNotFoundError",
    "FrameSource",
    "MockFrameSource",
    "describe_frame",
    "frame_name",
    "make_frame_source",
]

log = logging.getLogger(__name__)

Window = tuple[int, int, int, int]  # (x0, x1, y0, y1): 0-based, half-open column/row bounds


# -- helpers ------------------------------------------------------------------------------------
def frame_name(fid: FieldId, band: str, suffix: str = ".fits.bz2") -> str:
    """SDSS file name of a corrected frame, e.g. ``frame-r-004510-4-0030.fits.bz2``."""
    return SDSS.frame_name(fid, band, suffix)


def check_band(fid: FieldId, band: str) -> None:
    if band not in SDSS.bands:
        raise ValueError(f"{describe_frame(fid, band)}: band must be one of {SDSS.bands}")


def check_fits_image(path: Path) -> str | None:
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


def unlink_quietly(path: Path) -> None:
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

    decoder: str | None = None  # the bzip2 decoder (BZIP2_DECODERS); None: DEFAULT_DECODER

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
        unlink_quietly(path)

    def release_all(self) -> None:
        with self._lock:
            paths = list(self._owned)
            self._owned.clear()
        for path in paths:
            unlink_quietly(path)

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
            unlink_quietly(tmp)
            raise
        with self._lock:
            self._owned[target] = self._owned.get(target, 0) + 1
        return target

    def _bunzip_to_work(self, fid: FieldId, band: str, src: Path, target: Path) -> Path:
        def write(out) -> None:
            try:
                decompress_file(src, out, self.decoder)
            except (OSError, EOFError) as exc:
                raise CorruptFrameError(fid, band, src, f"bad bzip2 data: {exc}") from exc

        self._publish(target, write)
        problem = check_fits_image(target)
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
        check_band(fid, band)
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
        check_band(fid, band)
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
    ``timeout_s``, ``retries``, ``backoff_s``, ``cache_policy``, ``cache_max_gb``; for ``dir``:
    ``frame_dir``. ``sky_dir`` is the simulated survey for ``mock``. Relative paths in the config
    are taken from ``root`` (default: the current folder).
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
        # Imported here: the other sources need neither requests nor the cache's code.
        from ssl_photoz.surveys.sdss.sas_frames import SasFrameSource

        return SasFrameSource(
            path_of("cache_dir"),
            work_dir,
            base_url=cutouts_cfg["sas_url"],
            data_release=int(cutouts_cfg["data_release"]),
            rerun=cutouts_cfg["rerun"],
            timeout_s=cutouts_cfg["timeout_s"],
            retries=cutouts_cfg["retries"],
            backoff_s=cutouts_cfg["backoff_s"],
            cache_policy=cutouts_cfg["cache_policy"],
            cache_max_gb=cutouts_cfg["cache_max_gb"],
        )
    if kind == "dir":
        return DirFrameSource(path_of("frame_dir"), work_dir)
    raise ValueError(f"cutouts.frame_source is {kind!r}; expected one of {FRAME_SOURCES}")
