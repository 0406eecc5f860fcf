"""Chunks written with O_DIRECT (format 6 records), issue 20.

A disk tier that bypasses the page cache writes format 6 records (the
payload at a 4 KiB boundary); they read back exactly in a fresh tier and
through the filesystem, a damaged block in one is found and the chunk
dropped, and the parts ``O_DIRECT`` cannot take (a partial last block, a
payload outside page-aligned memory, a small chunk) are written buffered
into the same record. ``direct_writes="auto"`` decides by the budget
against this machine's RAM and by the filesystem; a bad value is refused
with the parameter's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachefs import CacheFileSystem
from cachefs.buffers import landing_buffer
from cachefs.chunks import FileVersion
from cachefs.config import CacheConfig
from cachefs.policy import make_policy
from cachefs.testing import HTTPOrigin
from cachefs.tiers import direct
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.record import CHUNK_HEADER
from tests._blocks import BLOCK, CS, blob, payload_at

KiB = 2**10
RAM = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def tier_at(root: Path, want: bool | None = True) -> DiskTier:
    tier = DiskTier(root, 1 << 34, make_policy("lru"), direct_writes=want)
    if want and not tier.direct_writes:
        pytest.skip(f"the filesystem of {root} refuses O_DIRECT")
    return tier


def record_format(path: Path) -> int:
    with open(path, "rb") as f:
        return int(CHUNK_HEADER.unpack(f.read(CHUNK_HEADER.size))[1])


def landed(data: bytes) -> memoryview:
    """``data`` in a landing buffer, as a fill hands it to the disk tier."""
    buf = landing_buffer(len(data))
    buf[:] = data
    return buf


@pytest.mark.parametrize(
    ("size", "where", "fmt"),
    [
        (CS, "landing", 6),  # every block aligned: one O_DIRECT write
        (CS + 1000, "landing", 6),  # a partial last block, written buffered
        (CS, "bytes", 6),  # not page-aligned memory: the kernel says EINVAL
        (64 * KiB, "landing", 5),  # under MIN_DIRECT: buffered, format 5
    ],
)
def test_a_direct_record_reads_back_exactly(tmp_path, size, where, fmt):
    tier = tier_at(tmp_path / "c")
    data = blob(3, size)
    key = FileVersion("http", "/d.bin", size, "t").key(size, 0)
    assert tier.put(key, landed(data) if where == "landing" else data)
    path = tier.path_for(key.digest)
    assert record_format(path) == fmt
    at = payload_at(path)
    if fmt == 6:
        assert at % 4096 == 0
    assert path.stat().st_size == at + size
    assert os.listdir(tier.root / "tmp") == []
    fresh = tier_at(tmp_path / "c", want=None)
    assert fresh.get(key) == data
    assert fresh.stats.checksum_failures == 0


def test_a_damaged_block_of_a_direct_record_is_found_and_dropped(tmp_path):
    tier = tier_at(tmp_path / "c")
    data = blob(5)
    key = FileVersion("http", "/d.bin", CS, "t").key(CS, 0)
    assert tier.put(key, landed(data))
    path = tier.path_for(key.digest)
    with open(path, "r+b") as f:
        f.seek(payload_at(path) + 40 * BLOCK + 7)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    fresh = tier_at(tmp_path / "c", want=None)
    # Blocks before it are sound and served; the damaged one drops the chunk.
    span = fresh.get_span(key, 0, BLOCK)
    assert span is not None and bytes(span[0][:BLOCK]) == data[:BLOCK]
    assert fresh.get_span(key, 40 * BLOCK, 40 * BLOCK + 100) is None
    assert fresh.stats.checksum_failures == 1
    assert not path.exists()


def test_buffered_writes_keep_format_5(tmp_path):
    tier = tier_at(tmp_path / "c", want=False)
    assert not tier.direct_writes
    data = blob(6)
    key = FileVersion("http", "/d.bin", CS, "t").key(CS, 0)
    assert tier.put(key, landed(data))
    path = tier.path_for(key.digest)
    assert record_format(path) == 5
    assert tier_at(tmp_path / "c", want=None).get(key) == data


def test_auto_decides_by_budget_and_filesystem(tmp_path):
    tmp = tmp_path / "t"
    tmp.mkdir()
    if not direct.probe(tmp):
        pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT")
    assert direct.choose(None, tmp_path, tmp, direct.AUTO_RAM_FACTOR * RAM) is True
    assert direct.choose(None, tmp_path, tmp, RAM) is False
    assert direct.choose(True, tmp_path, tmp, 1) is True  # asked for
    assert direct.choose(False, tmp_path, tmp, 4 * RAM) is False
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        # tmpfs: the page cache is the storage; auto never bypasses it.
        assert direct.choose(None, shm, shm, 4 * RAM) is False
    assert os.listdir(tmp) == []  # the probe leaves nothing behind


def test_the_filesystem_writes_format_6_and_reads_it_warm(tmp_path):
    data = blob(1) + blob(2) + blob(3)[: 3 * KiB + 5]
    with HTTPOrigin(files={"f.bin": data}) as origin:
        url = origin.url_for("f.bin")
        opts = {
            "target_protocol": "http",
            "cache_dir": str(tmp_path / "c"),
            "chunk_size": CS,
            "ram_limit": 0,
            "direct_writes": "on",
            "skip_instance_cache": True,
        }
        fs = CacheFileSystem(**opts)
        with fs.open(url, "rb") as f:
            assert f.read() == data
        fs.wait_idle()
        fs.close()
        files = sorted(p for p in (tmp_path / "c" / "chunks").rglob("*") if p.is_file())
        assert len(files) == 3
        # The two full chunks are format 6; the 3 KiB tail, under
        # MIN_DIRECT, is written buffered as format 5.
        assert sorted(record_format(p) for p in files) == [5, 6, 6]
        origin.reset_stats()
        fs = CacheFileSystem(**opts)
        with fs.open(url, "rb") as f:
            assert f.read() == data
        assert origin.stats.bytes_sent == 0
        fs.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", None), (None, None), (True, True), ("off", False), ("on", True)],
)
def test_direct_writes_setting_parses(value, expected):
    assert CacheConfig.from_kwargs(direct_writes=value).direct_writes is expected


def test_a_bad_direct_writes_value_names_the_parameter():
    with pytest.raises(ValueError, match="direct_writes must be 'auto' or a boolean"):
        CacheConfig.from_kwargs(direct_writes="sometimes")


@pytest.mark.parametrize(("flag", "formats"), [("on", [6, 6]), ("off", [5, 5])])
def test_the_warm_command_takes_direct_writes(tmp_path, env, flag, formats):
    from tests.test_cli import run

    files = {"a.bin": blob(7, CS), "b.bin": blob(8, CS)}
    with HTTPOrigin(files=files) as origin:
        cache = tmp_path / "c"
        args = ["--cache-dir", str(cache), "--direct-writes", flag, "-q"]
        proc = run(env, "warm", origin.url_for("a.bin"), origin.url_for("b.bin"), *args)
        assert proc.returncode == 0, proc.stderr
    records = sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())
    if flag == "on" and not direct.probe(cache / "tmp"):
        pytest.skip(f"the filesystem of {cache} refuses O_DIRECT")
    assert sorted(record_format(p) for p in records) == formats
    # Either way each record holds its file's bytes where its format says.
    assert len(records) == 2
    payloads = sorted(path.read_bytes()[payload_at(path) :] for path in records)
    assert payloads == sorted(files.values())


def test_a_bad_direct_writes_option_is_one_line(tmp_path, env):
    from tests.test_cli import one_error_line, run

    proc = run(env, "stats", "--cache-dir", str(tmp_path / "c"), "--direct-writes", "x")
    assert "--direct-writes" in one_error_line(proc)
