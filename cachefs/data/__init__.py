"""Shard readers and data-loader datasets over the cache."""

from cachefs.data.world import World

__all__ = ["World"]
