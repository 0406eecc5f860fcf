"""Explicit prefetch: fetch a list of files (or spans) ahead of their reader.

The chunks fetched ahead are staged (see :mod:`cachefs.tiers.staging`) until
read; readahead of one sequential reader lives with the file object
(:class:`cachefs.file.ReadaheadWindow`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError
from concurrent.futures import Future as ThreadFuture
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey, FileVersion, clip

if TYPE_CHECKING:
    from cachefs.router import ChunkRouter
    from cachefs.versions import VersionResolver

__all__ = ["AHEAD_FLOOR", "FAST_BODY", "FirstReads", "PrefetchHandle", "all_done"]

log = logging.getLogger(__name__)

#: Batches an explicit prefetch keeps in flight at once.
DEPTH = 2
#: Bytes a prefetch with a reader keeps staged and in flight at least
#: (:meth:`PrefetchHandle.ahead`).
AHEAD_FLOOR = 64 * 2**20
#: Bytes per second of one response's body from which a prefetch keeps
#: only :meth:`PrefetchHandle.ahead` ahead of its reader (the floor's four
#: 16 MiB requests then bring 512 MB/s or more; from nginx on loopback,
#: ``cold_fill``'s prefetch passes measured 0.98-1.7 GB/s).
#: Slower responses (a WAN object store's, whose throughput grows with
#: connections in parallel) need many in flight, and get the whole budget.
FAST_BODY = 128e6

#: An explicit prefetch item: a path, or ``(path, start, end)``.
PrefetchItem = str | tuple[str, int | None, int | None]


class FirstReads:
    """How many new files' first reads a prefetch keeps in flight.

    A first read (up to ``max_coalesce`` of a file whose version is not
    known) lands its whole span in fresh buffers, and 16 of them at once
    put 256 MiB in flight: more landing buffers than the pool reuses, and
    bytes written to disk long after they came in (a cold ShardDataset
    epoch over nginx made 78-102 new 4 MiB mappings for 128 chunks, an
    ``fsspec.open`` pass 0-5). Enough first reads run together to hide the
    wait for each one's first byte and no more: after each, ``(first byte +
    body) / body`` of them, between 2 and ``most`` (a 500 ms origin: all;
    an origin on loopback: 2).

    Parameters
    ----------
    most
        First reads in flight at most.
    """

    def __init__(self, most: int) -> None:
        self.most = most
        self.allowed = min(2, most)
        self.running = 0
        #: Bytes per second of the last first read's body, once measured.
        self.body_rate: float | None = None

    def may_start(self) -> bool:
        """Whether another first read may start now."""
        return self.running < self.allowed

    def finished(self, wait: float | None, body: float | None, nbytes: int = 0) -> None:
        """Count a first read done.

        ``wait`` and ``body`` are its two durations, ``nbytes`` its body's
        length.
        """
        self.running -= 1
        if wait is not None and body is not None and body > 0:
            need = math.ceil((wait + body) / body)
            self.allowed = max(min(2, self.most), min(self.most, need))
            if nbytes:
                self.body_rate = nbytes / body


class PrefetchHandle:
    """A running explicit prefetch; returned by ``CacheFileSystem.prefetch``.

    Parameters
    ----------
    resolver
        Learns the versions of the files (a new file's from its first batch).
    router
        Fetches the chunks into the staging area.
    items
        Target paths, or ``(path, start, end)``, in the order they are read.
    depth
        Batches kept in flight at once (default :data:`DEPTH`: the next
        shard first, for a reader; ``cachefs warm``, which has none, keeps
        ``-j`` in flight).

    Attributes
    ----------
    total_bytes
        Bytes asked for (grows while the paths' sizes are resolved).
    done_bytes
        Bytes now cached or staged.
    failed
        ``(path, exception)`` for every item that could not be fetched.
    """

    def __init__(
        self,
        resolver: VersionResolver,
        router: ChunkRouter,
        items: Sequence[PrefetchItem],
        *,
        depth: int = DEPTH,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.resolver = resolver
        self.router = router
        self.items = list(items)
        self.total_bytes = 0
        self.done_bytes = 0
        self.failed: list[tuple[str, BaseException]] = []
        self._keys: list[ChunkKey] = []
        self._future: ThreadFuture[None] | asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Fetches in flight per path, oldest path first.
        self._pending: dict[str, int] = {}
        #: The item its consumer reads now (see :meth:`reached`).
        self._reader_at = -1
        self._pacing = FirstReads(16)

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Start :meth:`run`: on ``loop``, from another thread.

        With ``None``, as a task of the running loop (an asynchronous cache).
        """
        if loop is None:
            self._future = asyncio.get_running_loop().create_task(self.run())
        else:
            self._loop = loop
            self._future = asyncio.run_coroutine_threadsafe(self.run(), loop)

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
                assert self._loop is not None  # set with a thread future
                self._loop.call_soon_threadsafe(self._cancel_on_loop)
            else:
                self._cancel_on_loop()

    def _cancel_on_loop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
        self.router.abandon(self._keys)

    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Fetch the items in order (runs on the filesystem's loop).

        At most ``depth`` batches of known files are in flight at once,
        so the next shard arrives first rather than all shards sharing the
        bandwidth. A new file's first batch also tells its version (no HEAD)
        where that is allowed; the first batches of the next files (up to
        ``lookahead``) start at once as far as the staging budget allows,
        so a file's first request never waits for another file's headers.
        """
        self._task = asyncio.current_task()
        resolver, router = self.resolver, self.router
        staging = router.staging
        assert staging is not None
        if self._task is not None:
            # Tracked with the router's fills: close() cancels and drains it.
            router.track(self._task)
        lookahead = 16
        self._pacing = FirstReads(lookahead)
        resolving: dict[int, asyncio.Task[Any]] = {}
        in_flight: deque[asyncio.Future[Any]] = deque()
        cs = resolver.chunk_size
        # A batch never asks for more than the whole budget.
        group = max(1, min(router.max_coalesce, staging.limit) // cs)

        def look_up(i: int) -> None:
            if i >= len(self.items) or i in resolving:
                return
            path = _item_path(self.items[i])
            if resolver.known(path) is not None:
                return
            if not resolver.first_read_fetches(path):
                resolving[i] = asyncio.ensure_future(resolver.version(path))
                return
            # A new file's first read tells its version: put the first reads
            # of the next files in flight now, as far as the budget allows,
            # so no file's request waits for another file's headers.
            first, span = self._first_span(self.items[i], group)
            if self._pacing.may_start() and staging.try_reserve(
                span, self.ahead(group * cs)
            ):
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
                lo, hi = clip(version.size, start, end)
                if hi <= lo:
                    continue
                self.total_bytes += hi - lo
                keys = resolver.keys(version, lo, hi)
                for g in range(0, len(keys), group):
                    while len(in_flight) >= self.depth:
                        await in_flight.popleft()
                    if i <= self._reader_at:
                        break  # the reader caught up: it reads the rest
                    batch = keys[g : g + group]
                    self._keys.extend(batch)
                    futures = await router.prefetch(
                        batch, wait=True, within=self.ahead(group * cs)
                    )
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
                        # Cancelled on close(): nobody awaits it then.
                        in_flight.append(all_done(futures.values()))
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
        resolver = self.resolver
        start, end = span_of
        task = resolving.pop(i, None)
        if task is not None:
            found: FileVersion = await task
            return found
        version = resolver.known(path)
        if version is not None:
            return version
        if (start is not None and start < 0) or not resolver.first_read_fetches(path):
            return await resolver.version(path)
        first, span = self._first_span((path, start, end), group)
        staging = self.router.staging
        assert staging is not None
        await staging.reserve(span, self.ahead(group * self.resolver.chunk_size))
        return await self._first_read(path, first, span)

    def _first_span(self, item: PrefetchItem, group: int) -> tuple[int, int]:
        """Return where a new file's first batch starts and its length."""
        cs = self.resolver.chunk_size
        start, end = (None, None) if isinstance(item, str) else item[1:]
        first = max(start or 0, 0) // cs * cs
        span = group * cs
        if end is not None and end >= 0:
            span = min(span, max(-(-(end - first) // cs) * cs, cs))
        return first, span

    async def _first_read(self, path: str, first: int, span: int) -> FileVersion:
        """Read a new file's first batch (reserved already); return its version.

        Returns once the headers give the version; the body's end is
        counted for :class:`FirstReads` when its chunks have all landed.
        """
        pacing = self._pacing
        pacing.running += 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            version, _ = await self.resolver.resolve_span(
                path, first, span, staged=True, reserved=span
            )
        except BaseException:
            pacing.finished(None, None)
            raise
        learned = loop.time()
        inflight = self.router.fills.inflight
        stop = min(first + span, version.size)
        body = [
            fut
            for key in self.resolver.keys(version, first, stop)
            if (fut := inflight.get(key)) is not None
        ]
        if not body:
            pacing.finished(None, None)
            return version

        def landed(_: asyncio.Future[Any]) -> None:
            pacing.finished(learned - began, loop.time() - learned, stop - first)

        all_done(body).add_done_callback(landed)
        return version

    def ahead(self, batch: int) -> int | None:
        """Return the bytes to keep staged and in flight ahead of the reader.

        Enough to hide the origin's wait: as many batches of ``batch``
        bytes as :class:`FirstReads` keeps first reads in flight (its
        measure of ``(first byte + body) / body``), and at least
        :data:`AHEAD_FLOOR`; the staging area lets go of this bound while
        no reader takes what is staged (:mod:`cachefs.tiers.staging`).
        ``None`` (the whole budget) where responses come in slower than
        :data:`FAST_BODY` (more of them in flight bring more), and for a
        prefetch kept ``depth`` deep on purpose: ``cachefs warm -j N`` asks
        for N requests in flight.
        """
        rate = self._pacing.body_rate
        if self.depth != DEPTH or (rate is not None and rate < FAST_BODY):
            return None
        return max(AHEAD_FLOOR, self._pacing.allowed * batch)

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


def prefetch_items(items: Any, target_path: Callable[[str], str]) -> list[PrefetchItem]:
    """Check what :meth:`CacheFileSystem.prefetch` was given; map to targets.

    Raises
    ------
    TypeError
        When ``items`` is not a list of paths or ``(path, start, end)``
        tuples; the message shows the first bad item.
    """
    if isinstance(items, str | bytes) or not isinstance(items, Sequence):
        raise TypeError("prefetch takes a list of paths or (path, start, end) tuples")
    out: list[PrefetchItem] = []
    for item in items:
        if isinstance(item, str | os.PathLike):
            out.append(target_path(os.fspath(item)))
        elif isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
            out.append((target_path(item[0]), item[1], item[2]))
        else:
            raise TypeError(
                "prefetch items must be paths or (path, start, end) tuples, "
                f"got {item!r}"
            )
    return out


def all_done(futures: Iterable[asyncio.Future[Any]]) -> asyncio.Future[None]:
    """Return a future done once every one of ``futures`` is.

    It holds none of their results: a gather would keep every chunk of a
    batch (and its landing buffer) alive until the last one arrived. Their
    exceptions are marked retrieved (their readers got them).
    """
    pending = list(futures)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(pending)

    def one(fut: asyncio.Future[Any]) -> None:
        nonlocal left
        _quiet(fut)
        left -= 1
        if not left and not done.done():
            done.set_result(None)

    if not pending:
        done.set_result(None)
    for fut in pending:
        fut.add_done_callback(one)
    return done


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
