"""The parts of a ``CacheFileSystem``, built from its ``CacheConfig``.

One place turns settings into objects: the target filesystem, the RAM tier,
the disk tiers, staging and the shared tier under one router; and one place
reads their counters back (``cache_stats``). The filesystem then only wires
fsspec's calls to these parts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fsspec.spec import AbstractFileSystem

from cachefs.bridge import build_target
from cachefs.config import CacheConfig
from cachefs.fetch import Fetcher
from cachefs.router import ChunkRouter
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.ram import RamTier
from cachefs.tiers.shared import SharedTier
from cachefs.tiers.staging import Staging

__all__ = ["build_router", "cache_stats", "make_target"]


def make_target(
    target_protocol: str | None,
    target_options: dict[str, Any] | None,
    fs: AbstractFileSystem | None,
    *,
    loop: asyncio.AbstractEventLoop | None,
) -> AbstractFileSystem:
    """Return the filesystem to cache: ``fs`` itself, or one built for it.

    Raises
    ------
    TypeError
        Unless exactly one of ``fs`` and ``target_protocol`` is given, or
        when an argument has the wrong type; the message names it.
    ValueError
        For a protocol fsspec does not know.
    """
    if (fs is None) == (target_protocol is None):
        raise TypeError("CacheFileSystem needs exactly one of fs= or target_protocol=")
    if fs is not None:
        if target_options:
            raise TypeError("target_options cannot be combined with fs=")
        if not isinstance(fs, AbstractFileSystem):
            raise TypeError(f"fs must be an fsspec filesystem, got {type(fs).__name__}")
        return fs
    if not isinstance(target_protocol, str):
        raise TypeError(
            f"target_protocol must be a str, got {type(target_protocol).__name__}"
        )
    if target_options is not None and not isinstance(target_options, dict):
        raise TypeError(
            f"target_options must be a dict, got {type(target_options).__name__}"
        )
    return build_target(
        target_protocol, target_options or {}, "target_protocol", loop=loop
    )


def _shared_tier(
    config: CacheConfig, loop: asyncio.AbstractEventLoop | None
) -> SharedTier | None:
    """Build the shared tier where ``shared=`` names one."""
    where = config.shared
    if where is None:
        return None
    fs = build_target(where.protocol, dict(where.options), "shared", loop=loop)
    root = str(fs._strip_protocol(where.root)).rstrip("/")
    if not root:
        raise ValueError(f"shared={where.spec!r} names no directory or prefix")
    return SharedTier(
        fs,
        root,
        config.compression,
        lease_time=config.shared_lease,
        timeout=config.request_timeout,  # a slow shared tier costs one timeout
    )


def build_router(
    config: CacheConfig,
    fetcher: Fetcher,
    *,
    loop: asyncio.AbstractEventLoop | None,
) -> ChunkRouter:
    """Build the tiers ``config`` asks for and the router over them.

    Parameters
    ----------
    config
        The validated settings.
    fetcher
        Reads from the origin for the router's misses.
    loop
        The cache's own event loop, for the shared tier's filesystem
        (``None`` for an asynchronous cache).
    """
    disks = []
    if config.disk_limit:
        disks = [
            DiskTier(
                d,
                config.disk_share,
                config.make_policy(),
                codec=config.compression,
                trust_cache_dir=config.trust_cache_dir,
                direct_writes=config.direct_writes,
                node_limit=config.disk_limit,
            )
            for d in config.cache_dirs
        ]
    ram = RamTier(config.ram_limit, config.make_policy()) if config.ram_limit else None
    staging = config.staging
    return ChunkRouter(
        ram,
        disks,
        fetcher,
        max_coalesce=config.max_coalesce,
        staging=Staging(staging.limit, staging.hold) if staging else None,
        shared=_shared_tier(config, loop),
    )


def cache_stats(router: ChunkRouter, fetcher: Fetcher) -> dict[str, Any]:
    """Return the counters of every tier, the origin and the router.

    See :meth:`cachefs.CacheFileSystem.cache_stats` for the keys.
    """
    out: dict[str, Any] = {}
    ram = router.ram
    if ram is not None:
        out["ram"] = {
            **ram.stats.as_dict(),
            "usage": ram.usage(),
            "limit": ram.limit,
            "chunks": len(ram),
        }
    if router.disks:
        disk: dict[str, Any] = {}
        for d in router.disks:
            for name, value in d.stats.as_dict().items():
                disk[name] = disk.get(name, 0) + value
        disk["usage"] = sum(d.usage() for d in router.disks)
        disk["limit"] = sum(d.limit for d in router.disks)
        disk["dirs"] = [str(d.root) for d in router.disks]
        out["disk"] = disk
    shared = router.shared
    if shared is not None:
        out["shared"] = {
            **shared.stats.as_dict(),
            "url": shared.fs.unstrip_protocol(shared.root),
        }
    if router.staging is not None:
        out["prefetch"] = router.staging.stats.as_dict()
    out["origin"] = fetcher.stats.as_dict()
    out["router"] = router.stats.as_dict()
    return out
