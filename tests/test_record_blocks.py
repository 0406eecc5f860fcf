"""Chunk records with a check per block (format 5: XXH3; 4: CRC32C), issue 20.

A reader verifies the blocks it reads and no others, and a big first read
checks the whole payload's check in one call; a damaged block is
found when read, and the chunk dropped and fetched again; records of the
previous formats (4: the same layout with CRC32C checks; 2: one CRC32C
over everything) are still read and verified, and older ones dropped
cleanly. Publishing keeps its directories
open: the opens are counted per shard, not per chunk.
"""

from __future__ import annotations

import struct
from pathlib import Path

import crc32c
import pytest

from cachefs import CacheFileSystem
from cachefs.chunks import FileVersion
from cachefs.policy import make_policy
from cachefs.testing import HTTPOrigin
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.record import CHUNK_HEADER, block_size, record_overhead
from tests._blocks import BLOCK, CS, blob, payload_at, warm


def tier_at(root: Path) -> DiskTier:
    return DiskTier(root, 1 << 34, make_policy("lru"))


def encode_v2(data: bytes, digest: str) -> bytes:
    """The format 2 encoder, as it was: one CRC32C over key, header, payload."""
    head = struct.Struct("<4sBBHIQQ4x")
    fields = [b"CFSC", 2, 0, 0, 0, len(data), len(data)]
    crc = crc32c.crc32c(head.pack(*fields), crc32c.crc32c(bytes.fromhex(digest)))
    fields[4] = crc32c.crc32c(data, crc32c.crc32c(b"", crc))
    return head.pack(*fields) + data


