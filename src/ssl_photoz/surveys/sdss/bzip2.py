"""bzip2 decompression of SDSS frames.

Two decoders give the same bytes: Python's ``bz2`` (always there; it also decodes a download as
its bytes arrive) and ``indexed_bzip2`` (a C++ decoder from PyPI, used on one thread), the
default: it took less CPU on a real 12.4 MB frame on both CPUs measured (Intel Xeon with AMX:
0.47 s against 0.82; AMD EPYC: 0.36-0.39 s against 0.43-0.45, the fastest of 9 alternated runs;
docs/benchmarks.md). bz2 stands in where indexed_bzip2 is missing.
"""

from __future__ import annotations

import bz2
from pathlib import Path

CHUNK = 1 << 20  # bytes read or downloaded at a time
BZIP2_DECODERS = ("bz2", "indexed_bzip2")
DEFAULT_DECODER = "indexed_bzip2"


class Bunzip:
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


def decoder_available(decoder: str) -> bool:
    if decoder == "bz2":
        return True
    if decoder == "indexed_bzip2":
        try:
            import indexed_bzip2  # noqa: F401
        except ImportError:
            return False
        return True
    raise ValueError(f"bzip2 decoder {decoder!r}; expected one of {BZIP2_DECODERS}")


def resolve_decoder(decoder: str | None) -> str:
    """The decoder that will run: ``decoder`` (None: ``DEFAULT_DECODER``), else bz2 if missing."""
    decoder = decoder or DEFAULT_DECODER
    return decoder if decoder_available(decoder) else "bz2"


def decompress_file(src: Path, out, decoder: str | None = None) -> None:
    """bunzip2 ``src`` into the open binary file ``out``; OSError/EOFError when damaged.

    ``decoder`` is one of ``BZIP2_DECODERS`` (``resolve_decoder`` says which one runs).
    """
    if resolve_decoder(decoder) == "indexed_bzip2":
        _indexed_bunzip(src, out)
        return
    bunzip = Bunzip(out)
    with open(src, "rb") as fh:
        while chunk := fh.read(CHUNK):
            bunzip.feed(chunk)
    if not bunzip.complete:
        raise EOFError("bzip2 stream ends early")


def _indexed_bunzip(src: Path, out) -> None:
    import indexed_bzip2

    try:
        # One thread: the job's cores are counted, and closing it (the with) stops its threads.
        with indexed_bzip2.open(str(src), parallelization=1) as fh:
            while chunk := fh.read(CHUNK):
                out.write(chunk)
    except ValueError as exc:  # not bzip2 at all
        raise OSError(f"not bzip2 data: {exc}") from exc
    except RuntimeError as exc:  # a truncated stream or a CRC mismatch
        raise EOFError(f"bzip2 stream damaged or ends early ({exc})") from exc
