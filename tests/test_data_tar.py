"""The tar shard reader against archives written by Python's tarfile.

Shards are served by a real HTTP origin and read through a real
CacheFileSystem with small chunks, so members cross chunk boundaries.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cachefs import CacheFileSystem, ChunkKey
from cachefs.data.errors import ShardFormatError
from cachefs.data.tar import TarReader, _number, split_key
from cachefs.testing import HTTPOrigin

CHUNK = 4096
LONG_DIR = "d" * 60 + "/" + "e" * 50
LONG_NAME = f"{LONG_DIR}/sample-with-a-long-name-{'x' * 40}.payload.bin"


def make_tar(
    members: list[tuple[str, bytes | None]],
    fmt: int = tarfile.PAX_FORMAT,
    pax: dict[str, dict[str, str]] | None = None,
) -> bytes:
    """Write members with tarfile; data ``None`` makes a directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
                continue
            info.size = len(data)
            if pax and name in pax:
                info.pax_headers = pax[name]
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                out.append((m.name, f.read()))
    return out


def payload(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


MEMBERS: list[tuple[str, bytes | None]] = [
    ("top", None),
    ("top/a.txt", b"hello"),
    ("top/a.empty", b""),
    (LONG_NAME, payload(700, 1)),
    ("top/b.big.bin", payload(3 * CHUNK + 123, 2)),  # spans chunks
    ("top/b.json", b'{"label": 3}'),
    ("top/caf\u00e9-\u00fc.txt", b"unicode name"),
    ("top/c.bin", payload(CHUNK - 1000, 3)),
]


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    ustar_long = f"{'u' * 120}/{'v' * 60}.bin"  # fits only with the prefix field
    return {
        "gnu.tar": make_tar(MEMBERS, tarfile.GNU_FORMAT),
        "pax.tar": make_tar(
            MEMBERS,
            tarfile.PAX_FORMAT,
            pax={"top/a.txt": {"comment": "a pax record", "path": "top/a.txt"}},
        ),
        "ustar.tar": make_tar(
            [(ustar_long, b"prefixed"), ("top/z.bin", b"z")], tarfile.USTAR_FORMAT
        ),
    }


@pytest.fixture(scope="module")
def tar_origin(archives: dict[str, bytes]) -> Iterator[HTTPOrigin]:
    with HTTPOrigin(files={f"t/{k}": v for k, v in archives.items()}) as server:
        yield server


@pytest.fixture
def tfs(tmp_path: Path) -> Iterator[CacheFileSystem]:
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=str(tmp_path / "cache"),
        chunk_size=CHUNK,
        skip_instance_cache=True,
    )
    yield fs
    fs.wait_idle()


def read_members(fs: Any, url: str) -> list[tuple[str, bytes]]:
    with fs.open(url, "rb") as f:
        reader = TarReader(f, url)
        return [
            (m.name, bytes(reader.data(m)))
            for m in reader.members()
            if m.kind == "file"
        ]


@pytest.mark.parametrize("name", ["gnu.tar", "pax.tar", "ustar.tar"])
def test_members_match_tarfile(name, archives, tar_origin, tfs, tmp_path):
    expected = tarfile_members(archives[name])
    assert read_members(tfs, tar_origin.url_for(f"t/{name}")) == expected
    # A plain file object (no read_view) reads the same.
    local = tmp_path / name
    local.write_bytes(archives[name])
    with open(local, "rb") as f:
        reader = TarReader(f, str(local))
        got = [
            (m.name, bytes(reader.data(m)))
            for m in reader.members()
            if m.kind == "file"
        ]
    assert got == expected


def test_long_and_pax_names_are_applied(archives, tar_origin, tfs):
    for name in ("gnu.tar", "pax.tar"):
        names = [n for n, _ in read_members(tfs, tar_origin.url_for(f"t/{name}"))]
        assert LONG_NAME in names and len(LONG_NAME) > 100
        assert "top/caf\u00e9-\u00fc.txt" in names
    with tarfile.open(fileobj=io.BytesIO(archives["pax.tar"])) as tf:
        assert tf.getmember("top/a.txt").pax_headers["comment"] == "a pax record"


def test_directories_are_skipped_and_empty_members_kept(tar_origin, tfs):
    url = tar_origin.url_for("t/gnu.tar")
    with tfs.open(url) as f:
        members = list(TarReader(f, url).members())
    kinds = {m.name: m.kind for m in members}
    assert kinds["top/"] == "dir"
    empty = next(m for m in members if m.name == "top/a.empty")
    assert empty.size == 0 and empty.kind == "file"


def test_samples_group_members_by_key(tar_origin, tfs):
    url = tar_origin.url_for("t/gnu.tar")
    with tfs.open(url) as f:
        samples = [(k, sorted(fields)) for _, k, fields in TarReader(f, url).samples()]
    assert samples == [
        ("top/a", ["empty", "txt"]),
        (LONG_NAME.split(".")[0], ["payload.bin"]),
        ("top/b", ["big.bin", "json"]),
        ("top/caf\u00e9-\u00fc", ["txt"]),
        ("top/c", ["bin"]),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b/x001.seg.png", ("a/b/x001", "seg.png")),
        ("x.jpg", ("x", "jpg")),
        ("dir.v2/x.cls", ("dir.v2/x", "cls")),
        ("README", None),
        ("a/.hidden", None),
        ("a/..b", ("a/.", "b")),
    ],
)
def test_split_key(name, expected):
    assert split_key(name) == expected


