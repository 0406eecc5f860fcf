"""A set of disk tiers, one per cache directory, that is itself one tier.

Chunks are spread over the directories by rendezvous hashing: each chunk
goes to the directory whose identity hashes highest with the chunk's digest,
so every process on the node places a chunk in the same directory, and
adding or removing a directory moves only the chunks it gains or loses.
As mountpoint-s3's multilevel cache is itself a data cache, a
:class:`DiskSet` is a :class:`~cachefs.tiers.base.NodeTier`: the router sees
one disk tier, with its cross-process locks, however many directories back
it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cachefs.chunks import ChunkKey
from cachefs.tiers.base import TierStats
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.stripes import SharedStripe

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["DiskSet"]

# Placements remembered at most; the cache is dropped whole past it.
_PLACEMENT_CACHE = 1 << 20


class DiskSet:
    """Disk tiers behind one tier, chunks placed by rendezvous hashing.

    Parameters
    ----------
    tiers
        The disk tiers, one per cache directory (at least one). Their order
        does not change where a chunk goes.
    """

    name = "disk"

    def __init__(self, tiers: Sequence[DiskTier]) -> None:
        if not tiers:
            raise ValueError("a DiskSet needs at least one disk tier")
        #: The member tiers, in the order given.
        self.tiers = list(tiers)
        self._ids = [
            hashlib.blake2b(str(t.root).encode(), digest_size=8).digest()
            for t in self.tiers
        ]
        self._placement: dict[str, DiskTier] = {}

    @classmethod
    def of(cls, tiers: Sequence[DiskTier]) -> DiskSet | None:
        """Return a set of ``tiers``, or ``None`` when there are none."""
        return cls(tiers) if tiers else None

    # -- placement -----------------------------------------------------------

    def tier_for(self, key: ChunkKey) -> DiskTier:
        """Return the member tier that holds ``key`` (rendezvous hashing)."""
        tiers = self.tiers
        if len(tiers) == 1:
            return tiers[0]
        digest = key.digest
        placed = self._placement.get(digest)
        if placed is None:
            raw = bytes.fromhex(digest)
            scores = [
                hashlib.blake2b(raw + ident, digest_size=8).digest()
                for ident in self._ids
            ]
            placed = tiers[scores.index(max(scores))]
            if len(self._placement) > _PLACEMENT_CACHE:
                self._placement.clear()
            self._placement[digest] = placed
        return placed

    # -- the tier ------------------------------------------------------------

    @property
    def limit(self) -> int:
        """The byte budgets of the members, together."""
        return sum(t.limit for t in self.tiers)

    @property
    def stats(self) -> TierStats:
        """The members' counters, summed (a fresh snapshot)."""
        total = TierStats()
        for tier in self.tiers:
            for name, value in tier.stats.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return the chunk from its directory, or ``None``."""
        return self.tier_for(key).get(key)

    def put(self, key: ChunkKey, data: Buffer) -> bool:
        """Store the chunk in its directory; return whether it was stored."""
        return self.tier_for(key).put(key, data)

    def contains(self, key: ChunkKey) -> bool:
        """Return whether the chunk's directory has a file for it."""
        return self.tier_for(key).contains(key)

    def in_memory(self, key: ChunkKey) -> bool:
        """Whether this process has the chunk mapped (no system call)."""
        return self.tier_for(key).in_memory(key)

    def discard(self, key: ChunkKey) -> None:
        """Remove the chunk's file if present."""
        self.tier_for(key).discard(key)

    def clear(self) -> None:
        """Remove every chunk of every directory."""
        for tier in self.tiers:
            tier.clear()

    def usage(self) -> int:
        """Return the node-wide bytes the directories hold."""
        return sum(t.usage() for t in self.tiers)

    def __len__(self) -> int:
        return sum(len(t) for t in self.tiers)

    def after_fork(self) -> None:
        """Renew the members' thread locks and forget placements."""
        self._placement = {}
        for tier in self.tiers:
            tier.after_fork()

    # -- cross-process locks -------------------------------------------------

    def stripe_lock(self, key: ChunkKey) -> SharedStripe:
        """Return the lock of ``key``'s stripe in the chunk's directory."""
        return self.tier_for(key).stripe_lock(key)

    def file_lock(self, name: str) -> SharedStripe:
        """Return the lock for learning a file's version (first directory).

        One directory for every file, so every process takes the same lock.
        """
        return self.tiers[0].file_lock(name)
