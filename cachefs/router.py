"""The chunk router: tier lookup, promotion, single-flight fills.

Lookups go RAM → disk in the caller's thread (:meth:`ChunkRouter.get_cached`);
only misses reach the event loop (:meth:`ChunkRouter.get_chunks`). A miss gets
one in-flight future per key in this process and a stripe lock per chunk
across processes sharing a disk tier, so each chunk is fetched once. Adjacent
missing chunks are coalesced into one ranged request up to ``max_coalesce``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

from cachefs.chunks import ChunkKey
from cachefs.fetch import Fetcher
from cachefs.tiers.disk import DiskTier, StripeLock
from cachefs.tiers.ram import RamTier

__all__ = ["ChunkRouter", "RouterStats"]

_POLL_FIRST = 0.002
_POLL_MAX = 0.05


@dataclass(slots=True)
class RouterStats:
    """Counters of the router.

    Attributes
    ----------
    fills
        Chunks this process fetched from the origin.
    coalesced_requests
        Ranged requests issued for those chunks.
    joined
        Misses that joined a fetch already in flight in this process.
    waited
        Misses that waited for another process to fetch the chunk.
    promotions
        Disk hits copied up to the RAM tier.
    """

    fills: int = 0
    coalesced_requests: int = 0
    joined: int = 0
    waited: int = 0
    promotions: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return asdict(self)


def _retrieve(fut: asyncio.Future[memoryview]) -> None:
    # Mark the exception retrieved: a fill nobody awaits must not log noise.
    if not fut.cancelled():
        fut.exception()


def _adjacent_runs(keys: Iterable[ChunkKey], cap: int) -> Iterator[list[ChunkKey]]:
    """Group keys into runs of consecutive chunks of one version, ``cap`` long."""
    run: list[ChunkKey] = []
    for key in sorted(keys, key=lambda k: (k.version.path, k.version.token, k.index)):
        if run and (
            key.version != run[-1].version
            or key.index != run[-1].index + 1
            or len(run) >= cap
        ):
            yield run
            run = []
        run.append(key)
    if run:
        yield run


class ChunkRouter:
    """Routes chunk reads through the tiers to the origin.

    Parameters
    ----------
    ram
        The RAM tier, or ``None`` when ``ram_limit=0``.
    disks
        The disk tiers (one per cache directory); may be empty.
    fetcher
        Origin access.
    max_coalesce
        Largest ranged request, in bytes, made by joining adjacent misses.
    """

    def __init__(
        self,
        ram: RamTier | None,
        disks: Sequence[DiskTier],
        fetcher: Fetcher,
        *,
        max_coalesce: int,
    ) -> None:
        self.ram = ram
        self.disks = list(disks)
        self.fetcher = fetcher
        self.max_coalesce = max_coalesce
        self.stats = RouterStats()
        self._disk_ids = [
            hashlib.blake2b(str(d.root).encode(), digest_size=8).digest()
            for d in self.disks
        ]
        self._placement: dict[str, DiskTier] = {}
        self._inflight: dict[ChunkKey, asyncio.Future[memoryview]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pid = os.getpid()

    # -- placement -----------------------------------------------------------

    def disk_for(self, key: ChunkKey) -> DiskTier | None:
        """Return the disk tier that holds ``key`` (rendezvous hashing)."""
        disks = self.disks
        if len(disks) <= 1:
            return disks[0] if disks else None
        digest = key.digest
        placed = self._placement.get(digest)
        if placed is None:
            raw = bytes.fromhex(digest)
            scores = [
                hashlib.blake2b(raw + ident, digest_size=8).digest()
                for ident in self._disk_ids
            ]
            placed = disks[scores.index(max(scores))]
            if len(self._placement) > 1 << 20:
                self._placement.clear()
            self._placement[digest] = placed
        return placed

    # -- hits (caller's thread) ----------------------------------------------

    def get_cached(self, key: ChunkKey) -> memoryview | None:
        """Return the chunk from RAM or disk, or ``None`` (no origin I/O)."""
        ram = self.ram
        if ram is not None:
            view = ram.get(key)
            if view is not None:
                return view
        disk = self.disk_for(key)
        if disk is None:
            return None
        view = disk.get(key)
        if view is not None and ram is not None and ram.limit >= view.nbytes:
            copy = bytes(view)
            if ram.put(key, copy):
                self.stats.promotions += 1
                return memoryview(copy)
        return view

    def discard(self, keys: Iterable[ChunkKey]) -> None:
        """Drop ``keys`` from every tier."""
        for key in keys:
            if self.ram is not None:
                self.ram.discard(key)
            disk = self.disk_for(key)
            if disk is not None:
                disk.discard(key)

    # -- misses (event loop) -------------------------------------------------

    async def get_chunks(self, keys: Sequence[ChunkKey]) -> list[memoryview]:
        """Return the chunks for ``keys``, fetching the missing ones."""
        views: list[memoryview | None] = [self.get_cached(k) for k in keys]
        missing = [k for k, v in zip(keys, views, strict=True) if v is None]
        if not missing:
            return views  # type: ignore[return-value]
        waiting = self.request(missing)
        for i, key in enumerate(keys):
            if views[i] is None:
                # shield: a cancelled reader must not cancel a shared fetch.
                views[i] = await asyncio.shield(waiting[key])
        return views  # type: ignore[return-value]

    def request(
        self, keys: Iterable[ChunkKey]
    ) -> dict[ChunkKey, asyncio.Future[memoryview]]:
        """Start fills for ``keys`` not yet in flight; return their futures.

        Must run on the event loop. Keys already in flight join that fetch.
        """
        if self._pid != os.getpid():
            self._after_fork()
        loop = asyncio.get_running_loop()
        futures: dict[ChunkKey, asyncio.Future[memoryview]] = {}
        new: list[ChunkKey] = []
        for key in keys:
            fut = self._inflight.get(key)
            if fut is None:
                fut = loop.create_future()
                fut.add_done_callback(_retrieve)
                self._inflight[key] = fut
                new.append(key)
            else:
                self.stats.joined += 1
            futures[key] = fut
        if new:
            cap = max(1, self.max_coalesce // new[0].chunk_size)
            for run in _adjacent_runs(new, cap):
                task = loop.create_task(self._fill(run))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return futures

    async def _fill(self, run: list[ChunkKey]) -> None:
        held: list[StripeLock] = []
        try:
            owned: list[ChunkKey] = []
            contended: list[tuple[ChunkKey, DiskTier, StripeLock]] = []
            for key in run:
                disk = self.disk_for(key)
                if disk is None:
                    owned.append(key)
                    continue
                lock = disk.stripe_lock(key)
                if not lock.try_acquire():
                    contended.append((key, disk, lock))
                    continue
                held.append(lock)
                if not self._found_on(disk, key):
                    owned.append(key)
                else:
                    lock.release()
            for group in _adjacent_runs(owned, len(owned) or 1):
                await self._fetch_and_store(group)
            for lock in held:
                lock.release()
            held.clear()
            if contended:
                await asyncio.gather(*(self._wait_for(*c) for c in contended))
        except BaseException as exc:
            for key in run:
                fut = self._inflight.get(key)
                if fut is not None and not fut.done():
                    if isinstance(exc, asyncio.CancelledError):
                        fut.cancel()
                    else:
                        fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            for lock in held:
                lock.release()
            for key in run:
                self._inflight.pop(key, None)

    def _found_on(self, disk: DiskTier, key: ChunkKey) -> bool:
        """Resolve ``key`` from ``disk`` if another process published it."""
        if not disk.contains(key):
            return False
        view = disk.get(key)
        if view is None:
            return False
        self._resolve(key, view)
        return True

    async def _wait_for(self, key: ChunkKey, disk: DiskTier, lock: StripeLock) -> None:
        """Wait while another process fetches ``key``; fetch it if it gave up."""
        self.stats.waited += 1
        delay = _POLL_FIRST
        while True:
            if self._found_on(disk, key):
                return
            if lock.try_acquire():
                try:
                    if not self._found_on(disk, key):
                        await self._fetch_and_store([key])
                finally:
                    lock.release()
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    async def _fetch_and_store(self, keys: list[ChunkKey]) -> None:
        first, last = keys[0], keys[-1]
        self.stats.coalesced_requests += 1
        data = await self.fetcher.fetch(first.version.path, first.start, last.stop)
        whole = memoryview(data)
        views = [whole[k.start - first.start : k.stop - first.start] for k in keys]
        self.stats.fills += len(keys)
        for key, view in zip(keys, views, strict=True):
            if self.ram is not None:
                self.ram.put(key, view)
            self._resolve(key, view)
        if self.disks:
            # Disk writes leave the loop's thread: a slow disk stalls no fetch.
            await asyncio.to_thread(self._store, list(zip(keys, views, strict=True)))

    def _store(self, items: list[tuple[ChunkKey, memoryview]]) -> None:
        for key, view in items:
            disk = self.disk_for(key)
            if disk is not None:
                disk.put(key, view)

    def _resolve(self, key: ChunkKey, view: memoryview) -> None:
        fut = self._inflight.get(key)
        if fut is not None and not fut.done():
            fut.set_result(view)

    # -- lifecycle -----------------------------------------------------------

    async def drain(self) -> None:
        """Wait until every fill in flight (disk writes included) is done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cancel_all(self) -> None:
        """Cancel every fill in flight (call on the event loop)."""
        for task in list(self._tasks):
            task.cancel()

    def _after_fork(self) -> None:
        # The parent's futures and tasks belong to the parent's loop.
        self._inflight = {}
        self._tasks = set()
        self._pid = os.getpid()
