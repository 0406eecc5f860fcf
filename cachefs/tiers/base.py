"""The small protocols every cache tier implements.

A tier stores immutable chunks by :class:`~cachefs.chunks.ChunkKey`. A miss is
``None``, never an exception: only the fsspec face raises
``FileNotFoundError``.

- :class:`Tier`: read in the caller's thread (RAM, disk, a set of disks).
- :class:`NodeTier`: a :class:`Tier` the processes of one node share, with
  the :class:`CrossProcessLocks` that make each chunk fetched once per node.
- :class:`AsyncTier`: read on the event loop (the cluster-wide shared tier),
  with its own cross-node single flight (:meth:`AsyncTier.fill_once`).

The router reaches its tiers through these protocols only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cachefs.chunks import ChunkKey

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "AsyncTier",
    "Counters",
    "CrossProcessLocks",
    "NodeTier",
    "ProcessLock",
    "Tier",
    "TierStats",
]


@dataclass(slots=True)
class TierStats:
    """Counters of one tier.

    Attributes
    ----------
    hits, misses
        Lookups that found, or did not find, the chunk.
    hit_bytes
        Bytes of the chunks returned by hits.
    puts, put_bytes
        Chunks (and their bytes) stored.
    rejected
        Chunks the admission policy turned away, or that could not be stored.
    evictions, evicted_bytes
        Chunks (and bytes) removed to keep the budget.
    checksum_failures
        Stored chunks found damaged: dropped, never served.
    """

    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0
    puts: int = 0
    put_bytes: int = 0
    rejected: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    checksum_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return asdict(self)


class Counters(Protocol):
    """A tier's counters, as the face reports them."""

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        ...


@runtime_checkable
class Tier(Protocol):
    """What the router needs from a tier read in the caller's thread."""

    @property
    def name(self) -> str:
        """The tier's kind, as stats name it (``"ram"``, ``"disk"``)."""
        ...

    @property
    def limit(self) -> int:
        """The tier's byte budget."""
        ...

    @property
    def stats(self) -> TierStats:
        """The tier's counters."""
        ...

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return a read-only view of the chunk, or ``None`` on a miss."""
        ...

    def put(self, key: ChunkKey, data: Buffer) -> bool:
        """Store the chunk; return whether it was admitted."""
        ...

    def contains(self, key: ChunkKey) -> bool:
        """Return whether the tier holds the chunk (not verified, not counted)."""
        ...

    def in_memory(self, key: ChunkKey) -> bool:
        """Whether a get of the chunk is served from this process's memory.

        Such a chunk is served in place, with no system call and no copy:
        copying it up to a faster tier would gain nothing.
        """
        ...

    def discard(self, key: ChunkKey) -> None:
        """Remove the chunk if present."""
        ...

    def clear(self) -> None:
        """Remove every chunk."""
        ...

    def usage(self) -> int:
        """Return the bytes the tier holds now."""
        ...

    def __len__(self) -> int:
        """Return the number of chunks the tier holds."""
        ...

    def after_fork(self) -> None:
        """Make the tier usable in a forked child (fresh thread locks)."""
        ...


@runtime_checkable
class ProcessLock(Protocol):
    """An exclusive lock that holds across the processes of a node."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; return whether it was taken."""
        ...

    def release(self) -> None:
        """Release the lock (idempotent)."""
        ...

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        ...


@runtime_checkable
class CrossProcessLocks(Protocol):
    """Locks that make each chunk (and file version) fetched once per node."""

    def stripe_lock(self, key: ChunkKey) -> ProcessLock:
        """Return the (unacquired) lock a fetch of ``key`` holds."""
        ...

    def file_lock(self, name: str) -> ProcessLock:
        """Return the (unacquired) lock held while learning a file's version."""
        ...


@runtime_checkable
class NodeTier(Tier, CrossProcessLocks, Protocol):
    """A :class:`Tier` shared by the processes of one node, with their locks."""

    def tier_for(self, key: ChunkKey) -> NodeTier:
        """Return the tier that stores ``key``: a member of a composite, or self.

        A hit then costs one placement, however many calls it makes.
        """
        ...


#: Fetches chunks from the origin (delivering and publishing them).
FetchChunks = Callable[[list[ChunkKey]], Awaitable[None]]
#: Takes a chunk another reader of the tier published.
AcceptChunk = Callable[[ChunkKey, memoryview], Awaitable[None]]


@runtime_checkable
class AsyncTier(Protocol):
    """What the router needs from a tier read on the event loop."""

    @property
    def name(self) -> str:
        """The tier's kind, as stats name it (``"shared"``)."""
        ...

    @property
    def stats(self) -> Counters:
        """The tier's counters."""
        ...

    async def get(self, key: ChunkKey) -> memoryview | None:
        """Return the verified chunk, or ``None`` (missing, damaged, error)."""
        ...

    async def put(self, key: ChunkKey, chunk: memoryview) -> None:
        """Publish the chunk; failures are counted, never raised."""
        ...

    async def clear(self) -> None:
        """Remove every chunk."""
        ...

    async def fill_once(
        self, keys: list[ChunkKey], fetch: FetchChunks, accept: AcceptChunk
    ) -> None:
        """Fetch ``keys`` (missing here) once across every reader of the tier.

        Calls ``fetch`` with the keys this process is to fetch, and
        ``accept`` with those another reader published meanwhile. A tier
        with no cross-reader exclusion calls ``fetch(keys)``.
        """
        ...
