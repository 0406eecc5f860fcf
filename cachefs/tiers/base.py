"""The small protocol every cache tier implements.

A tier stores immutable chunks by :class:`~cachefs.chunks.ChunkKey`. A miss is
``None``, never an exception: only the fsspec face raises
``FileNotFoundError``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cachefs.chunks import ChunkKey

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["Tier", "TierStats"]


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


@runtime_checkable
class Tier(Protocol):
    """What the router needs from a tier."""

    name: str
    limit: int
    stats: TierStats

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return a read-only view of the chunk, or ``None`` on a miss."""
        ...

    def put(self, key: ChunkKey, data: Buffer) -> bool:
        """Store the chunk; return whether it was admitted."""
        ...

    def discard(self, key: ChunkKey) -> None:
        """Remove the chunk if present."""
        ...

    def usage(self) -> int:
        """Return the bytes the tier holds now."""
        ...

    def __len__(self) -> int:
        """Return the number of chunks the tier holds."""
        ...
