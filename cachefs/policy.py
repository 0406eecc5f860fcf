"""Eviction and admission policies, chosen by name.

A policy decides two things for a tier: whether a new chunk is admitted, and
which chunks leave first when the tier is over budget. The RAM tier asks the
policy for victims one at a time (:meth:`EvictionPolicy.victims`); the disk
tier, whose entries are shared with other processes, hands the policy a
snapshot of what is on disk and asks for an order (:meth:`EvictionPolicy.rank`).

New policies subclass :class:`EvictionPolicy`, set a unique ``name`` and are
registered with :func:`register_policy`; ``policy="<name>"`` then selects them.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "DEFAULT_POLICY",
    "AdaptivePolicy",
    "DiskEntry",
    "EpochPolicy",
    "EvictionPolicy",
    "LRUPolicy",
    "available_policies",
    "make_policy",
    "register_policy",
]


@dataclass(frozen=True, slots=True)
class DiskEntry:
    """A chunk file as seen by a scan of a disk tier.

    Attributes
    ----------
    name
        The chunk's digest.
    size
        Bytes the file occupies (header included).
    last_access
        Last access time in seconds since the epoch (the file's mtime, which
        readers refresh).
    """

    name: str
    size: int
    last_access: float


class EvictionPolicy:
    """Base class of eviction policies; one instance serves one tier.

    Subclasses track the keys a tier holds through :meth:`inserted`,
    :meth:`accessed` and :meth:`removed`, and name victims in
    :meth:`victims`. The calls come under the tier's lock, except
    :meth:`accessed`, which hits call without a lock and must therefore
    tolerate keys that were removed meanwhile.
    """

    name: ClassVar[str] = ""

    def admit(self, size: int, usage: int, limit: int) -> bool:
        """Return whether a new chunk of ``size`` bytes may enter the tier.

        The default admits anything that fits the budget on its own; eviction
        then makes room.
        """
        return size <= limit

    def inserted(self, key: Hashable) -> None:
        """Record that ``key`` entered the tier."""

    def accessed(self, key: Hashable) -> None:
        """Record a hit on ``key``."""

    def removed(self, key: Hashable) -> None:
        """Record that ``key`` left the tier."""

    def victims(self) -> Iterator[Hashable]:
        """Yield keys in the order they should be evicted."""
        return iter(())

    def rank(self, entries: Sequence[DiskEntry]) -> list[DiskEntry]:
        """Order a disk tier's entries victims-first."""
        return sorted(entries, key=lambda e: e.last_access)


_REGISTRY: dict[str, type[EvictionPolicy]] = {}


