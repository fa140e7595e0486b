"""Whole frames fetched ahead of the cut-out that needs them, by a small pool of threads.

A cut-out job asks for frames one at a time and, from a source that downloads them (``sas``),
waits for each download and its decompression before Montage runs. ``Prefetcher`` wraps the
job's frame source: told which whole frames the next objects need, in the order they will be
asked for (``expect``), it keeps up to ``lookahead`` of them in flight on ``workers`` threads, and
``fetch`` hands back the prefetched file (or raises what its fetch raised). Everything else is the
wrapped source's. The files are the source's own, reference-counted as usual: each prefetch is one
fetch, given back by the job's ``release`` or, never asked for, by ``close``.

Sources that cut windows per object (the ``mock`` source) get no prefetching.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor


class Prefetcher:
    """A frame source whose whole-frame fetches were started ahead on ``workers`` threads."""

    def __init__(self, source, workers: int, lookahead: int | None = None):
        self.source = source
        self.workers = int(workers)
        self.lookahead = int(lookahead) if lookahead is not None else 2 * self.workers
        self._queue: list[tuple] = []  # (FieldId, band) expected, not yet started
        self._pending: OrderedDict[tuple, Future] = OrderedDict()
        self._asked: set[tuple] = set()  # asked for already: never fetched ahead again
        self._pool = None
        if self.workers > 0 and not getattr(source, "supports_windows", False):
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="frame-fetch")

    def __getattr__(self, name):  # supports_windows, sky, release...: the source's
        return getattr(self.source, name)

    def expect(self, keys) -> None:
        """The whole frames, as (FieldId, band), that will be asked for next, in order."""
        if self._pool is None:
            return
        seen = self._asked | set(self._pending) | set(self._queue)
        for key in keys:
            if key not in seen:
                seen.add(key)
                self._queue.append(key)
        self._top_up()

    def fetch(self, fid, band: str, window=None):
        future = None
        if window is None and self._pool is not None:
            key = (fid, band)
            self._asked.add(key)  # an absent frame is asked for once, not again ahead
            future = self._pending.pop(key, None)
            if future is None and key in self._queue:
                self._queue.remove(key)
            self._top_up()
        if future is None:
            return self.source.fetch(fid, band, window=window)
        return future.result()

    def _top_up(self) -> None:
        while self._pool is not None and self._queue and len(self._pending) < self.lookahead:
            fid, band = self._queue.pop(0)
            self._pending[(fid, band)] = self._pool.submit(self.source.fetch, fid, band)

    def close(self) -> None:
        """Stop prefetching; give back the frames fetched ahead and never asked for."""
        if self._pool is None:
            return
        self._queue.clear()
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        for future in self._pending.values():
            if not future.cancelled() and future.exception() is None:
                self.source.release(future.result())
        self._pending.clear()
        self._pool = None
