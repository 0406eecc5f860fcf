"""The chunk router: tier lookup, promotion, single-flight fills.

Lookups go RAM → disk in the caller's thread (:meth:`ChunkRouter.get_cached`);
only misses reach the event loop (:meth:`ChunkRouter.get_chunks`). A miss gets
one in-flight future per key in this process (:class:`~cachefs.tiers.fills.Fills`)
and a stripe lock per chunk across processes sharing a disk tier, so each
chunk is fetched once. Adjacent missing chunks are coalesced into one ranged
request up to ``max_coalesce``. Tiers are reached through the protocols of
:mod:`cachefs.tiers.base` only: RAM is a ``Tier``, the disks one ``NodeTier``
(a :class:`~cachefs.tiers.diskset.DiskSet`), the shared tier an ``AsyncTier``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cachefs.chunks import ChunkKey, FileVersion
from cachefs.errors import OriginResponseError
from cachefs.fetch import Fetcher
from cachefs.tiers.base import AsyncTier, NodeTier, ProcessLock, Tier
from cachefs.tiers.diskset import DiskSet
from cachefs.tiers.fills import (
    Arrivals,
    Fills,
    RouterStats,
    adjacent_runs,
    keep_taken,
    retrieve,
)
from cachefs.tiers.staging import Staging
from cachefs.tiers.waits import Turn, fetch_budget, wait_turn
from cachefs.tiers.writer import WRITER

if TYPE_CHECKING:
    from cachefs.tiers.disk import DiskTier
    from cachefs.tiers.shared import SharedTier

__all__ = ["ChunkRouter", "RouterStats"]


class ChunkRouter:
    """Routes chunk reads through the tiers to the origin.

    Parameters
    ----------
    ram
        The RAM tier, or ``None`` when ``ram_limit=0``.
    disks
        The disk tiers, one per cache directory: a :class:`DiskSet`, or a
        sequence of tiers put in one (empty: no disk tier).
    fetcher
        Origin access.
    max_coalesce
        Largest ranged request, in bytes, made by joining adjacent misses.
    staging
        Where prefetched chunks wait for their reader, or ``None`` when
        prefetch is off.
    shared
        The cluster-wide tier consulted before the origin, or ``None``.

    Attributes
    ----------
    disk
        The disk tiers as one tier, or ``None``: what reads go through.
    disks, shared
        The disk tiers one by one, and the shared tier as built: what the
        face reports and maintains (reads never use them).
    """

    def __init__(
        self,
        ram: Tier | None,
        disks: DiskSet | Sequence[DiskTier],
        fetcher: Fetcher,
        *,
        max_coalesce: int,
        staging: Staging | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self.ram = ram
        diskset = disks if isinstance(disks, DiskSet) else DiskSet.of(disks)
        self.disk: NodeTier | None = diskset
        self.disks: list[DiskTier] = [] if diskset is None else list(diskset.tiers)
        self.shared = shared
        self._below: AsyncTier | None = shared
        self.staging = staging
        if staging is not None and diskset is not None:
            staging.elsewhere = diskset.contains  # staged copies free to drop
        #: The loop fills run on (set by the filesystem; None when async).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fetcher = fetcher
        self.max_coalesce = max_coalesce
        self.stats = RouterStats()
        self.fills = Fills(ram, staging)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Future[None]] = set()
        self._pid = os.getpid()

    @property
    def _inflight(self) -> dict[ChunkKey, asyncio.Future[memoryview]]:
        # The name tests look at: the fills' own map.
        return self.fills.inflight

    # -- hits (caller's thread) ----------------------------------------------

    def get_cached(self, key: ChunkKey) -> memoryview | None:
        """Return the chunk from RAM or disk, or ``None`` (no origin I/O)."""
        ram = self.ram
        if ram is not None:
            view = ram.get(key)
            if view is not None:
                return view
        staging = self.staging
        if staging is not None:
            view = staging.take(key)
            if view is not None:
                keep_taken(ram, self.disk, key, view)
                return view
        if self.disk is None:
            return None
        disk = self.disk.tier_for(key)  # placed once for the get and the check
        view = disk.get(key)
        # Promotion only where it pays: a mapped chunk is served in place (its
        # pages are the page cache: a copy would cost a memcpy and hold the
        # bytes twice). A decoded or pread chunk is already a buffer of its
        # own, so RAM keeps it without a copy.
        if (
            view is not None
            and ram is not None
            and not disk.in_memory(key)
            and ram.put(key, view)
        ):
            self.stats.promotions += 1
        return view

    def get_span(
        self, key: ChunkKey, lo: int, hi: int
    ) -> tuple[memoryview, bool] | None:
        """Return :meth:`get_cached`'s view, verified over ``[lo, hi)`` at least.

        The flag says whether all of it is (disk chunks verify blocks as
        they are read); without it, read ``[lo, hi)`` only.
        """
        ram, disk, staged = self.ram, self.disk, self.staging
        if disk is None or (ram and ram.contains(key)) or (staged and key in staged):
            view = self.get_cached(key)
            return None if view is None else (view, True)
        tier = disk.tier_for(key)
        found: tuple[memoryview, bool] | None = tier.get_span(key, lo, hi)  # type: ignore[attr-defined]
        if found and found[1] and ram is not None and not tier.in_memory(key):
            self.stats.promotions += ram.put(key, found[0])  # read, not mapped
        return found

    def discard(self, keys: Iterable[ChunkKey]) -> None:
        """Drop ``keys`` from every tier."""
        for key in keys:
            if self.ram is not None:
                self.ram.discard(key)
            if self.disk is not None:
                self.disk.discard(key)

    # -- misses (event loop) -------------------------------------------------

    async def get_chunks(
        self,
        keys: Sequence[ChunkKey],
        known: dict[ChunkKey, memoryview] | None = None,
    ) -> list[memoryview]:
        """Return the chunks for ``keys``, fetching the missing ones.

        ``known`` holds chunks the caller already has in hand.
        """
        views: list[memoryview | None] = [
            (known.get(k) if known else None) or self.get_cached(k) for k in keys
        ]
        missing = [k for k, v in zip(keys, views, strict=True) if v is None]
        if not missing:
            return views  # type: ignore[return-value]
        waiting, _ = self.request(missing)
        began = time.perf_counter()
        try:
            for i, key in enumerate(keys):
                if views[i] is None:
                    # shield: a cancelled reader must not cancel a shared fetch.
                    views[i] = await asyncio.shield(waiting[key])
                    staged = self.staging.take(key) if self.staging else None
                    if staged is not None:
                        keep_taken(self.ram, self.disk, key, staged)
        finally:
            self.stats.wait_seconds += time.perf_counter() - began
        return views  # type: ignore[return-value]

    def inflight(self, key: ChunkKey) -> asyncio.Future[memoryview] | None:
        """Return the fetch in flight for ``key``, if any (on the loop)."""
        return self.fills.inflight.get(key)

    def holds(self, key: ChunkKey, *, probe_disk: bool = False) -> bool:
        """Return whether ``key`` is in RAM, staged, in flight or on disk.

        Safe from any thread and cheap: without ``probe_disk``, a chunk on
        disk counts only if this process has it mapped (no system call).
        """
        if self.ram is not None and self.ram.contains(key):
            return True
        if key in self.fills.inflight:
            return True
        if self.staging is not None and key in self.staging:
            return True
        disk = self.disk
        if disk is None:
            return False
        return disk.contains(key) if probe_disk else disk.in_memory(key)

    async def prefetch(
        self, keys: Sequence[ChunkKey], *, wait: bool, within: int | None = None
    ) -> dict[ChunkKey, asyncio.Future[memoryview]]:
        """Fetch ``keys`` ahead of their reader into the staging area.

        With ``wait``, waits for room in the prefetch budget (or ``within``
        bytes staged and in flight, while a reader takes what is staged:
        :meth:`~cachefs.tiers.staging.Staging.reserve`); without, skips the
        keys when there is none. Returns futures of the fetches this call
        started or joined; cached keys are left out.
        """
        staging = self.staging
        if staging is None:
            return {}
        inflight = self.fills.inflight
        joined = {k: f for k in keys if (f := inflight.get(k)) is not None}
        todo = [
            k for k in keys if k not in joined and not self.holds(k, probe_disk=True)
        ]
        # Never ask for more than the whole budget at once.
        need = 0
        for i, key in enumerate(todo):
            if need + key.length > staging.limit and i:
                del todo[i:]
                break
            need += key.length
        if not todo:
            return joined
        if wait:
            await staging.reserve(need, within)
        elif not staging.try_reserve(need):
            return joined
        futures, new = self.request(todo, prefetch=True)
        late = sum(k.length for k in todo if k not in new)
        if late:
            staging.unreserve(late)  # a demand fetch got there first
        staging.stats.issued += len(new)
        return {**joined, **futures}

    def readahead_soon(self, keys: list[ChunkKey]) -> None:
        """Schedule a best-effort readahead of ``keys`` (any thread)."""
        if self.staging is None or not keys:
            return
        if self.loop is not None:
            self.stats.readahead_wakeups += 1
            self.loop.call_soon_threadsafe(self._start_readahead, keys)

    def abandon(self, keys: Iterable[ChunkKey]) -> None:
        """Drop staged ``keys`` whose reader went away (call on the loop)."""
        if self.staging is None:
            return
        staged = [k for k in keys if k in self.staging]
        self.staging.abandon(staged)
        self.staging.refuse(k for k in keys if k in self.fills.prefetching)

    def _start_readahead(self, keys: list[ChunkKey]) -> None:
        self.track(
            asyncio.get_running_loop().create_task(self.prefetch(keys, wait=False))
        )

    def request(
        self, keys: Iterable[ChunkKey], *, prefetch: bool = False
    ) -> tuple[dict[ChunkKey, asyncio.Future[memoryview]], set[ChunkKey]]:
        """Start fills for ``keys`` not yet in flight.

        Must run on the event loop. Keys already in flight join that fetch.
        Returns the futures of all ``keys`` and the set of keys this call
        started; with ``prefetch``, those are staged when they arrive.
        """
        if self._pid != os.getpid():
            self._after_fork()
        loop = asyncio.get_running_loop()
        fills = self.fills
        futures: dict[ChunkKey, asyncio.Future[memoryview]] = {}
        new: list[ChunkKey] = []
        for key in keys:
            fut = fills.inflight.get(key)
            if fut is None:
                fut = fills.begin(key, loop, prefetch=prefetch)
                new.append(key)
            else:
                self.stats.joined += 1
            futures[key] = fut
        if new:
            cap = max(1, self.max_coalesce // new[0].chunk_size)
            for run in adjacent_runs(new, cap):
                self.track(loop.create_task(self._fill(run)))
        return futures, set(new)

    async def _fill(self, run: list[ChunkKey]) -> None:
        held: list[ProcessLock] = []
        try:
            owned: list[ChunkKey] = []
            contended: list[tuple[ChunkKey, NodeTier, ProcessLock]] = []
            disk = self.disk
            for key in run:
                if disk is None:
                    owned.append(key)
                    continue
                tier = disk.tier_for(key)
                lock = tier.stripe_lock(key)
                if not lock.try_acquire():
                    contended.append((key, tier, lock))
                    continue
                held.append(lock)
                if not self._found_on(tier, key):
                    owned.append(key)
                else:
                    lock.release()
            await self._fill_owned(owned)
            for lock in held:
                lock.release()
            held.clear()
            if contended:
                await asyncio.gather(*(self._wait_for(*c) for c in contended))
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.fills.count_failed_prefetches(run)
            self.fills.fail(run, exc)
            if not isinstance(exc, Exception):  # cancelled, interrupted, exiting
                raise
        finally:
            for lock in held:
                lock.release()
            self.fills.settle(run)

    def _found_on(self, disk: NodeTier, key: ChunkKey) -> bool:
        """Resolve ``key`` from ``disk`` if another process published it."""
        if not disk.contains(key):
            return False
        view = disk.get(key)
        if view is None:
            return False
        self.fills.resolve(key, view)
        return True

    async def _wait_for(self, key: ChunkKey, disk: NodeTier, lock: ProcessLock) -> None:
        """Wait while another process fetches ``key`` (a fetch's budget at most)."""
        self.stats.waited += 1
        turn = await wait_turn(
            lock, fetch_budget(self.fetcher), lambda: self._found_on(disk, key)
        )
        if turn is Turn.DONE:
            return
        self.stats.waited_out += turn is Turn.WAITED_OUT
        try:
            if not self._found_on(disk, key):
                await self._fill_owned([key])
        finally:
            lock.release()  # a no-op when the wait ran out

    async def _fill_owned(self, keys: list[ChunkKey]) -> None:
        """Fill keys this process holds the locks of: shared tier, then origin.

        With a shared tier, the origin fetch of a chunk is single-flight
        across nodes where its engine allows (:meth:`AsyncTier.fill_once`).
        """

        async def fetch(group: list[ChunkKey]) -> None:
            await asyncio.gather(
                *(self._fetch_and_store(g) for g in adjacent_runs(group, len(group)))
            )

        async def accept(key: ChunkKey, view: memoryview) -> None:
            await self._accept([(key, view)])

        below = self._below
        if below is not None and keys:
            found = await asyncio.gather(*(below.get(k) for k in keys))
            hits = [(k, v) for k, v in zip(keys, found, strict=True) if v is not None]
            if hits:
                await self._accept(hits)
            keys = [k for k, v in zip(keys, found, strict=True) if v is None]
            if keys:
                await below.fill_once(keys, fetch, accept)
        elif keys:
            await fetch(keys)

    async def _fetch_and_store(self, keys: list[ChunkKey]) -> None:
        first, last = keys[0], keys[-1]
        self.stats.coalesced_requests += 1
        arrivals = Arrivals(self.fills, keys, self._store_soon)
        try:
            await self.fetcher.stream(
                first.version.path,
                first.start,
                last.stop,
                first.chunk_size,
                token=first.version.token,
                size=first.version.size,
                on_piece=arrivals.on_piece,
                pace=WRITER.room if self.disk is not None else None,
            )
            arrivals.check_complete(first.version.path, first.start, last.stop)
        finally:
            await self._store_fetched(arrivals)

    def _store_soon(
        self, items: list[tuple[ChunkKey, memoryview]]
    ) -> asyncio.Future[None]:
        """Start storing fetched chunks in the tiers; the task doing it."""
        publish = self._below is not None
        return asyncio.ensure_future(self._store_items(items, publish=publish))

    async def _store_fetched(self, arrivals: Arrivals) -> None:
        """Count what one ranged read fetched; wait until it is stored."""
        if arrivals.got:
            self.stats.fills += len(arrivals.got)
        if arrivals.unstored:
            arrivals.stores.append(self._store_soon(arrivals.unstored))
        for done in await asyncio.gather(*arrivals.stores, return_exceptions=True):
            if isinstance(done, BaseException):
                raise done

    async def _accept(self, items: list[tuple[ChunkKey, memoryview]]) -> None:
        """Hand chunks from the shared tier to their readers; store them here."""
        for key, view in items:
            self.fills.deliver(key, view)
        await self._store_items(items, publish=False)

    async def _store_items(
        self, items: list[tuple[ChunkKey, memoryview]], *, publish: bool
    ) -> None:
        disk = self.disk
        if disk is not None:
            # Batched on the writer thread (cachefs.tiers.writer); shielded and
            # tracked, so a cancelled fill (close()) still lets drain() wait.
            write = asyncio.ensure_future(WRITER.store(disk, items))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            await asyncio.shield(write)
            self.fills.release_stored(disk, items)  # the page cache has them
        if publish and self._below is not None:
            # Write-back to the shared tier, in the background.
            self.track(asyncio.get_running_loop().create_task(self._publish(items)))

    async def open_stream(
        self,
        path: str,
        start: int,
        stop: int,
        chunk_size: int,
        make_version: Callable[[dict[str, Any]], FileVersion],
        *,
        lock: ProcessLock | None = None,
        staged: bool = False,
        reserved: int = 0,
    ) -> FileVersion:
        """Read a file whose version is unknown, learning it from the read.

        One ranged request for ``[start, stop)``; its headers give the
        version (``make_version``), which is returned at once while the
        chunks stream in as in-flight fills that readers join. ``lock`` (the
        file's cross-process lock) is released once they are stored. With
        ``staged``, the chunks are prefetches charged to ``reserved`` bytes
        of the staging budget.
        """
        loop = asyncio.get_running_loop()
        learned: asyncio.Future[FileVersion] = loop.create_future()
        learned.add_done_callback(retrieve)
        fills = self.fills
        arrivals = Arrivals(fills, store=self._store_soon)
        held: list[ProcessLock] = []
        staging = self.staging if staged else None

        def on_info(info: dict[str, Any]) -> None:
            version = make_version(info)
            end = min(stop, version.size)
            indices = range(start // chunk_size, -(-end // chunk_size))
            keys = [version.key(chunk_size, i) for i in indices]
            # Each chunk's stripe lock, as any fill holds it: a process that
            # learns the version now waits for these bytes.
            claimed, locks = fills.claim(keys, loop, self.disk)
            held.extend(locks)
            for key in claimed:
                arrivals.expect(key)
            if staging is not None:
                mine = arrivals.expected.values()
                staging.unreserve(max(reserved - sum(k.length for k in mine), 0))
                fills.prefetching.update(mine)
                staging.stats.issued += len(mine)
            learned.set_result(version)

        async def run() -> None:
            mine = arrivals.expected.values()
            try:
                await self.fetcher.stream(
                    path,
                    start,
                    stop,
                    chunk_size,
                    on_info=on_info,
                    on_piece=arrivals.on_piece,
                    pace=WRITER.room if self.disk is not None else None,
                )
                if not learned.done():
                    raise OriginResponseError(
                        f"{path}: the origin's answer gave no size nor version"
                    )
                arrivals.check_complete(path, start, stop)
            except BaseException as exc:
                cancelled = isinstance(exc, asyncio.CancelledError)
                if not learned.done():
                    learned.set_exception(exc)
                    if staging is not None and not cancelled:
                        staging.stats.failed += 1  # the file's first batch
                elif staging is not None and not cancelled:
                    fills.count_failed_prefetches(mine)
                fills.fail(mine, exc)
                if not isinstance(exc, Exception):  # cancelled, interrupted, ...
                    raise
            finally:
                try:
                    if arrivals.got:
                        self.stats.coalesced_requests += 1
                    await self._store_fetched(arrivals)
                finally:
                    fills.settle(list(mine))
                    for stripe in held:
                        stripe.release()
                    if lock is not None:
                        lock.release()
                    if staging is not None and not learned.done():
                        staging.unreserve(reserved)

        self.track(loop.create_task(run()))
        return await asyncio.shield(learned)

    async def _publish(self, items: list[tuple[ChunkKey, memoryview]]) -> None:
        below = self._below
        assert below is not None
        # Together: a node waiting on this run's leases gets it sooner.
        await asyncio.gather(*(below.put(key, view) for key, view in items))

    def file_lock(self, protocol: str, path: str) -> ProcessLock | None:
        """Return the cross-process lock for learning a file's version."""
        if self.disk is None:
            return None
        return self.disk.file_lock(f"{protocol}\0{path}")

    async def acquire(self, lock: ProcessLock) -> bool:
        """Wait until ``lock`` is ours, a fetch's budget at most; say if it is."""
        if await wait_turn(lock, fetch_budget(self.fetcher)) is Turn.OURS:
            return True
        self.stats.waited_out += 1
        return False

    # -- lifecycle -----------------------------------------------------------

    def track(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` with the fills (call on the loop).

        :meth:`cancel_all` cancels it and :meth:`drain` waits for it.
        """
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every fill in flight (disk writes included) is done."""
        while self._tasks or self._writes:
            await asyncio.gather(
                *list(self._tasks), *list(self._writes), return_exceptions=True
            )

    def cancel_all(self) -> None:
        """Cancel every fill in flight (call on the event loop)."""
        for task in list(self._tasks):
            task.cancel()
        if self.staging is not None:
            self.staging.clear()

    def after_fork(self) -> None:
        """Forget the parent's fetches in a forked child."""
        self.fills.after_fork()
        self._tasks = set()
        self._writes = set()
        self._pid = os.getpid()
        if self.ram is not None:
            self.ram.after_fork()
        if self.disk is not None:
            self.disk.after_fork()
        if self.staging is not None:
            self.staging.after_fork()

    _after_fork = after_fork
