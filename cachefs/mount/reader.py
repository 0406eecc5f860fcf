"""One open file of the mount: hits in the caller's thread, misses on the loop.

The FUSE face asks :meth:`OpenFile.cached` first, in its own thread: a range
whose chunks are in RAM, staged or on disk comes back as a memoryview (no
copy inside one chunk), which the binding copies once into the kernel's
reply. Only a miss becomes :meth:`OpenFile.fetch`, a coroutine for the
cache's event loop, so a miss never holds up the hits of other reads; the
chunks it brings back are assembled in the caller's thread again, which is
the only thread that touches an open file's state.

Unlike :class:`~cachefs.file.CachedFile` this has no position: the kernel
names the offset of every read, and reads of one open file may run at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachefs.chunks import ChunkKey, FileVersion, span_keys
from cachefs.file import ReadaheadWindow
from cachefs.router import ChunkRouter

__all__ = ["Miss", "OpenFile"]

# Chunks kept in hand per open file whether or not a tier admitted them (a
# full tier under the epoch policy): a kernel read is at most 1 MiB, so the
# chunk a sequential reader is in is read many times.
_HELD_CHUNKS = 4


@dataclass(frozen=True, slots=True)
class Miss:
    """A read whose chunks are not all cached: what to fetch, what is in hand."""

    start: int
    stop: int
    keys: list[ChunkKey]
    known: dict[ChunkKey, memoryview]


class OpenFile:
    """The state of one FUSE open of a file.

    Parameters
    ----------
    version
        The version this open reads (all its reads, whatever the origin
        does meanwhile).
    router
        The tiers chunks come from.
    chunk_size
        The cache's chunk size.
    readahead
        Largest readahead window (``0``: none); the kernel's own readahead
        asks for at most ``read_ahead_kb`` ahead, far less than a chunk
        fetch from a distant origin wants in flight.
    """

    def __init__(
        self,
        version: FileVersion,
        router: ChunkRouter,
        chunk_size: int,
        readahead: int,
    ) -> None:
        self.version = version
        self.size = version.size
        self.router = router
        self.chunk_size = chunk_size
        self._held: dict[int, memoryview] = {}
        self._window = (
            ReadaheadWindow(chunk_size, readahead)
            if readahead and router.staging is not None
            else None
        )
        self._frontier = -1

    def clip(self, offset: int, length: int) -> tuple[int, int]:
        """Return ``[start, stop)`` of a read of ``length`` at ``offset``."""
        start = min(max(offset, 0), self.size)
        return start, min(start + max(length, 0), self.size)

    def cached(self, offset: int, length: int) -> memoryview | None:
        """Return the bytes of a read if every chunk is cached, else ``None``.

        No origin I/O and no event loop: RAM, staging and disk only.
        """
        start, stop = self.clip(offset, length)
        if stop <= start:
            return memoryview(b"")
        self._note(start, stop)
        keys = span_keys(self.version, self.chunk_size, start, stop)
        views = []
        for key in keys:
            view = self._get(key, max(start, key.start), min(stop, key.stop))
            if view is None:
                return None
            views.append(view)
        return self._assemble(keys, views, start, stop)

    def miss(self, offset: int, length: int) -> Miss:
        """Return what a read that :meth:`cached` could not serve must fetch."""
        start, stop = self.clip(offset, length)
        keys = span_keys(self.version, self.chunk_size, start, stop)
        known = {k: v for k in keys if (v := self._held.get(k.index)) is not None}
        return Miss(start, stop, keys, known)

    async def fetch(self, miss: Miss) -> list[memoryview]:
        """Return the chunks of ``miss``, fetching the missing ones (on the loop)."""
        return await self.router.get_chunks(miss.keys, miss.known)

    def deliver(self, miss: Miss, views: list[memoryview]) -> memoryview:
        """Return the bytes of ``miss`` from its fetched chunks (caller's thread)."""
        for key, view in zip(miss.keys, views, strict=True):
            self._hold(key.index, view)
        return self._assemble(miss.keys, views, miss.start, miss.stop)

    def close(self) -> None:
        """Let go of the chunks in hand."""
        self._held.clear()

    # -- helpers -------------------------------------------------------------

    def _get(self, key: ChunkKey, start: int, stop: int) -> memoryview | None:
        """Return chunk ``key``'s view, verified over file bytes ``[start, stop)``.

        A chunk mapped from disk is checked per block as it is read
        (:meth:`ChunkRouter.get_span`), so a 4 KiB first touch reads and
        checks one block, not the whole chunk; it is kept in hand only once
        it is verified whole.
        """
        view = self._held.get(key.index)
        if view is not None:
            return view
        found = self.router.get_span(key, start - key.start, stop - key.start)
        if found is None:
            return None
        view, whole = found
        if whole:
            self._hold(key.index, view)
        return view

    def _hold(self, index: int, view: memoryview) -> None:
        held = self._held
        held[index] = view
        if len(held) > _HELD_CHUNKS:
            del held[max(held, key=lambda i: abs(i - index))]

    @staticmethod
    def _assemble(
        keys: list[ChunkKey], views: list[memoryview], start: int, stop: int
    ) -> memoryview:
        if len(keys) == 1:  # inside one chunk: a slice, no copy
            key = keys[0]
            return views[0][start - key.start : stop - key.start]
        out = bytearray(stop - start)
        pos = 0
        for key, view in zip(keys, views, strict=True):
            lo = max(start, key.start) - key.start
            hi = min(stop, key.stop) - key.start
            out[pos : pos + hi - lo] = view[lo:hi]
            pos += hi - lo
        return memoryview(out)

    def _note(self, start: int, stop: int) -> None:
        """Feed the readahead window; schedule chunks past a sequential read."""
        window = self._window
        if window is None:
            return
        if start != window.expected and not window.size:
            window.expected = stop  # random access: no readahead
            return
        ahead = window.advance(start, stop)
        cs = self.chunk_size
        if not ahead:
            self._frontier = (stop - 1) // cs
            return
        last = min(stop + ahead, self.size)
        if last <= stop:
            return
        last_index = (last - 1) // cs
        if last_index <= self._frontier:
            return
        first_index = max(stop // cs, self._frontier + 1)
        self._frontier = last_index
        holds = self.router.holds
        keys = [
            key
            for key in span_keys(
                self.version,
                cs,
                first_index * cs,
                min((last_index + 1) * cs, self.size),
            )
            if key.index not in self._held and not holds(key, probe_disk=True)
        ]
        if keys:
            self.router.readahead_soon(keys)
