"""The per-process RAM tier: a dict of read-only memoryviews."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from cachefs.chunks import ChunkKey
from cachefs.policy import EvictionPolicy
from cachefs.tiers.base import TierStats

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["RamTier"]


class RamTier:
    """Chunks held in this process's memory under a byte budget.

    A hit is a dict lookup that returns the stored view itself: no copy.
    Views stay valid after eviction (the consumer's reference keeps the bytes
    alive); eviction only drops the tier's reference.

    Parameters
    ----------
    limit
        Byte budget (> 0).
    policy
        The eviction policy instance for this tier.
    """

    name = "ram"

    def __init__(self, limit: int, policy: EvictionPolicy) -> None:
        self.limit = limit
        self.policy = policy
        self.stats = TierStats()
        # Indexed by digest: a str's cached hash keeps the lookup in C.
        self._entries: dict[str, memoryview] = {}
        self._usage = 0
        self._lock = threading.Lock()

    def get(self, key: ChunkKey) -> memoryview | None:
        """Return the chunk's view, or ``None``."""
        digest = key.digest
        view = self._entries.get(digest)
        if view is None:
            self.stats.misses += 1
            return None
        self.policy.accessed(digest)
        self.stats.hits += 1
        self.stats.hit_bytes += view.nbytes
        return view

    def put(self, key: ChunkKey, data: Buffer) -> bool:
        """Store ``data`` (not copied) under ``key`` if the policy admits it."""
        view = memoryview(data).cast("B").toreadonly()
        size = view.nbytes
        digest = key.digest
        with self._lock:
            if digest in self._entries:
                return True
            if not self.policy.admit(size, self._usage, self.limit):
                self.stats.rejected += 1
                return False
            if self._usage + size > self.limit:
                for victim in self.policy.victims():
                    self._remove(victim, evicted=True)
                    if self._usage + size <= self.limit:
                        break
            if self._usage + size > self.limit:
                self.stats.rejected += 1
                return False
            self._entries[digest] = view
            self._usage += size
            self.policy.inserted(digest)
            self.stats.puts += 1
            self.stats.put_bytes += size
        return True

    def discard(self, key: ChunkKey) -> None:
        """Drop ``key`` if held."""
        with self._lock:
            self._remove(key.digest, evicted=False)

    def clear(self) -> None:
        """Drop every chunk."""
        with self._lock:
            for key in list(self._entries):
                self._remove(key, evicted=False)

    def after_fork(self) -> None:
        """Replace the lock, which another thread may have held at fork."""
        self._lock = threading.Lock()

    def usage(self) -> int:
        """Return the bytes held."""
        return self._usage

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, ChunkKey) and key.digest in self._entries

    def contains(self, key: ChunkKey) -> bool:
        """Return whether ``key`` is held (not counted as a lookup)."""
        return key.digest in self._entries

    def in_memory(self, key: ChunkKey) -> bool:
        """Whether ``key`` is held: every chunk here is served in place."""
        return key.digest in self._entries

    def _remove(self, digest: object, *, evicted: bool) -> None:
        view = self._entries.pop(digest, None)  # type: ignore[call-overload]
        self.policy.removed(digest)
        if view is None:
            return
        self._usage -= view.nbytes
        if evicted:
            self.stats.evictions += 1
            self.stats.evicted_bytes += view.nbytes
