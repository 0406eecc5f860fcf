"""The fills in flight in one process: one future per chunk, always ended.

A *fill* brings chunks up from below the node (the shared tier or the
origin) for the readers waiting on them. Each chunk in flight has one
future here, which every reader of the chunk joins: single flight inside
the process. A fill hands each chunk to its readers the moment it arrives
(:meth:`Fills.deliver`): staged when it was fetched ahead of its reader,
else kept in RAM. Whatever happens, every future ends delivered or failed
(:meth:`Fills.settle`), and a prefetch that was never staged gives its
budget back.

:class:`Arrivals` collects the chunks of one ranged read as they stream in.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from cachefs.buffers import HUGE_PAGE
from cachefs.chunks import ChunkKey
from cachefs.errors import ShortReadError
from cachefs.receive.landing import POOL
from cachefs.tiers.base import NodeTier, ProcessLock, Tier
from cachefs.tiers.staging import Staging

__all__ = [
    "Arrivals",
    "Fills",
    "RouterStats",
    "adjacent_runs",
    "disk_serves",
    "keep_taken",
    "retrieve",
]


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
    waited_out
        Waits for another process (a chunk's or a file's lock) past a
        fetch's budget: the bytes were read here (:mod:`cachefs.tiers.waits`).
    promotions
        Disk hits copied up to the RAM tier.
    wait_seconds
        Time readers spent waiting for chunks to arrive from the origin.
    readahead_wakeups
        Readahead batches a reader's thread handed to the event loop.
    """

    fills: int = 0
    coalesced_requests: int = 0
    joined: int = 0
    waited: int = 0
    waited_out: int = 0
    promotions: int = 0
    wait_seconds: float = 0.0
    readahead_wakeups: int = 0

    def as_dict(self) -> dict[str, float]:
        """Return the counters as a plain dict."""
        return asdict(self)


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark ``fut``'s exception retrieved (a done callback).

    A fill nobody awaits must not log noise when it fails.
    """
    if not fut.cancelled():
        fut.exception()


def adjacent_runs(keys: Iterable[ChunkKey], cap: int) -> Iterator[list[ChunkKey]]:
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


def disk_serves(disk: NodeTier | None, key: ChunkKey) -> bool:
    """Whether ``disk`` holds ``key`` as a plain record it serves in place.

    Such a chunk needs no RAM copy: a disk hit maps the file, whose pages
    are the page cache (a compressed record is decoded on every hit, so
    RAM keeps the decoded bytes).
    """
    if disk is None:
        return False
    tier = disk.tier_for(key)
    return getattr(tier, "codec", None) is None and tier.contains(key)


def keep_taken(
    ram: Tier | None, disk: NodeTier | None, key: ChunkKey, view: memoryview
) -> None:
    """Keep a chunk taken from staging in RAM, unless ``disk`` serves it.

    Only chunks of a huge page and more are left to the disk: a small one
    costs RAM little, and a hit there is cheaper than mapping its file.
    """
    if ram is not None and (view.nbytes < HUGE_PAGE or not disk_serves(disk, key)):
        ram.put(key, view)


class Fills:
    """The chunks this process fetches now, and their waiting readers.

    Call on the event loop only (futures are the loop's).

    Parameters
    ----------
    ram
        Where a chunk a reader asked for is kept, or ``None``.
    staging
        Where a chunk fetched ahead of its reader waits, or ``None``.

    Attributes
    ----------
    inflight
        The future of each chunk in flight.
    prefetching
        The chunks in flight that were fetched ahead of their reader and are
        not yet staged.
    """

    def __init__(self, ram: Tier | None, staging: Staging | None) -> None:
        self.ram = ram
        self.staging = staging
        self.inflight: dict[ChunkKey, asyncio.Future[memoryview]] = {}
        self.prefetching: set[ChunkKey] = set()
        #: Fetched chunks RAM let go of once the disk tier had them.
        self.released = 0

    def begin(
        self, key: ChunkKey, loop: asyncio.AbstractEventLoop, *, prefetch: bool
    ) -> asyncio.Future[memoryview]:
        """Put ``key`` in flight; return the future its readers wait on."""
        fut: asyncio.Future[memoryview] = loop.create_future()
        fut.add_done_callback(retrieve)
        self.inflight[key] = fut
        if prefetch:
            self.prefetching.add(key)
        return fut

    def claim(
        self,
        keys: Iterable[ChunkKey],
        loop: asyncio.AbstractEventLoop,
        disk: NodeTier | None,
    ) -> tuple[list[ChunkKey], list[ProcessLock]]:
        """Put in flight those of ``keys`` that nobody has or fetches.

        A key held in RAM or in flight here is left alone; so is one whose
        stripe lock on ``disk`` another process holds (it fetches the key)
        or that ``disk`` has. Returns the keys put in flight and the stripe
        locks taken for them, which the caller releases once they are
        stored.
        """
        claimed: list[ChunkKey] = []
        held: list[ProcessLock] = []
        for key in keys:
            if key in self.inflight or (
                self.ram is not None and self.ram.contains(key)
            ):
                continue
            if disk is not None:
                stripe = disk.stripe_lock(key)
                if not stripe.try_acquire():
                    continue
                if disk.contains(key):
                    stripe.release()
                    continue
                held.append(stripe)
            self.begin(key, loop, prefetch=False)
            claimed.append(key)
        return claimed, held

    def deliver(self, key: ChunkKey, view: memoryview) -> None:
        """Stage (prefetch) or keep in RAM, and wake the chunk's readers."""
        staging = self.staging
        if key in self.prefetching and staging is not None:
            self.prefetching.discard(key)
            if self.ram is not None and self.ram.contains(key):
                # A reader's own fetch (an open) got it into RAM first.
                staging.unreserve(key.length)
            else:
                staging.put(key, view)
        elif self.ram is not None:
            self.ram.put(key, view)
        self.resolve(key, view)

    def resolve(self, key: ChunkKey, view: memoryview) -> None:
        """Wake the readers of ``key`` with ``view`` (no storing)."""
        fut = self.inflight.get(key)
        if fut is not None and not fut.done():
            fut.set_result(view)

    def release_stored(
        self, disk: NodeTier | None, items: Iterable[tuple[ChunkKey, memoryview]]
    ) -> None:
        """Drop from RAM the fetched ``items`` that ``disk`` now serves in place.

        Kept in RAM, every chunk a cold pass lands is fresh memory the kernel
        must fault in and zero, and the same bytes sit twice in memory (the
        landing buffer and the page cache the disk write filled). Let go,
        the buffer is freed once its readers are done with it and the next
        chunk lands in it (:mod:`cachefs.receive.landing`); a later hit
        maps the disk record, verified once per process. Chunks under a huge
        page stay (see :func:`keep_taken`).
        """
        POOL.trim()  # free landing buffers past the pool's bound go now
        ram, staging = self.ram, self.staging
        if disk is None:
            return
        if staging is not None and staging.hold <= 0:
            # No reader is held for (``cachefs warm``): a staged chunk the
            # disk serves is dropped now, not when the budget runs out, so
            # its landing buffer takes the next chunk instead of the whole
            # budget's worth of fresh memory staying staged.
            staging.spill(
                k for k, v in items if v.nbytes >= HUGE_PAGE and disk_serves(disk, k)
            )
        if ram is None:
            return
        for key, view in items:
            if (
                view.nbytes >= HUGE_PAGE
                and ram.contains(key)
                and disk_serves(disk, key)
            ):
                ram.discard(key)
                self.released += 1

    def fail(self, keys: Iterable[ChunkKey], exc: BaseException) -> None:
        """Hand a failed (or cancelled) fetch to the readers of ``keys``."""
        for key in keys:
            fut = self.inflight.get(key)
            if fut is not None and not fut.done():
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:  # cancelled or interrupted: the fetch's readers see a cancel
                    fut.cancel()

    def count_failed_prefetches(self, keys: Iterable[ChunkKey]) -> None:
        """Count the prefetches among ``keys`` as failed."""
        if self.staging is not None:
            self.staging.stats.failed += sum(k in self.prefetching for k in keys)

    def settle(self, keys: Iterable[ChunkKey]) -> None:
        """End the fill of ``keys``: take them out of flight, whatever happened.

        Every fetch ends delivered or failed: a reader is never left waiting
        on a future nobody will resolve. A prefetch never staged gives its
        budget back.
        """
        staging = self.staging
        for key in keys:
            fut = self.inflight.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_exception(
                    ShortReadError(f"cachefs: the fetch of {key} ended empty")
                )
            if key in self.prefetching:
                self.prefetching.discard(key)
                if staging is not None:
                    staging.unreserve(key.length)
                    staging.forget(key)

    def landed(self, key: ChunkKey) -> None:
        """Take ``key``'s delivered fill out of flight (it is stored now)."""
        fut = self.inflight.get(key)
        if fut is not None and fut.done():
            del self.inflight[key]

    def after_fork(self) -> None:
        """Forget the parent's fills in a forked child."""
        self.inflight = {}
        self.prefetching = set()


class Arrivals:
    """The chunks of one ranged read, handed to their readers as they arrive.

    Parameters
    ----------
    fills
        The fills the chunks belong to.
    keys
        The chunks expected from the read (more may be added with
        :meth:`expect`).
    store
        Starts storing arrived chunks in the tiers below the reader and
        returns the task doing it, or ``None``. A chunk of a huge page or
        more is then stored as it arrives, not once the whole read has
        ended: a read of a 16 MiB file held its first 4 MiB chunk's landing
        buffer until the last byte (the pool could not hand it out again),
        and all its chunks reached the disk writer at once, after the
        transfer. Smaller chunks (plain buffers, which no pool reuses) are
        stored together when the read ends (:attr:`unstored`): one batch
        for the writer, not one per chunk.
    """

    def __init__(
        self,
        fills: Fills,
        keys: Iterable[ChunkKey] = (),
        store: Callable[[list[tuple[ChunkKey, memoryview]]], asyncio.Future[None]]
        | None = None,
    ) -> None:
        self._fills = fills
        self._store = store
        self.expected: dict[int, ChunkKey] = {k.start: k for k in keys}
        #: The chunks that arrived, in order (keys only: a view held here
        #: would keep its landing buffer from the next chunk until the read
        #: ends).
        self.got: list[ChunkKey] = []
        #: The stores started as chunks arrived (see ``store``).
        self.stores: list[asyncio.Future[None]] = []
        #: The chunks that arrived and were not stored yet.
        self.unstored: list[tuple[ChunkKey, memoryview]] = []

    def expect(self, key: ChunkKey) -> None:
        """Add ``key`` to the chunks this read delivers."""
        self.expected[key.start] = key

    def on_piece(self, offset: int, data: bytes | memoryview) -> None:
        """Deliver the piece at ``offset`` if it is an expected chunk."""
        key = self.expected.get(offset)
        if key is not None:
            view = memoryview(data).cast("B").toreadonly()
            self._fills.deliver(key, view)
            self.got.append(key)
            if self._store is not None and view.nbytes >= HUGE_PAGE:
                store = self._store([(key, view)])
                # Stored: its in-flight future (which holds the view) goes,
                # and later readers find the chunk in the tiers.
                store.add_done_callback(functools.partial(self._landed, key))
                self.stores.append(store)
            else:
                self.unstored.append((key, view))

    def _landed(self, key: ChunkKey, _: asyncio.Future[None]) -> None:
        self._fills.landed(key)

    def check_complete(self, path: str, start: int, stop: int) -> None:
        """Fail the read if it ended before every expected chunk arrived.

        Raises
        ------
        ShortReadError
            The stream ended early without saying why: the rest are failed
            rather than leave their readers waiting.
        """
        if len(self.got) < len(self.expected):
            raise ShortReadError(
                f"{path}: the origin ended the read of bytes {start}-{stop - 1} "
                f"after {len(self.got)} of {len(self.expected)} chunks"
            )
