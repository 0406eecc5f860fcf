"""numcodecs compression in the disk tier, recorded per chunk."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest

from cachefs import CacheFileSystem

MiB = 2**20


def tokens(n: int) -> bytes:
    """Compressible data: small token ids stored as uint32."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, n // 4, dtype=np.uint32).tobytes()


def build(tmp_path, **kwargs) -> CacheFileSystem:
    options = {
        "target_protocol": "file",
        "cache_dir": str(tmp_path / "cache"),
        "chunk_size": MiB,
        "ram_limit": 0,
        "skip_instance_cache": True,
    }
    options.update(kwargs)
    return CacheFileSystem(**options)


def chunk_bytes(tmp_path) -> int:
    files = (tmp_path / "cache" / "chunks").rglob("*")
    return sum(p.stat().st_size for p in files if p.is_file())


@pytest.mark.parametrize("compression", ["zstd", "lz4", {"id": "zlib", "level": 1}])
def test_compressible_chunks_shrink_and_read_back(tmp_path, compression):
    src = tmp_path / "tokens.bin"
    data = tokens(3 * MiB + 100)
    src.write_bytes(data)
    fs = build(tmp_path, compression=compression)
    assert fs.cat_file(str(src)) == data
    fs.wait_idle()
    stored = chunk_bytes(tmp_path)
    assert stored < 0.95 * len(data)
    # A fresh instance (no mappings) reads the compressed chunks from disk.
    again = build(tmp_path, compression=compression)
    assert again.cat_file(str(src), 10, 2 * MiB + 10) == data[10 : 2 * MiB + 10]
    assert again.cache_stats()["disk"]["hits"] >= 3
    assert again.cache_stats()["origin"]["bytes"] == 0


def test_incompressible_chunks_are_stored_raw(tmp_path):
    src = tmp_path / "noise.bin"
    data = np.random.default_rng(2).bytes(2 * MiB)
    src.write_bytes(data)
    fs = build(tmp_path, compression="zstd")
    assert fs.cat_file(str(src)) == data
    fs.wait_idle()
    assert chunk_bytes(tmp_path) < len(data) + 4096  # headers only on top


def test_a_cache_reads_under_another_setting(tmp_path):
    src = tmp_path / "tokens.bin"
    data = tokens(2 * MiB)
    src.write_bytes(data)
    writer = build(tmp_path, compression="zstd")
    writer.cat_file(str(src))
    writer.wait_idle()
    for other in (None, "lz4", numcodecs.Zlib(level=3)):
        fs = build(tmp_path, compression=other)
        assert fs.cat_file(str(src)) == data
        assert fs.cache_stats()["origin"]["bytes"] == 0


def test_damaged_compressed_chunk_is_dropped_and_refetched(tmp_path):
    src = tmp_path / "tokens.bin"
    data = tokens(MiB)
    src.write_bytes(data)
    fs = build(tmp_path, compression="zstd")
    fs.cat_file(str(src))
    fs.wait_idle()
    (chunk,) = [p for p in (tmp_path / "cache" / "chunks").rglob("*") if p.is_file()]
    raw = bytearray(chunk.read_bytes())
    raw[-10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    fresh = build(tmp_path, compression="zstd")
    assert fresh.cat_file(str(src)) == data
    stats = fresh.cache_stats()
    assert stats["disk"]["checksum_failures"] == 1
    assert stats["origin"]["bytes"] == len(data)


def test_bad_compression_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match="compression='brotli-ish'"):
        build(tmp_path, compression="brotli-ish")
    with pytest.raises(ValueError, match="compression="):
        build(tmp_path, compression={"id": "no-such-codec"})
