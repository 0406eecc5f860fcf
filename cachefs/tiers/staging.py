"""The staging area: chunks fetched ahead of their reader, under a budget.

Chunks fetched ahead of a reader are *staged*: held in memory under a byte
budget (``prefetch_limit``) until read, so prefetching never evicts what is
about to be consumed and a long prefetch list streams through instead of
flooding RAM. A staged chunk moves to the RAM tier when it is read.

When the budget is needed, a staged chunk that the disk tier also holds
(``elsewhere``) is dropped at once, newest first: its reader reads it
there (counted as ``spilled``). A chunk that exists nowhere else
waits up to ``hold`` seconds for its reader before it is dropped (counted as
``wasted``): only such chunks can make a prefetch with nobody reading wait.

A prefetch *reserves* its bytes before it fetches (:meth:`Staging.reserve`,
:meth:`Staging.try_reserve`), *settles* the reservation when the bytes arrive
(:meth:`Staging.put`, or :meth:`Staging.unreserve` when they will not be
staged), and a reader that goes away *refuses* what is still in flight
(:meth:`Staging.refuse`).

A reservation may ask to stay *within* less than the budget (an explicit
prefetch with a reader: :meth:`cachefs.prefetch.PrefetchHandle.ahead`). A
reader that keeps up with its prefetch needs only what hides the origin's
wait staged ahead of it; every byte staged past that is memory landed
long before it is read, which a cold pass pays for in page faults (a
512 MiB ``fs.prefetch`` pass over nginx made 67-107 new 4 MiB landing
mappings with the whole 256 MiB budget ahead, 17-24 within 64 MiB). The
smaller bound holds only while a reader takes what is staged: once the
oldest staged chunk has waited :data:`READER_IDLE` seconds with no chunk
taken meanwhile, the whole budget applies again (spilling and holding as
above) until a reader takes a chunk, so a prefetch nobody reads yet, or a
reader paused between training steps, still gets the budget it had.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from cachefs.chunks import ChunkKey

__all__ = ["READER_IDLE", "PrefetchStats", "Staging"]

#: A reservation waiting on disk writes polls from 2 ms, up to 50 ms.
_NAP_FIRST = 0.002
_NAP_MAX = 0.05
#: Seconds the oldest staged chunk may wait for its reader before a
#: reservation's smaller bound (``within``) gives way to the whole budget.
READER_IDLE = 0.25


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
    spilled
        Staged chunks dropped unread to make room because the disk tier
        holds them (their reader reads them there: nothing is lost).
    staged_bytes, peak_staged_bytes
        Bytes held for readers now, and the most ever held (reservations of
        fetches in flight included).
    """

    issued: int = 0
    used: int = 0
    wasted: int = 0
    failed: int = 0
    spilled: int = 0
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
        Seconds a staged chunk held nowhere else is kept for its reader
        before its budget may be reclaimed.
    elsewhere
        Whether a tier below holds a chunk (the disk tier's ``contains``),
        so its staged copy may be dropped whenever the budget is needed;
        ``None``: no chunk is held elsewhere.

    Attributes
    ----------
    elsewhere
        As the parameter; settable once the tiers below are built.
    """

    def __init__(
        self,
        limit: int,
        hold: float = 30.0,
        elsewhere: Callable[[ChunkKey], bool] | None = None,
    ) -> None:
        self.limit = limit
        self.hold = hold
        self.elsewhere = elsewhere
        self.stats = PrefetchStats()
        self._entries: OrderedDict[ChunkKey, tuple[memoryview, float]] = OrderedDict()
        self._reserved = 0
        self._abandoned: set[ChunkKey] = set()
        self._lock = threading.Lock()
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set when the reader stopped taking what is staged: reservations'
        # smaller bounds are off until a reader takes a chunk again.
        self._reader_idle = False
        self._last_take = 0.0

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
            self._reader_idle = False
            self._last_take = time.monotonic()
        self._signal()
        return item[0]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def abandon(self, keys: Iterable[ChunkKey]) -> None:
        """Drop staged ``keys`` now; they count as wasted."""
        self._drop(keys, spilled=False)

    def spill(self, keys: Iterable[ChunkKey]) -> None:
        """Drop staged ``keys`` a tier below serves (counted as spilled)."""
        self._drop(keys, spilled=True)

    def _drop(self, keys: Iterable[ChunkKey], *, spilled: bool) -> None:
        dropped = False
        with self._lock:
            for key in keys:
                item = self._entries.pop(key, None)
                if item is not None:
                    self.stats.staged_bytes -= item[0].nbytes
                    if spilled:
                        self.stats.spilled += 1
                    else:
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

    def try_reserve(self, nbytes: int, within: int | None = None) -> bool:
        """Reserve ``nbytes`` if the budget allows now; never waits.

        With ``within``, staged and reserved bytes stay within it too, while
        a reader takes what is staged (see the module's docstring).
        """
        with self._lock:
            now = time.monotonic()
            if within is not None and not self._reader_idle and self._entries:
                # Idle: nothing taken for READER_IDLE while chunks waited.
                oldest = next(iter(self._entries.values()))[1]
                since = max(oldest, self._last_take)
                self._reader_idle = now - since >= READER_IDLE
            bound = self.limit
            if within is not None and not self._reader_idle:
                bound = min(bound, within)
            if self._fits(nbytes, bound):
                self._book(nbytes)
                return True
            if not self._fits(nbytes):
                # Only the whole budget reclaims: within a smaller bound,
                # the reservation waits for its reader instead of dropping
                # what the reader is about to take.
                self._reclaim_locked(now, nbytes)
            if self._fits(nbytes, bound):
                self._book(nbytes)
                return True
        return False

    async def reserve(self, nbytes: int, within: int | None = None) -> None:
        """Wait until ``nbytes`` fit the budget, then reserve them.

        ``within`` as for :meth:`try_reserve`. Staged chunks whose disk
        writes are still under way become free to drop as those writes end,
        which signals nothing here: while any staged chunk may still become
        so, the wait polls every few ms; so does a wait within a smaller
        bound (its reader may go idle).
        """
        nap = _NAP_FIRST
        while not self.try_reserve(nbytes, within):
            event = self._event()
            event.clear()
            pending = bool(self._entries) and (
                self.elsewhere is not None or within is not None
            )
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a
            # cancellation that races with the event.
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait(
                    {waiter}, timeout=min(self.hold, nap if pending else 0.25)
                )
            finally:
                waiter.cancel()
            nap = min(nap * 2, _NAP_MAX)

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
        # Staged too: a waiter may drop it once the disk tier holds it.
        self._signal()
        return stage

    # -- internals -----------------------------------------------------------

    def _fits(self, nbytes: int, bound: int | None = None) -> bool:
        used = self.stats.staged_bytes + self._reserved
        # A request larger than the bound may run alone.
        return used + nbytes <= (self.limit if bound is None else bound) or used == 0

    def _book(self, nbytes: int) -> None:
        self._reserved += nbytes
        total = self.stats.staged_bytes + self._reserved
        self.stats.peak_staged_bytes = max(self.stats.peak_staged_bytes, total)

    def _reclaim_locked(self, now: float, nbytes: int) -> None:
        while self._entries:
            key, (view, stamp) = next(iter(self._entries.items()))
            if now - stamp < self.hold:
                break
            del self._entries[key]
            self.stats.staged_bytes -= view.nbytes
            self.stats.wasted += 1
        elsewhere = self.elsewhere
        if elsewhere is None or self._fits(nbytes):
            return
        # Newest first, as many as it takes: a chunk on disk is dropped with
        # no hold (its reader maps it there), and the newest is the one its
        # reader reaches last, by when the disk read it now costs (from the
        # device, where the tier writes past the page cache) is further off.
        # Oldest first, a reader streaming behind its prefetch met every
        # dropped chunk next and read it back from the disk tier.
        for key in reversed(list(self._entries)):
            try:
                held = elsewhere(key)
            except OSError:  # unknown: keep it for its reader
                held = False
            if not held:
                continue
            view = self._entries.pop(key)[0]
            self.stats.staged_bytes -= view.nbytes
            self.stats.spilled += 1
            if self._fits(nbytes):
                return

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
        self._reader_idle = False
        self._last_take = 0.0
