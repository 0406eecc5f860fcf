"""``cat_ranges``: many byte ranges of many files, one version per file.

Each file is resolved once, then every chunk of every range is asked of the
router together, so adjacent misses coalesce across ranges. A failure is
reported per range, never as a mix of versions: the call reads each file at
the version it resolved first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from cachefs.chunks import ChunkKey, assemble, clip, span_keys
from cachefs.errors import StaleVersionError
from cachefs.router import ChunkRouter
from cachefs.versions import VersionResolver

__all__ = ["read_ranges"]


async def read_ranges(
    resolver: VersionResolver,
    router: ChunkRouter,
    paths: Sequence[str],
    starts: Sequence[int | None],
    ends: Sequence[int | None],
    *,
    on_error: str,
    invalidate: Callable[[str], None],
) -> list[bytes | Exception]:
    """Return the bytes of each ``[start, end)`` of each target path.

    Parameters
    ----------
    resolver, router
        Where versions and chunks come from.
    paths, starts, ends
        Target paths and their ranges (``None``: the file's start or end),
        of equal length.
    on_error
        ``"raise"`` re-raises the first failed range's exception;
        ``"return"`` puts it in that range's place.
    invalidate
        Called with a path whose version went stale, so that the next call
        learns the new one.
    """
    # Resolve each file once, then ask the router for every chunk of
    # every range together, so adjacent misses coalesce across ranges.
    unique = list(dict.fromkeys(paths))
    found = await asyncio.gather(
        *(resolver.version(p) for p in unique), return_exceptions=True
    )
    versions = dict(zip(unique, found, strict=True))
    wanted: dict[ChunkKey, None] = {}
    plans: list[tuple[list[ChunkKey], int, int] | BaseException] = []
    for path, start, end in zip(paths, starts, ends, strict=True):
        version = versions[path]
        if isinstance(version, BaseException):
            plans.append(version)
            continue
        lo, hi = clip(version.size, start, end)
        keys = span_keys(version, resolver.chunk_size, lo, hi) if hi > lo else []
        wanted.update(dict.fromkeys(keys))
        plans.append((keys, lo, hi))
    fetched: dict[ChunkKey, memoryview] = {}
    results: list[Any]
    try:
        keys = list(wanted)
        views = await router.get_chunks(keys) if keys else []
        fetched = dict(zip(keys, views, strict=True))
    except Exception:
        # Some chunk failed: read range by range, so that each range
        # reports its own outcome, all against the versions resolved
        # above (one call, one version per file: never re-resolved here).
        outcomes = await asyncio.gather(
            *(
                router.get_chunks(plan[0])
                for plan in plans
                if not isinstance(plan, BaseException)
            ),
            return_exceptions=True,
        )
        got = iter(outcomes)
        results = []
        for path, plan in zip(paths, plans, strict=True):
            if isinstance(plan, BaseException):
                results.append(plan)
                continue
            outcome = next(got)
            if isinstance(outcome, StaleVersionError):
                invalidate(path)  # the next call learns the new one
            results.append(
                outcome
                if isinstance(outcome, BaseException)
                else assemble(plan[0], outcome, *plan[1:])
            )
    else:
        results = [
            plan
            if isinstance(plan, BaseException)
            else assemble(plan[0], [fetched[k] for k in plan[0]], *plan[1:])
            for plan in plans
        ]
    out: list[bytes | Exception] = []
    for r in results:
        failed = isinstance(r, BaseException)
        if failed and (on_error == "raise" or not isinstance(r, Exception)):
            raise r
        out.append(r)
    return out
