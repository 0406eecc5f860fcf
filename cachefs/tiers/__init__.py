"""Cache tiers behind small protocols: RAM per process, disk per node, shared.

:mod:`cachefs.tiers.base` holds the protocols (:class:`Tier`,
:class:`NodeTier`, :class:`AsyncTier`); each tier kind has its own module.
"""

from cachefs.tiers.base import AsyncTier, NodeTier, Tier, TierStats
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.diskset import DiskSet
from cachefs.tiers.ram import RamTier

__all__ = [
    "AsyncTier",
    "DiskSet",
    "DiskTier",
    "NodeTier",
    "RamTier",
    "Tier",
    "TierStats",
]
