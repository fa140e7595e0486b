"""Errors of the frame sources, apart from the sources themselves.

The cut-out jobs tell an absent frame (``FrameNotFoundError``: no file, HTTP 404) from an
unreadable one (any other ``FrameError``). They import only this module, so the shard plan's code
digest does not change when a frame source does.
"""

from __future__ import annotations

import os

from ssl_photoz.surveys.sdss.conventions import FieldId


def describe_frame(fid: FieldId, band: str) -> str:
    return f"frame run={fid.run} camcol={fid.camcol} field={fid.field} band={band}"


class FrameError(RuntimeError):
    """A frame could not be provided; names the frame and where it was looked for."""

    def __init__(self, fid: FieldId, band: str, where: str | os.PathLike, reason: str):
        self.fid = fid
        self.band = band
        self.where = str(where)
        self.reason = reason
        super().__init__(f"{describe_frame(fid, band)} ({self.where}): {reason}")


class FrameNotFoundError(FrameError, LookupError):
    """The frame does not exist at the source (HTTP 404, no such file, outside the mock sky)."""

    def __init__(self, fid: FieldId, band: str, where: str | os.PathLike, reason: str = ""):
        super().__init__(fid, band, where, reason or "not found")


class CorruptFrameError(FrameError):
    """The frame's bytes are damaged: short, a broken bzip2 stream, or not a 2-D FITS image."""


class FrameDownloadError(FrameError):
    """Downloading failed for good: retries used up, or an HTTP error that retrying cannot fix."""