def register_policy(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
    """Register a policy class under its ``name``; usable as a decorator.

    Raises
    ------
    ValueError
        If the class has no name or the name is taken by another class.
    """
    if not cls.name:
        raise ValueError(f"policy class {cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"policy name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available_policies() -> list[str]:
    """Return the names of all registered policies."""
    return sorted(_REGISTRY)


def make_policy(name: str | EvictionPolicy) -> EvictionPolicy:
    """Return a new policy instance for ``name``.

    Parameters
    ----------
    name
        A registered policy name, or an :class:`EvictionPolicy` instance
        (returned as is).

    Raises
    ------
    ValueError
        If no policy of that name is registered.
    """
    if isinstance(name, EvictionPolicy):
        return name
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"policy={name!r} is not a known policy; "
            f"choose one of {available_policies()}"
        )
    return cls()


@register_policy
class LRUPolicy(EvictionPolicy):
    """Least recently used: the chunk idle longest leaves first."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def inserted(self, key: Hashable) -> None:  # noqa: D102
        self._order[key] = None

    def accessed(self, key: Hashable) -> None:  # noqa: D102
        try:  # noqa: SIM105 - the hot path; suppress() costs more
            self._order.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile
            pass

    def removed(self, key: Hashable) -> None:  # noqa: D102
        self._order.pop(key, None)

    def victims(self) -> Iterator[Hashable]:  # noqa: D102
        # The tier removes each victim before asking for the next one.
        while self._order:
            try:
                oldest = next(iter(self._order))
            except RuntimeError:
                # A hit's move_to_end (unlocked, see the class docstring) ran
                # between iter() and next(): the order is intact, look again.
                continue
            yield oldest


@register_policy
class EpochPolicy(EvictionPolicy):
    """Keep what the tier holds once it is full; new chunks bypass it.

    Epoch-based training reads the whole dataset once per epoch in a new
    random order. When the dataset is larger than the tier, LRU evicts each
    chunk shortly before it is needed again and hits far below the bound
    ``tier size / dataset size`` (about 0.16 at a 50% cache on shuffled
    scans, 0 on sequential ones). Keeping a fixed subset reaches the bound in
    every epoch after the first. Choose it for datasets larger than the
    cache that are read whole each epoch; choose ``lru`` when the working
    set changes over time. Stale chunks leave only by explicit invalidation
    (a changed origin file, ``invalidate``, ``clear_cache``).
    """

    name = "epoch"

    def admit(self, size: int, usage: int, limit: int) -> bool:
        """Admit only what fits without evicting anything."""
        return usage + size <= limit

    def rank(self, entries: Sequence[DiskEntry]) -> list[DiskEntry]:
        """Order newest first, so a tier pushed over budget sheds its latest.

        Writers in several processes can race past admission; the long-held
        set stays.
        """
        return sorted(entries, key=lambda e: e.last_access, reverse=True)


@register_policy
class AdaptivePolicy(LRUPolicy):
    """Scan-resistant, recency-keeping: the default (``policy="adaptive"``).

    The disk tier ranks its scanned entries in three groups, victims first:

    1. *expired*: idle longer than ``horizon`` times the median reuse
       interval this policy has seen (and at least ``min_expiry`` seconds),
       oldest first. A working set that moved
       on leaves through here, as under LRU.
    2. *unproven*: not re-read since they entered, newest first. On cyclic
       epochs over a data set larger than the tier, this keeps the set the
       tier already holds (as :class:`EpochPolicy` does) instead of evicting
       each chunk just before its next read (as LRU does), so hit rates reach
       the bound ``tier size / data set``.
    3. *proven*: re-read since they entered, least recently used first.

    Until a first reuse has been seen there is no horizon, so nothing
    expires: a first epoch keeps what it cached first.

    The state is derived from what every scan sees, the chunk files' mtimes
    (which readers refresh, in any process): an entry whose mtime moved
    between two scans was re-read, and the move is one reuse interval.
    Each process rebuilds it from its own scans, so processes sharing a
    directory need no shared policy file; the cost is one small record per
    chunk file held in the memory of each process that evicts.

    The RAM tier, per process and small, is LRU.
    """

    name = "adaptive"

    #: Expire an entry idle longer than this many median reuse intervals.
    horizon: ClassVar[float] = 3.0
    #: Reuse intervals kept for the median (the latest ones).
    samples: ClassVar[int] = 256
    #: Reuses needed before anything expires.
    min_samples: ClassVar[int] = 16
    #: Nothing expires sooner (seconds): a reader refreshes a chunk's mtime
    #: only every few seconds, so shorter idle times are not measured.
    min_expiry: ClassVar[float] = 30.0
    #: The fraction of its budget a disk tier evicts down to (its watermark).
    watermark: ClassVar[float] = 0.95

    def __init__(self) -> None:
        super().__init__()
        # name -> (mtime at the last scan, re-read since it entered)
        self._seen: dict[str, tuple[float, bool]] = {}
        self._reuse: deque[float] = deque(maxlen=self.samples)
        self._limit: int | None = None

    def admit(self, size: int, usage: int, limit: int) -> bool:
        """Admit what fits the budget; note the budget for :meth:`rank`."""
        self._limit = limit
        return size <= limit

    def expiry(self) -> float | None:
        """Return the idle time (seconds) past which an entry expires.

        ``None`` until :attr:`min_samples` reuse intervals have been seen.
        """
        if len(self._reuse) < self.min_samples:
            return None
        ordered = sorted(self._reuse)
        return max(self.horizon * ordered[len(ordered) // 2], self.min_expiry)

    def rank(
        self, entries: Sequence[DiskEntry], now: float | None = None
    ) -> list[DiskEntry]:
        """Order ``entries`` victims-first: expired, unproven, proven.

        Parameters
        ----------
        entries
            The tier's chunk files as one scan saw them.
        now
            The time the scan ran (seconds since the epoch); the current
            time by default.
        """
        now = time.time() if now is None else now
        seen: dict[str, tuple[float, bool]] = {}
        for entry in entries:
            before = self._seen.get(entry.name)
            proven = False
            if before is not None:
                last, proven = before
                if entry.last_access > last:
                    self._reuse.append(entry.last_access - last)
                    proven = True
            seen[entry.name] = (entry.last_access, proven)
        # Entries gone from the scan (evicted, invalidated) are forgotten.
        self._seen = seen
        limit = self.expiry()
        expired: list[DiskEntry] = []
        unproven: list[DiskEntry] = []
        proven_: list[DiskEntry] = []
        for entry in entries:
            if limit is not None and now - entry.last_access > limit:
                expired.append(entry)
            elif seen[entry.name][1]:
                proven_.append(entry)
            else:
                unproven.append(entry)
        expired.sort(key=lambda e: e.last_access)
        unproven.sort(key=lambda e: e.last_access, reverse=True)
        proven_.sort(key=lambda e: e.last_access)
        order = expired + unproven + proven_
        self._forget_victims(order)
        return order

    def _forget_victims(self, order: list[DiskEntry]) -> None:
        """Forget the entries the tier is about to evict.

        A chunk fetched again after its eviction is a new file with a new
        mtime; remembered, it would pass for a re-read (proven) one. The tier
        evicts the front of ``order`` down to its watermark.
        """
        if self._limit is None:
            return
        excess = sum(e.size for e in order) - int(self._limit * self.watermark)
        for entry in order:
            if excess <= 0:
                break
            self._seen.pop(entry.name, None)
            excess -= entry.size


#: The policy a cache uses unless told otherwise.
DEFAULT_POLICY = AdaptivePolicy.name
