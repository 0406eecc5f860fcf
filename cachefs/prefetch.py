"""Prefetch: readahead windows, the staging area, and explicit prefetch.

Chunks fetched ahead of a reader are *staged*: held in memory under a byte
budget (``prefetch_limit``) until read, so prefetching never evicts what is
about to be consumed and a long prefetch list streams through instead of
flooding RAM. A staged chunk moves to the RAM tier when it is read. Staged
chunks nobody reads are dropped when their budget is needed and they have
waited longer than ``hold`` seconds; they count as wasted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import CancelledError
from concurrent.futures import Future as ThreadFuture
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey, FileVersion

if TYPE_CHECKING:
    from cachefs.filesystem import CacheFileSystem

__all__ = [
    "PrefetchHandle",
    "PrefetchStats",
    "ReadaheadWindow",
    "Staging",
]

log = logging.getLogger(__name__)

#: Batches an explicit prefetch keeps in flight at once.
DEPTH = 2

#: An explicit prefetch item: a path, or ``(path, start, end)``.
PrefetchItem = str | tuple[str, int | None, int | None]


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


class ReadaheadWindow:
    """An adaptive readahead window for one sequential reader.

    The window starts at ``initial`` bytes, doubles with each sequential
    read up to ``cap``, and collapses to zero on a seek elsewhere (the next
    sequential read starts it again).
    """

    def __init__(self, initial: int, cap: int) -> None:
        self.initial = min(initial, cap)
        self.cap = cap
        self.size = 0
        #: Where the next sequential read starts.
        self.expected = 0

    def advance(self, start: int, stop: int) -> int:
        """Record a read of ``[start, stop)``; return the bytes to read ahead."""
        if start == self.expected:
            self.size = min(max(self.size * 2, self.initial), self.cap)
        else:
            self.size = 0  # a seek: no readahead until reads are sequential
        self.expected = stop
        return self.size


class PrefetchHandle:
    """A running explicit prefetch; returned by ``CacheFileSystem.prefetch``.

    Attributes
    ----------
    total_bytes
        Bytes asked for (grows while the paths' sizes are resolved).
    done_bytes
        Bytes now cached or staged.
    failed
        ``(path, exception)`` for every item that could not be fetched.
    """

    def __init__(self, fs: CacheFileSystem, items: Sequence[PrefetchItem]) -> None:
        self.fs = fs
        self.items = list(items)
        self.total_bytes = 0
        self.done_bytes = 0
        self.failed: list[tuple[str, BaseException]] = []
        self._keys: list[ChunkKey] = []
        self._future: ThreadFuture[None] | asyncio.Task[None] | None = None
        #: Fetches in flight per path, oldest path first.
        self._pending: dict[str, int] = {}
        #: The item its consumer reads now (see :meth:`reached`).
        self._reader_at = -1

    @property
    def progress(self) -> tuple[int, int]:
        """``(done_bytes, total_bytes)``."""
        return self.done_bytes, self.total_bytes

    def done(self) -> bool:
        """Whether the prefetch has finished (or was cancelled)."""
        return self._future is not None and self._future.done()

    @property
    def waiting_on(self) -> str | None:
        """The path whose bytes have waited longest, or ``None``.

        For a caller that says what it is waiting for (``cachefs warm``);
        safe to read from any thread.
        """
        paths = list(self._pending)  # one atomic copy: the loop mutates it
        return paths[0] if paths else None

    def reached(self, index: int) -> None:
        """Say that the consumer has started to read item ``index``.

        Items up to it are no longer fetched ahead: the consumer's own reads
        (and readahead) fetch what it needs of them, and a chunk it already
        read — which a full cache may not have kept — is not fetched again.
        Safe from any thread.
        """
        self._reader_at = max(self._reader_at, index)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until finished; return False on timeout.

        Never raises a fetch error: see :attr:`failed`. An interrupt of the
        waiting thread (``KeyboardInterrupt``, ``SystemExit``) cancels the
        prefetch and propagates.
        """
        assert isinstance(self._future, ThreadFuture)
        try:
            self._future.result(timeout)
        except TimeoutError:
            return False
        except (CancelledError, asyncio.CancelledError):  # cancel() or close()
            return True
        except Exception:  # a failed run: its items are in ``failed``
            return True
        except BaseException:
            # Ctrl-C while waiting: stop fetching on the way out, never
            # swallow the interrupt.
            self.cancel()
            raise
        return True

    def cancel(self) -> None:
        """Stop issuing fetches and drop what was staged but not read."""
        fut = self._future
        if fut is not None and not fut.done():
            if isinstance(fut, ThreadFuture):
                self.fs.loop.call_soon_threadsafe(self._cancel_on_loop)
            else:
                self._cancel_on_loop()

    def _cancel_on_loop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
        self.fs.router.abandon(self._keys)

    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Fetch the items in order (runs on the filesystem's loop).

        At most :data:`DEPTH` batches of known files are in flight at once,
        so the next shard arrives first rather than all shards sharing the
        bandwidth. A new file's first batch also tells its version (no HEAD)
        where that is allowed; the first batches of the next files (up to
        ``lookahead``) start at once as far as the staging budget allows,
        so a file's first request never waits for another file's headers.
        """
        self._task = asyncio.current_task()
        fs, router = self.fs, self.fs.router
        staging = router.staging
        assert staging is not None
        if self._task is not None:
            # Tracked with the router's fills: close() cancels and drains it.
            router._tasks.add(self._task)
            self._task.add_done_callback(router._tasks.discard)
        lookahead = 16
        resolving: dict[int, asyncio.Task[Any]] = {}
        in_flight: deque[asyncio.Future[Any]] = deque()
        cs = fs.chunk_size
        # A batch never asks for more than the whole budget.
        group = max(1, min(router.max_coalesce, staging.limit) // cs)

        def look_up(i: int) -> None:
            if i >= len(self.items) or i in resolving:
                return
            path = _item_path(self.items[i])
            if fs._known_version(path) is not None:
                return
            if not fs._first_read_fetches(path):
                resolving[i] = asyncio.ensure_future(fs._version(path))
                return
            # A new file's first read tells its version: put the first reads
            # of the next files in flight now, as far as the budget allows,
            # so no file's request waits for another file's headers.
            first, span = self._first_span(self.items[i], group)
            if staging.try_reserve(span):
                resolving[i] = asyncio.ensure_future(
                    self._first_read(path, first, span)
                )

        try:
            for i, item in enumerate(self.items):
                for ahead in range(i, min(i + lookahead, len(self.items))):
                    look_up(ahead)
                path = _item_path(item)
                if i <= self._reader_at:
                    # Its reader is there already. A first read under way is
                    # left to finish: the reader's open may be sharing it.
                    task = resolving.pop(i, None)
                    if task is not None:
                        task.add_done_callback(_quiet)
                    continue
                start, end = (None, None) if isinstance(item, str) else item[1:]
                self._pending.setdefault(path, 0)  # its version, maybe
                try:
                    version = await self._version_of(
                        path, i, resolving, (start, end), group
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._fail(path, exc)
                    continue
                finally:
                    if not self._pending.get(path):
                        self._pending.pop(path, None)
                lo, hi = fs._clip(version.size, start, end)
                if hi <= lo:
                    continue
                self.total_bytes += hi - lo
                keys = fs._span_keys(version, lo, hi)
                for g in range(0, len(keys), group):
                    while len(in_flight) >= DEPTH:
                        await in_flight.popleft()
                    if i <= self._reader_at:
                        break  # the reader caught up: it reads the rest
                    batch = keys[g : g + group]
                    self._keys.extend(batch)
                    futures = await router.prefetch(batch, wait=True)
                    self.done_bytes += sum(
                        min(hi, k.stop) - max(lo, k.start)
                        for k in batch
                        if k not in futures
                    )
                    for key, fut in futures.items():
                        nbytes = min(hi, key.stop) - max(lo, key.start)
                        self._pending[path] = self._pending.get(path, 0) + 1
                        fut.add_done_callback(self._counter(path, nbytes))
                    if futures:
                        batch_done = asyncio.gather(
                            *(asyncio.shield(f) for f in futures.values()),
                            return_exceptions=True,
                        )
                        # Cancelled on close(): nobody awaits it then.
                        batch_done.add_done_callback(_quiet)
                        in_flight.append(batch_done)
            while in_flight:
                await in_flight.popleft()
        finally:
            self._pending.clear()
            for task in resolving.values():
                task.cancel()
            for waiter in in_flight:
                waiter.cancel()

    async def _version_of(
        self,
        path: str,
        i: int,
        resolving: dict[int, asyncio.Task[Any]],
        span_of: tuple[int | None, int | None],
        group: int,
    ) -> FileVersion:
        """Return ``path``'s version, learning it from a first batch if new."""
        fs = self.fs
        start, end = span_of
        task = resolving.pop(i, None)
        if task is not None:
            found: FileVersion = await task
            return found
        version = fs._known_version(path)
        if version is not None:
            return version
        if (start is not None and start < 0) or not fs._first_read_fetches(path):
            return await fs._version(path)
        first, span = self._first_span((path, start, end), group)
        staging = fs.router.staging
        assert staging is not None
        await staging.reserve(span)
        return await self._first_read(path, first, span)

    def _first_span(self, item: PrefetchItem, group: int) -> tuple[int, int]:
        """Return where a new file's first batch starts and its length."""
        cs = self.fs.chunk_size
        start, end = (None, None) if isinstance(item, str) else item[1:]
        first = max(start or 0, 0) // cs * cs
        span = group * cs
        if end is not None and end >= 0:
            span = min(span, max(-(-(end - first) // cs) * cs, cs))
        return first, span

    async def _first_read(self, path: str, first: int, span: int) -> FileVersion:
        """Read a new file's first batch (reserved already); return its version."""
        version, _ = await self.fs._resolve_span(
            path, first, span, staged=True, reserved=span
        )
        return version

    def _limit(self) -> int:
        staging = self.fs.router.staging
        return staging.limit if staging is not None else 0

    def _counter(self, path: str, nbytes: int) -> Any:
        def count(fut: asyncio.Future[memoryview]) -> None:
            left = self._pending.get(path, 0) - 1
            if left > 0:
                self._pending[path] = left
            else:
                self._pending.pop(path, None)
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is None:
                self.done_bytes += nbytes
            elif not any(p == path for p, _ in self.failed):
                self._fail(path, exc)

        return count

    def _fail(self, path: str, exc: BaseException) -> None:
        self.failed.append((path, exc))
        log.warning("cachefs: prefetch of %s failed: %s", path, exc)


def _quiet(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _item_path(item: PrefetchItem) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
        return item[0]
    raise TypeError(
        f"prefetch items must be paths or (path, start, end) tuples, got {item!r}"
    )
