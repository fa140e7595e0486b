"""Frame files for Montage: reading a frame's header and rows fast, writing the small FITS pieces
Montage projects, and the lean uncompressed copy of a frame Montage can read.

Montage's WCS parser scans a header once for each of hundreds of keywords, so every file handed to
it carries only the WCS cards; astropy's header machinery is skipped too, since a frame's header
is read once per job by ``FrameFile`` and its rows are read per piece.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

__all__ = ["FrameFile", "frame_file", "prepare_frame", "read_image", "wcs_of", "write_piece"]

# Header keywords kept by prepare_frame: the WCS, the units and the band.
_KEEP_EXACT = {"BUNIT", "FILTER", "EQUINOX", "RADESYS", "LONPOLE", "LATPOLE", "MJD-OBS"}
_KEEP_PREFIXES = (
    "CTYPE",
    "CUNIT",
    "CRPIX",
    "CRVAL",
    "CDELT",
    "CROTA",
    "CD1_",
    "CD2_",
    "PC1_",
    "PC2_",
    "PV1_",
    "PV2_",
)


def prepare_frame(src: Path, dst_dir: Path) -> Path:
    """Uncompressed copy of a frame's image (HDU 0) with a header cut down to the WCS and units.

    Call once per frame (a field's frames serve all its objects); Montage cannot read .bz2.
    """
    src = Path(src)
    name = src.name
    for suffix in (".bz2", ".gz", ".fz"):
        name = name.removesuffix(suffix)
    dst = Path(dst_dir) / name
    with fits.open(src, memmap=False) as hdul:
        header = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float32)
    lean = fits.Header()
    for key in header:
        if key in _KEEP_EXACT or key.startswith(_KEEP_PREFIXES):
            lean[key] = header[key]
    if "RADECSYS" in header and "RADESYS" not in lean:
        lean["RADESYS"] = header["RADECSYS"]  # deprecated spelling in SDSS frames
    tmp = dst.with_name(dst.name + ".part")
    fits.PrimaryHDU(data=data, header=lean).writeto(tmp, overwrite=True)
    tmp.replace(dst)  # never leave a half-written frame under the final name
    return dst


_BLOCK = 2880
_CARD = 80
_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class FrameFile:
    """What the cut-out needs of a frame file, read without astropy's header machinery.

    ``wcs_cards``: the frame's WCS cards (verbatim 80-character cards, CRPIX excepted), ``crpix``
    its reference pixel, ``shape`` (nx, ny), ``offset``/``dtype`` where and how the pixels lie.
    """

    __slots__ = ("path", "wcs_cards", "crpix", "shape", "offset", "dtype", "scaled")

    def __init__(self, path: str):
        self.path = path
        cards: dict[str, str] = {}
        wcs_cards: list[str] = []
        n_blocks = 0
        with open(path, "rb") as fh:
            while True:
                block = fh.read(_BLOCK)
                if len(block) < _BLOCK:
                    raise ValueError("not a FITS file: its header ends early")
                n_blocks += 1
                text = block.decode("ascii", errors="replace")
                done = False
                for k in range(0, _BLOCK, _CARD):
                    card = text[k : k + _CARD]
                    key = card[:8].rstrip()
                    if key == "END":
                        done = True
                        break
                    if card[8:10] != "= ":
                        continue
                    cards.setdefault(key, card)
                    if key == "RADECSYS":  # deprecated spelling in SDSS frames
                        key, card = "RADESYS", "RADESYS " + card[8:]
                    if key in _WCS_EXACT or key.startswith(_KEEP_PREFIXES):
                        if not key.startswith("CRPIX"):
                            wcs_cards.append(card)
                if done:
                    break
                if n_blocks == 1 and not text.startswith("SIMPLE  ="):
                    raise ValueError("not a FITS file (no SIMPLE card)")
        if n_blocks > 1000:
            raise ValueError("FITS header has no END card")

        def value(key: str, default=None) -> str | None:
            card = cards.get(key)
            if card is None:
                return default
            return card[10:].split("/", 1)[0].strip()

        if value("NAXIS") != "2":
            raise ValueError(f"primary HDU is not a 2-D image (NAXIS={value('NAXIS')})")
        bitpix = int(value("BITPIX"))
        self.shape = (int(value("NAXIS1")), int(value("NAXIS2")))
        self.crpix = (float(value("CRPIX1", "0")), float(value("CRPIX2", "0")))
        self.wcs_cards = tuple(sorted(wcs_cards))
        self.offset = n_blocks * _BLOCK
        self.dtype = np.dtype(_DTYPES[bitpix])
        self.scaled = any(k in cards for k in ("BSCALE", "BZERO", "BLANK"))
        expected = self.offset + self.shape[0] * self.shape[1] * self.dtype.itemsize
        size = Path(path).stat().st_size
        if size < expected:
            raise ValueError(f"FITS data shorter than the header says ({size} < {expected} bytes)")

    def rows(self, y0: int, y1: int, dtype=np.float32) -> np.ndarray:
        """Rows y0..y1 (0-based, inclusive), every column, as ``dtype``."""
        nx = self.shape[0]
        if self.scaled:  # rare (not SDSS): let astropy apply BSCALE/BZERO/BLANK
            data = fits.getdata(self.path, 0, memmap=False)
            return np.asarray(data[y0 : y1 + 1], dtype=dtype)
        count = (y1 - y0 + 1) * nx
        offset = self.offset + y0 * nx * self.dtype.itemsize
        flat = np.fromfile(self.path, dtype=self.dtype, count=count, offset=offset)
        if flat.size != count:
            raise ValueError("FITS data shorter than the header says")
        return flat.reshape(y1 - y0 + 1, nx).astype(dtype)


_WCS_EXACT = {"EQUINOX", "RADESYS", "LONPOLE", "LATPOLE", "MJD-OBS"}


@functools.lru_cache(maxsize=64)
def frame_file(path: str, mtime_ns: int, file_size: int) -> FrameFile:
    """The ``FrameFile`` of ``path``, read once per version of the file (mtime and size)."""
    return FrameFile(path)


@functools.lru_cache(maxsize=256)
def wcs_of(wcs_cards: tuple[str, ...], crpix: tuple[float, float]) -> tuple[WCS, float]:
    """astropy WCS and pixel area (deg^2) of a set of WCS cards; windows of one frame share it."""
    header = fits.Header.fromstring("".join(wcs_cards))
    header["CRPIX1"], header["CRPIX2"] = crpix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial:
        raise ValueError("no celestial WCS in HDU 0")
    return wcs, abs(float(np.linalg.det(wcs.pixel_scale_matrix)))


def write_piece(path: Path, info: FrameFile, box: tuple[int, int, int, int]) -> None:
    """The frame pixels under ``box`` as a FITS file with only the WCS in its header: Montage's
    header parser searches the header for each of hundreds of keywords, so short is fast."""
    x0, x1, y0, y1 = box
    data = info.rows(y0, y1)[:, x0 : x1 + 1]
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                  -32",
        "NAXIS   =                    2",
        f"NAXIS1  = {data.shape[1]:>20}",
        f"NAXIS2  = {data.shape[0]:>20}",
        *info.wcs_cards,
        f"CRPIX1  = {info.crpix[0] - x0!r:>20}",
        f"CRPIX2  = {info.crpix[1] - y0!r:>20}",
        "END",
    ]
    text = "".join(card.ljust(_CARD)[:_CARD] for card in cards)
    text += " " * (-len(text) % _BLOCK)
    body = data.astype(">f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(text.encode("ascii"))
        fh.write(body)
        fh.write(b"\0" * (-len(body) % _BLOCK))


def read_image(path: Path) -> np.ndarray:
    """A 2-D image Montage wrote (plain, unscaled floats), as float64."""
    info = FrameFile(str(path))
    return info.rows(0, info.shape[1] - 1, np.float64)
