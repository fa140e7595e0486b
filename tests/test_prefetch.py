"""cutouts.prefetch: whole frames fetched ahead, handed out once, the rest given back."""

from __future__ import annotations

import threading
import time

import pytest

from ssl_photoz.cutouts.prefetch import Prefetcher
from ssl_photoz.surveys.sdss.conventions import FieldId
from ssl_photoz.surveys.sdss.frame_errors import FrameNotFoundError


class CountingSource:
    """Whole frames by name; field 99 does not exist; counts fetches and releases."""

    supports_windows = False

    def __init__(self):
        self.fetched: list[str] = []
        self.released: list[str] = []
        self.lock = threading.Lock()

    def fetch(self, fid, band, window=None):
        with self.lock:
            self.fetched.append(f"{fid}{band}")
        if fid == 99:
            raise FrameNotFoundError(FieldId(1, 1, fid), band, "/x", "no such frame")
        return f"{fid}{band}"

    def release(self, path):
        with self.lock:
            self.released.append(path)


def test_prefetched_frames_are_handed_out_and_the_unasked_given_back():
    source = CountingSource()
    frames = Prefetcher(source, workers=2, lookahead=3)
    frames.expect([(1, "u"), (2, "u"), (99, "u"), (3, "u"), (4, "u")])
    assert frames.fetch(1, "u") == "1u"
    with pytest.raises(FrameNotFoundError):
        frames.fetch(99, "u")
    assert frames.fetch(2, "u") == "2u"
    frames.expect([(1, "u"), (99, "u"), (5, "u")])  # asked for already: not fetched again
    deadline = time.monotonic() + 10
    while not {"3u", "4u"} <= set(source.fetched) and time.monotonic() < deadline:
        time.sleep(0.01)  # the two frames ahead are in flight; let them land
    frames.close()
    assert {"3u", "4u"} <= set(source.released)
    assert len(source.fetched) == len(set(source.fetched))  # nothing fetched twice
    assert {"1u", "2u", "99u"} <= set(source.fetched) <= {"1u", "2u", "3u", "4u", "5u", "99u"}
    # Fetched ahead and never asked for: given back (those not yet started were cancelled).
    assert sorted(source.released) == sorted(set(source.fetched) - {"1u", "2u", "99u"})


def test_a_frame_not_yet_started_is_fetched_directly_and_not_again():
    source = CountingSource()
    frames = Prefetcher(source, workers=1, lookahead=1)
    frames.expect([(1, "g"), (2, "g"), (3, "g")])
    assert frames.fetch(3, "g") == "3g"  # still queued: fetched now, dropped from the queue
    assert frames.fetch(1, "g") == "1g"
    assert frames.fetch(2, "g") == "2g"
    frames.close()
    assert sorted(source.fetched) == ["1g", "2g", "3g"] and source.released == []


def test_window_sources_and_zero_workers_fetch_on_demand():
    source = CountingSource()
    source.supports_windows = True
    frames = Prefetcher(source, workers=4)
    frames.expect([(1, "r")])
    assert source.fetched == []
    assert frames.fetch(1, "r", window=(0, 1, 0, 1)) == "1r"
    assert frames.supports_windows is True  # the wrapped source's attributes show through
    frames.close()
    serial = Prefetcher(CountingSource(), workers=0)
    serial.expect([(1, "r")])
    assert serial.source.fetched == []