def test_in_chunk_member_is_a_view_of_the_cached_chunk(tar_origin, tfs):
    url = tar_origin.url_for("t/gnu.tar")
    with tfs.open(url) as f:
        reader = TarReader(f, url)
        members = {m.name: m for m in reader.members()}
        small = members["top/c.bin"]
        big = members["top/b.big.bin"]
        assert small.offset // CHUNK == (small.offset + small.size - 1) // CHUNK
        view = reader.data(small)
        key = ChunkKey(f.version, CHUNK, small.offset // CHUNK)
        chunk = tfs.router.get_cached(key)
        assert chunk is not None
        assert view.readonly
        assert view.obj is chunk.obj  # no copy: the cache's own buffer
        spanning = reader.data(big)
        assert bytes(spanning) == payload(3 * CHUNK + 123, 2)
        assert spanning.obj is not chunk.obj  # copied once, into its own buffer


def corrupt_at(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset + 10] ^= 0xFF  # inside the name field: the checksum fails
    return bytes(out)


def reader_error(fs: Any, url: str, fn: Callable[[TarReader], object]) -> Any:
    with fs.open(url) as f, pytest.raises(ShardFormatError) as info:
        fn(TarReader(f, url))
    return info.value


def test_corrupt_header_names_shard_and_offset(archives, tar_origin, tfs):
    good = archives["ustar.tar"]
    second = 512 + 512  # header, one block of data ("prefixed"), next header
    tar_origin.set_file("t/bad.tar", corrupt_at(good, second))
    url = tar_origin.url_for("t/bad.tar")
    err = reader_error(tfs, url, lambda r: list(r.members()))
    assert isinstance(err, ValueError)
    assert err.url == url and err.offset == second
    assert url in str(err) and f"offset {second}" in str(err)
    assert "checksum" in str(err)


def test_not_a_tar_is_a_clear_error(tar_origin, tfs):
    tar_origin.set_file("t/random.tar", payload(5000, 9))
    url = tar_origin.url_for("t/random.tar")
    err = reader_error(tfs, url, lambda r: list(r.samples()))
    assert err.offset == 0 and url in str(err)


@pytest.mark.parametrize(
    ("cut", "offset", "reason"),
    [
        (512 + 4, 0, "needs 8 bytes of data"),  # inside the first member's data
        (1024 + 200, 1024, "truncated header (200 of 512 bytes)"),
    ],
)
def test_truncated_tar_names_shard_and_offset(
    archives, tar_origin, tfs, cut, offset, reason
):
    tar_origin.set_file("t/short.tar", archives["ustar.tar"][:cut])
    url = tar_origin.url_for("t/short.tar")
    err = reader_error(tfs, url, lambda r: list(r.samples()))
    assert url in str(err) and reason in str(err)
    assert err.offset == offset and f"offset {offset}" in str(err)


def test_repeated_field_in_a_sample_is_an_error(tar_origin, tfs):
    data = make_tar([("s/x.bin", b"1"), ("s/x.bin", b"2")])
    tar_origin.set_file("t/dup.tar", data)
    url = tar_origin.url_for("t/dup.tar")
    err = reader_error(tfs, url, lambda r: list(r.samples()))
    assert "repeats field 'bin'" in str(err)


def test_skip_limit_and_sample_offsets(tar_origin, tfs):
    members = [(f"k/{i:03d}.{e}", payload(300 + i, i)) for i in range(10) for e in "ab"]
    tar_origin.set_file("t/ten.tar", make_tar(members, tarfile.GNU_FORMAT))
    url = tar_origin.url_for("t/ten.tar")
    with tfs.open(url) as f:
        reader = TarReader(f, url)
        everything = list(reader.samples())
        end = reader.stopped_at
        assert [k for _, k, _ in everything] == [f"k/{i:03d}" for i in range(10)]
        middle = [k for _, k, _ in reader.samples(skip=3, limit=4)]
        assert middle == [f"k/{i:03d}" for i in range(3, 7)]
        starts = [off for off, _, _ in everything] + [end]
        ranged = list(reader.samples(starts[2], starts[5]))
        assert [k for _, k, _ in ranged] == ["k/002", "k/003", "k/004"]
        assert bytes(ranged[0][2]["b"]) == payload(302, 2)
        assert [k for _, k, _ in reader.samples(starts[8], end)] == ["k/008", "k/009"]


def test_numeric_fields():
    assert _number(b"0000644\x00") == 0o644
    assert _number(b"\x80" + (5 << 40).to_bytes(11, "big")) == 5 << 40
    assert _number(b"     17 \x00  ") == 0o17
    with pytest.raises(ValueError):
        _number(b"12x\x00")


def test_error_survives_pickling_and_a_dataloader_rebuild():
    err = ShardFormatError.at("http://h/s.tar", 1024, "bad tar header checksum")
    again = pickle.loads(pickle.dumps(err))
    assert (again.url, again.offset, str(again)) == (err.url, 1024, str(err))
    # DataLoader re-raises a worker's error as exc_type(message).
    rebuilt = ShardFormatError(str(err))
    assert isinstance(rebuilt, ValueError) and "s.tar" in str(rebuilt)
