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

from collections import OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
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
            yield next(iter(self._order))


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
