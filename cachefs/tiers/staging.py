"""The staging area: chunks fetched ahead of their reader, under a budget.

Chunks fetched ahead of a reader are *staged*: held in memory under a byte
budget (``prefetch_limit``) until read, so prefetching never evicts what is
about to be consumed and a long prefetch list streams through instead of
flooding RAM. A staged chunk moves to the RAM tier when it is read. Staged
chunks nobody reads are dropped when their budget is needed and they have
waited longer than ``hold`` seconds; they count as wasted.

A prefetch *reserves* its bytes before it fetches (:meth:`Staging.reserve`,
:meth:`Staging.try_reserve`), *settles* the reservation when the bytes arrive
(:meth:`Staging.put`, or :meth:`Staging.unreserve` when they will not be
staged), and a reader that goes away *refuses* what is still in flight
(:meth:`Staging.refuse`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from cachefs.chunks import ChunkKey

__all__ = ["PrefetchStats", "Staging"]


@dataclass(slots=True)
class PrefetchStats:
    """Counters of prefetching.

    Attributes
    ----------
    issued
        Chunks requested ahead of a reader.
    used
        Prefetched chunks that a reader then read.
    wasted
        Prefetched chunks dropped without being read.
    failed
        Prefetch fetches that failed (logged, never raised to a reader).
    staged_bytes, peak_staged_bytes
        Bytes held for readers now, and the most ever held (reservations of
        fetches in flight included).
    """

    issued: int = 0
    used: int = 0
    wasted: int = 0
    failed: int = 0
    staged_bytes: int = 0
    peak_staged_bytes: int = 0

    def as_dict(self) -> dict[str, float]:
        """Return the counters as a plain dict."""
        return asdict(self)


class Staging:
    """Chunks fetched ahead and not yet read, under a byte budget.

    Parameters
    ----------
    limit
        Byte budget for staged chunks plus reservations of fetches in flight.
    hold
        Seconds a staged chunk is kept for its reader before its budget may
        be reclaimed.
    """

    def __init__(self, limit: int, hold: float = 30.0) -> None:
        self.limit = limit
        self.hold = hold
        self.stats = PrefetchStats()
        self._entries: OrderedDict[ChunkKey, tuple[memoryview, float]] = OrderedDict()
        self._reserved = 0
        self._abandoned: set[ChunkKey] = set()
        self._lock = threading.Lock()
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- any thread ----------------------------------------------------------

    def take(self, key: ChunkKey) -> memoryview | None:
        """Remove and return a staged chunk that a reader needs now."""
        if not self._entries:
            return None
        with self._lock:
            item = self._entries.pop(key, None)
            if item is None:
                return None
            self.stats.staged_bytes -= item[0].nbytes
            self.stats.used += 1
        self._signal()
        return item[0]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def abandon(self, keys: Iterable[ChunkKey]) -> None:
        """Drop staged ``keys`` now; they count as wasted."""
        dropped = False
        with self._lock:
            for key in keys:
                item = self._entries.pop(key, None)
                if item is not None:
                    self.stats.staged_bytes -= item[0].nbytes
                    self.stats.wasted += 1
                    dropped = True
        if dropped:
            self._signal()

    def forget(self, key: ChunkKey) -> None:
        """Drop a refusal for ``key`` whose fetch ended without staging."""
        self._abandoned.discard(key)

    def refuse(self, keys: Iterable[ChunkKey]) -> None:
        """Do not stage ``keys`` (prefetches in flight) when they arrive."""
        with self._lock:
            self._abandoned.update(keys)

    def clear(self) -> None:
        """Drop everything staged (counted as wasted)."""
        self.abandon(list(self._entries))

    # -- event loop ----------------------------------------------------------

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if the budget allows now; never waits."""
        with self._lock:
            if self._fits(nbytes):
                self._book(nbytes)
                return True
            self._reclaim_locked(time.monotonic())
            if self._fits(nbytes):
                self._book(nbytes)
                return True
        return False

    async def reserve(self, nbytes: int) -> None:
        """Wait until ``nbytes`` fit the budget, then reserve them."""
        while not self.try_reserve(nbytes):
            event = self._event()
            event.clear()
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with the event.
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({waiter}, timeout=min(self.hold, 0.25))
            finally:
                waiter.cancel()

    def unreserve(self, nbytes: int) -> None:
        """Give back a reservation that will not be staged."""
        with self._lock:
            self._reserved -= nbytes
        self._signal()

    def put(self, key: ChunkKey, view: memoryview) -> bool:
        """Stage a prefetched chunk against its reservation.

        Returns False (and gives the reservation back) if its reader has
        gone away meanwhile.
        """
        with self._lock:
            self._reserved -= view.nbytes
            if key in self._abandoned:
                self._abandoned.discard(key)
                self.stats.wasted += 1
                stage = False
            else:
                self._entries[key] = (view, time.monotonic())
                self.stats.staged_bytes += view.nbytes
                stage = True
        if not stage:
            self._signal()
        return stage

    # -- internals -----------------------------------------------------------

    def _fits(self, nbytes: int) -> bool:
        used = self.stats.staged_bytes + self._reserved
        # A request larger than the whole budget may run alone.
        return used + nbytes <= self.limit or used == 0

    def _book(self, nbytes: int) -> None:
        self._reserved += nbytes
        total = self.stats.staged_bytes + self._reserved
        self.stats.peak_staged_bytes = max(self.stats.peak_staged_bytes, total)

    def _reclaim_locked(self, now: float) -> None:
        while self._entries:
            key, (view, stamp) = next(iter(self._entries.items()))
            if now - stamp < self.hold:
                return
            del self._entries[key]
            self.stats.staged_bytes -= view.nbytes
            self.stats.wasted += 1

    def _event(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._room is None or self._loop is not loop:
            self._room = asyncio.Event()
            self._loop = loop
        return self._room

    def _signal(self) -> None:
        loop, event = self._loop, self._room
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    def after_fork(self) -> None:
        """Reset state that belongs to the parent process."""
        self._lock = threading.Lock()
        self._entries.clear()
        self.stats.staged_bytes = 0
        self._reserved = 0
        self._abandoned.clear()
        self._room = None
        self._loop = None
