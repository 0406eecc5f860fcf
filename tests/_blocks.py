"""Chunk-sized test data and a warmed disk cache, for the block tests.

Shared by ``test_fresh_reads`` and ``test_record_blocks``: both read a warm
file in a new process and damage single blocks of its chunk records.
"""

from __future__ import annotations

from pathlib import Path

from cachefs import CacheFileSystem
from cachefs.tiers.record import block_size, payload_offset

__all__ = ["BLOCK", "CS", "blob", "payload_at", "warm"]

MiB = 2**20
CS = 4 * MiB
BLOCK = block_size(CS)  # 16 KiB


def payload_at(path: Path) -> int:
    """Return where the payload of the chunk record at ``path`` starts.

    Format 5 records put it right after the header, format 6 (direct
    writes) at the next 4 KiB boundary.
    """
    with open(path, "rb") as f:
        return payload_offset(f.read(8192))


def blob(seed: int, size: int = CS) -> bytes:
    """Return ``size`` bytes that differ per ``seed`` (cheap to build)."""
    piece = bytes((seed * 7 + i) % 251 for i in range(4096))
    return (piece * (size // 4096 + 1))[:size]


def warm(tmp_path: Path, url: str, data: bytes) -> dict[str, object]:
    """Read ``url`` (which holds ``data``) into a disk cache under ``tmp_path``.

    Returns the options that open that cache again (no RAM tier, so every
    read goes to the disk tier).
    """
    opts: dict[str, object] = {
        "target_protocol": "http",
        "cache_dir": str(tmp_path / "c"),
        "chunk_size": CS,
        "ram_limit": 0,
        "skip_instance_cache": True,
    }
    fs = CacheFileSystem(**opts)
    assert fs.cat_file(url) == data
    fs.wait_idle()
    fs.close()
    return opts
