"""``cachefs evict``, ``clear`` and ``verify``: remove from and repair a cache.

Removal goes through :class:`~cachefs.tiers.disk.DiskTier` and
:class:`~cachefs.metadata.MetadataCache`, which keep the usage counter right
and are safe while other processes read: a removed chunk is fetched again,
never seen partial. Nothing is read, listed or removed through a symlink: a
symlink found in the layout is reported (and ``verify --repair`` removes the
link, never its target).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from cachefs.chunks import ChunkKey
from cachefs.cli.format import (
    EXIT_FAILED,
    EXIT_OK,
    Progress,
    fmt_bytes,
    report,
)
from cachefs.cli.inspect import (
    CacheView,
    FileStatus,
    UrlPattern,
    display_url,
    open_view,
)
from cachefs.cli.settings import Settings
from cachefs.listings import ListingCache
from cachefs.metadata import MetadataCache
from cachefs.policy import LRUPolicy
from cachefs.tiers import layout
from cachefs.tiers.disk import DiskTier

__all__ = ["clear_dirs", "cmd_clear", "cmd_evict", "cmd_verify", "evict_files"]

# A maintenance command must not trigger an eviction of its own.
_NO_LIMIT = sys.maxsize


def _tier(root: Path, trust: bool) -> DiskTier:
    return DiskTier(root, _NO_LIMIT, LRUPolicy(), trust_cache_dir=trust)


def evict_files(
    view: CacheView,
    statuses: Sequence[FileStatus],
    on_file: Callable[[FileStatus], None] | None = None,
) -> tuple[int, int]:
    """Remove the chunks and records of ``statuses``' files.

    Chunks go first, then the record, so an interrupted eviction leaves a
    record that ``ls`` still shows. Readers in other processes fetch removed
    chunks again.

    Returns
    -------
    tuple of int
        Chunk files and bytes removed.
    """
    tiers = [_tier(root, view.trust_cache_dir) for root in view.roots]
    chunks = view.chunks()
    removed = nbytes = 0
    meta = (
        MetadataCache(None, view.dirs[0] / "meta", trust_cache_dir=view.trust_cache_dir)
        if view.present[0]
        else None
    )
    for status in statuses:
        version = status.record.version
        for key in view.keys(version):
            cf = chunks.pop(key.digest, None)
            for tier in tiers:
                tier.discard(key)
            if cf is not None:
                removed += 1
                nbytes += cf.size
        if meta is not None:
            meta.drop(version.protocol, version.path)
        if on_file is not None:
            on_file(status)
    return removed, nbytes


def clear_dirs(view: CacheView) -> tuple[int, int, int]:
    """Remove every chunk file and record; return chunks, bytes, records.

    Strays under ``chunks/`` go too. A symlink in place of one of the
    layout's directories is removed itself; nothing is deleted through it.
    """
    chunks = view.chunks()
    nbytes = sum(cf.size for cf in chunks.values())
    records = 0
    for root in view.roots:
        for path, _, _ in layout.layout_strays(root):
            if path.parent == root:  # a symlinked subdirectory
                layout.remove_stray(root, path)
    for root in view.roots:
        _tier(root, view.trust_cache_dir).clear()
        good, bad = MetadataCache.stored_records(root / "meta", trust=True, misses=True)
        for path in [r.file for r in good] + [p for p, _ in bad]:
            records += layout.remove_stray(root, path)
        listings = root / "meta" / "listings"
        if listings.is_dir() and not listings.is_symlink():
            records += ListingCache(
                None, listings, trust_cache_dir=view.trust_cache_dir
            ).clear()
    view.forget()
    return len(chunks), nbytes, records


def cmd_evict(
    settings: Settings, args: Any, out: TextIO, log: Callable[[str], None]
) -> int:
    """``cachefs evict``."""
    patterns = [UrlPattern.parse(u) for u in args.urls]
    view = open_view(settings, log)
    statuses = view.files(patterns)
    for p in patterns:
        if not any(p.matches(s.record.version) for s in statuses):
            log(f"nothing cached under {p.text}")
    removed, nbytes = evict_files(view, statuses)
    doc = {"files": [s.url for s in statuses], "chunks": removed, "bytes": nbytes}
    text = f"evicted {len(statuses)} files: {removed} chunks, {fmt_bytes(nbytes)}"
    return report(args, out, doc, text)


def cmd_clear(
    settings: Settings, args: Any, out: TextIO, log: Callable[[str], None]
) -> int:
    """``cachefs clear``."""
    chunks, nbytes, records = clear_dirs(open_view(settings, log))
    doc = {"chunks": chunks, "bytes": nbytes, "records": records}
    text = f"cleared {chunks} chunks ({fmt_bytes(nbytes)}) and {records} records"
    return report(args, out, doc, text)


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def cmd_verify(
    settings: Settings, args: Any, out: TextIO, log: Callable[[str], None]
) -> int:
    """``cachefs verify``: check the layout, every chunk file and record."""
    view = open_view(settings, log)
    trust = settings.trust_cache_dir
    damaged: list[dict[str, Any]] = []

    def found(
        path: Path, reason: str, removed: bool, key: ChunkKey | None = None
    ) -> None:
        entry: dict[str, Any] = {"path": str(path), "reason": reason}
        where = ""
        if key is not None:
            # Name what the chunk holds: the origin file and its byte range.
            url = display_url(key.version.protocol, key.version.path)
            entry["chunk_of"] = {"url": url, "start": key.start, "stop": key.stop}
            where = f" (bytes {key.start}-{key.stop - 1} of {url})"
        entry["removed"] = removed
        damaged.append(entry)
        log(f"damaged: {path}{where} {reason}" + (" (removed)" if removed else ""))

    # The layout first: a symlinked directory is unlinked, never followed.
    for root in view.roots:
        for path, reason, _ in layout.layout_strays(root):
            if args.repair:
                layout.remove_stray(root, path)
            found(path, reason, args.repair and not _exists(path))
    view.forget()
    records, bad_records = view.records()
    owners = view.chunk_keys(records)
    files = [cf for root in view.dirs for cf in view.files_in(root)]
    total = sum(cf.size for cf in files)
    progress = Progress(
        sys.stderr, "verify", total, enabled=not args.quiet and not args.json
    )
    tiers = {root: _tier(root, trust) for root in view.roots} if args.repair else {}
    checked = 0
    for cf in files:
        key = owners.get(cf.digest)
        expected = key.length if key is not None else None
        why = layout.check_chunk_file(cf.path, expected, trust=trust)
        checked += cf.size
        progress.update(checked, checked)
        if why is None:
            continue
        if args.repair:
            tiers[cf.path.parents[2]].remove_path(cf.path)
        found(cf.path, why, args.repair and not _exists(cf.path), key)
    if files:
        progress.close(total, total)
    for path, reason in bad_records:
        if args.repair:
            layout.remove_stray(view.dirs[0], path)
        found(path, reason, args.repair and not _exists(path))
    _check_counters(view, args.repair, tiers, found)
    left = [d for d in damaged if not d["removed"]]
    if args.json:
        doc = {
            "checked": len(files),
            "bytes": total,
            "damaged": damaged,
            "ok": not left,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    elif not args.quiet:
        out.write(
            f"verified {len(files)} chunk files ({fmt_bytes(total)}): "
            f"{len(damaged)} damaged"
            + (f", {len(damaged) - len(left)} repaired" if args.repair else "")
            + "\n"
        )
    return EXIT_OK if not left else EXIT_FAILED


def _check_counters(
    view: CacheView,
    repair: bool,
    tiers: dict[Path, DiskTier],
    found: Callable[[Path, str, bool], None],
) -> None:
    """Check that each usage counter equals what the chunk files hold."""
    view.forget()
    for root in view.roots:
        counter = layout.usage_counter(root)
        if repair:
            before, after = tiers[root].recount()
            if before != after:
                found(
                    root / "usage",
                    f"counted {before} bytes, the chunk files hold {after}",
                    True,
                )
        elif counter is not None:
            truth = view.counted_bytes(root)
            if counter != truth:
                found(
                    root / "usage",
                    f"counts {counter} bytes, the chunk files hold {truth}",
                    False,
                )
