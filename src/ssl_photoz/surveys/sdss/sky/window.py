"""Windows of a frame: 0-based, half-open (x0, x1, y0, y1) column/row bounds.

Every piece of the renderer (the sources' stamps, the noise tiles, the header's reference pixel)
depends only on the frame, never on the window, so a window's pixels equal that slice of the full
frame exactly and cut-out jobs can render only the patches they need.
"""

from __future__ import annotations

from ssl_photoz.surveys.sdss.sky.footprint import FRAME_COLUMNS, FRAME_ROWS

Window = tuple[int, int, int, int]
FULL_FRAME: Window = (0, FRAME_COLUMNS, 0, FRAME_ROWS)


def check_window(window) -> Window:
    """The window as ints (None: the whole frame); ValueError if it is not inside the frame."""
    if window is None:
        return FULL_FRAME
    x0, x1, y0, y1 = (int(v) for v in window)
    if not (0 <= x0 < x1 <= FRAME_COLUMNS and 0 <= y0 < y1 <= FRAME_ROWS):
        raise ValueError(
            f"window {window} must satisfy 0 <= x0 < x1 <= {FRAME_COLUMNS} and "
            f"0 <= y0 < y1 <= {FRAME_ROWS}"
        )
    return x0, x1, y0, y1
