"""Cache tiers behind one small protocol: RAM per process, disk per node."""

from cachefs.tiers.base import Tier, TierStats
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.ram import RamTier

__all__ = ["DiskTier", "RamTier", "Tier", "TierStats"]