def encode_v4(data: bytes, digest: str) -> bytes:
    """The format 4 encoder, as it was: CRC32C per block and of the whole."""
    size = block_size(len(data))
    crcs = [crc32c.crc32c(data[at : at + size]) for at in range(0, len(data), size)]
    crcs.append(crc32c.crc32c(data))
    table = struct.pack(f"<{len(crcs)}I", *crcs)
    fields = [b"CFSC", 4, 0, 0, 0, len(data), len(data), size // 4096]
    key = crc32c.crc32c(bytes.fromhex(digest))
    fields[4] = crc32c.crc32c(
        b"", crc32c.crc32c(CHUNK_HEADER.pack(*fields) + table, key)
    )
    return CHUNK_HEADER.pack(*fields) + table + data


def flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


KEY = FileVersion("http", "/blocks.bin", 8 * CS, "t").key(CS, 0)


def test_a_random_read_verifies_only_the_blocks_it_touches(tmp_path):
    tier = tier_at(tmp_path / "c")
    data = blob(1)
    assert tier.put(KEY, data)
    fresh = tier_at(tmp_path / "c")  # a new process: nothing verified yet
    lo = 37 * BLOCK + 100
    found = fresh.get_span(KEY, lo, lo + 4096)
    assert found is not None
    view, whole = found
    assert not whole
    assert view[lo : lo + 4096] == data[lo : lo + 4096]
    assert fresh.verified_bytes == BLOCK  # one block of 256
    # Straddling two blocks checks both; asking again checks nothing more.
    edge = 40 * BLOCK - 10
    assert fresh.get_span(KEY, edge, edge + 20) is not None
    assert fresh.verified_bytes == 3 * BLOCK
    assert fresh.get_span(KEY, lo, lo + 4096) is not None
    assert fresh.verified_bytes == 3 * BLOCK
    # A whole read verifies the rest, once.
    assert fresh.get(KEY) == data
    assert fresh.verified_bytes == CS
    assert fresh.get_span(KEY, 0, 10) == (fresh.get(KEY), True)
    assert fresh.verified_bytes == CS


def test_a_damaged_block_is_found_when_read_and_the_chunk_dropped(tmp_path):
    tier = tier_at(tmp_path / "c")
    data = blob(2)
    assert tier.put(KEY, data)
    path = tier.path_for(KEY.digest)
    bad = 100
    flip(path, payload_at(path) + bad * BLOCK + 5)
    fresh = tier_at(tmp_path / "c")
    # Other blocks read fine: the damage is not theirs.
    found = fresh.get_span(KEY, 0, BLOCK)
    assert found is not None and found[0][:BLOCK] == data[:BLOCK]
    assert fresh.stats.checksum_failures == 0
    # Reading the damaged block drops the chunk, file and map.
    assert fresh.get_span(KEY, bad * BLOCK, bad * BLOCK + 1) is None
    assert fresh.stats.checksum_failures == 1
    assert not path.exists()
    assert fresh.get(KEY) is None


def test_a_big_first_read_checks_the_whole_payload_in_one_call(tmp_path):
    tier = tier_at(tmp_path / "c")
    data = blob(4)
    assert tier.put(KEY, data)
    fresh = tier_at(tmp_path / "c")
    # A sequential reader's first 1 MiB (a quarter chunk): the whole payload
    # is verified at once, so its later reads check nothing more.
    found = fresh.get_span(KEY, 0, CS // 4)
    assert found is not None
    view, whole = found
    assert whole and view == data
    assert fresh.verified_bytes == CS
    assert fresh.get_span(KEY, CS // 2, CS) == (view, True)
    assert fresh.verified_bytes == CS
    # Just under a quarter is a random reader: only its blocks.
    other = tier_at(tmp_path / "c")
    found = other.get_span(KEY, 0, CS // 4 - BLOCK)
    assert found is not None and not found[1]
    assert other.verified_bytes == CS // 4 - BLOCK


def test_a_big_first_read_finds_damage_outside_its_span(tmp_path):
    tier = tier_at(tmp_path / "c")
    data = blob(5)
    assert tier.put(KEY, data)
    path = tier.path_for(KEY.digest)
    bad = 200  # in the last quarter
    flip(path, payload_at(path) + bad * BLOCK + 9)
    fresh = tier_at(tmp_path / "c")
    # The whole payload's CRC32C fails; the block scan names the damaged
    # block and the chunk is dropped, not served in part.
    assert fresh.get_span(KEY, 0, CS // 4) is None
    assert fresh.stats.checksum_failures == 1
    assert not path.exists()


def test_a_record_without_the_whole_payload_crc_is_damage(tmp_path):
    # Format 3 (a block table without the whole payload's CRC32C) never
    # shipped; a file of that format is dropped, never misread.
    tier = tier_at(tmp_path / "c")
    data = blob(6)
    assert tier.put(KEY, data)
    path = tier.path_for(KEY.digest)
    raw = bytearray(path.read_bytes())
    raw[4] = 3
    path.write_bytes(bytes(raw))
    fresh = tier_at(tmp_path / "c")
    assert fresh.get(KEY) is None
    assert fresh.stats.checksum_failures == 1


def test_a_damaged_block_is_fetched_again_through_the_filesystem(tmp_path):
    data = blob(3) + blob(9)
    with HTTPOrigin(files={"f.bin": data}) as origin:
        url = origin.url_for("f.bin")
        opts = warm(tmp_path, url, data)
        (path,) = [p for p in (tmp_path / "c" / "chunks").rglob("*") if _first(p, data)]
        flip(path, payload_at(path) + 7 * BLOCK)
        origin.reset_stats()
        fs = CacheFileSystem(**opts)
        with fs.open(url, "rb") as f:
            f.seek(7 * BLOCK)
            assert f.read(4096) == data[7 * BLOCK : 7 * BLOCK + 4096]
        assert fs.cache_stats()["disk"]["checksum_failures"] == 1
        assert origin.stats.bytes_sent == CS  # that chunk, fetched again
        fs.close()


def _first(path: Path, data: bytes) -> bool:
    """Whether ``path`` is the chunk file holding ``data``'s first chunk."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        f.seek(payload_at(path))
        return f.read(64) == data[:64]


@pytest.mark.parametrize("damaged", [False, True])
def test_format_2_records_are_read_whole_or_dropped(tmp_path, damaged):
    tier = tier_at(tmp_path / "c")
    data = blob(4, 64 * 1024)
    key = FileVersion("http", "/old.bin", len(data), "t").key(len(data), 0)
    record = bytearray(encode_v2(data, key.digest))
    if damaged:
        record[40] ^= 1
    path = tier.path_for(key.digest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(record)
    path.chmod(0o600)
    view = tier.get(key)
    if damaged:
        assert view is None and not path.exists()
        assert tier.stats.checksum_failures == 1
    else:
        assert view == data
        assert tier.stats.checksum_failures == 0


@pytest.mark.parametrize("damaged", [None, 3, 200])
def test_format_4_records_are_read_block_by_block_or_dropped(tmp_path, damaged):
    # Written by the previous release: CRC32C checks, the same layout.
    tier = tier_at(tmp_path / "c")
    data = blob(7)
    record = bytearray(encode_v4(data, KEY.digest))
    if damaged is not None:
        record[record_overhead(CS) + damaged * BLOCK + 5] ^= 1
    path = tier.path_for(KEY.digest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(record)
    path.chmod(0o600)
    lo = 3 * BLOCK + 10
    found = tier.get_span(KEY, lo, lo + 4096)  # a random read: block 3 only
    if damaged == 3:
        assert found is None and not path.exists()
        assert tier.stats.checksum_failures == 1
        return
    assert found is not None and found[0][lo : lo + 4096] == data[lo : lo + 4096]
    assert tier.verified_bytes == BLOCK
    whole = tier.get(KEY)  # every block now: block 200 fails if damaged
    if damaged is None:
        assert whole == data and tier.verified_bytes == CS
    else:
        assert whole is None and not path.exists()
        assert tier.stats.checksum_failures == 1


def test_format_1_records_are_dropped(tmp_path):
    tier = tier_at(tmp_path / "c")
    data = blob(5, 8192)
    key = FileVersion("http", "/older.bin", len(data), "t").key(len(data), 0)
    head = struct.pack("<4sBBHIQQ4x", b"CFSC", 1, 0, 0, crc32c.crc32c(data), 8192, 8192)
    path = tier.path_for(key.digest)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(head + data)
    assert tier.get(key) is None and not path.exists()
    assert tier.stats.checksum_failures == 1


def test_publishing_opens_each_directory_once(tmp_path):
    tier = tier_at(tmp_path / "c")
    version = FileVersion("http", "/many.bin", 1 << 30, "t")
    keys = [version.key(4096, i) for i in range(300)]
    shards = {k.digest[:2] for k in keys}
    stored = tier.put_many([(k, blob(k.index, 4096)) for k in keys[:150]])
    assert all(stored)
    for key in keys[150:]:
        assert tier.put(key, blob(key.index, 4096))
    # tmp/ and each shard once, however many chunks went in.
    assert tier.dir_opens == len(shards) + 1
    for key in keys:
        assert tier.get(key) == blob(key.index, 4096)
    assert tier.dir_opens == len(shards) + 1
