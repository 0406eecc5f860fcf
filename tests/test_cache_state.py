"""Hostile and damaged cache state: what the cache refuses, checks and repairs.

Everything here works on real files in a real cache directory, damaged with
ordinary file operations: bytes flipped, records swapped, version records
rewritten, the usage counter overwritten, symlinks and strays planted. The
readers, ``cachefs verify`` and ``cachefs clear`` are the real ones. The
fuzzer at the end draws seeded, random combinations of the damage kinds and
checks the promises after each: exact bytes, nothing outside the cache
touched, ``verify`` finds the damage and ``--repair`` fixes it, and the usage
counter equals what the chunk files hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cachefs import CacheFileSystem
from cachefs.chunks import FileVersion
from cachefs.cli import main as cli_main
from cachefs.policy import make_policy
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.record import RecordCodec, record_overhead

KiB = 2**10
MiB = 2**20
CS = 64 * KiB
REPO = Path(__file__).resolve().parents[1]
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to make files another user owns"
)


# -- helpers -------------------------------------------------------------------


def blob(seed: int, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture
def origin_dir(tmp_path: Path) -> dict[str, bytes]:
    """Three local origin files (sizes not multiples of the chunk size)."""
    root = tmp_path / "origin"
    root.mkdir()
    files = {}
    for i, size in enumerate((3 * CS + 1234, 2 * CS + 77, CS // 3)):
        path = root / f"file{i}.bin"
        data = blob(i, size)
        path.write_bytes(data)
        files[str(path)] = data
    return files


@pytest.fixture
def victim(tmp_path: Path) -> Callable[[], dict[str, bytes]]:
    """A directory outside the cache; returns a snapshot function."""
    root = tmp_path / "victim"
    root.mkdir()
    (root / "precious.json").write_text('{"keep": true}')
    (root / "data.bin").write_bytes(blob(99, 5000))
    (root / "0123.json").write_text("not a record")

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(root.iterdir())}

    snapshot.root = root  # type: ignore[attr-defined]
    return snapshot


def make_fs(cache: Path, **kw: Any) -> CacheFileSystem:
    options: dict[str, Any] = {
        "target_protocol": "file",
        "cache_dir": str(cache),
        "chunk_size": CS,
        "ram_limit": 0,
        "metadata_ttl": None,
        "skip_instance_cache": True,
    }
    options.update(kw)
    return CacheFileSystem(**options)


def warm(cache: Path, files: dict[str, bytes], **kw: Any) -> None:
    fs = make_fs(cache, **kw)
    for path, data in files.items():
        assert fs.cat_file(path) == data
    fs.wait_idle()


def read_all(cache: Path, files: dict[str, bytes], **kw: Any) -> None:
    fs = make_fs(cache, **kw)
    for path, data in files.items():
        assert fs.cat_file(path) == data, path
        with fs.open(path, "rb") as fh:
            fh.seek(len(data) // 2)
            assert fh.read() == data[len(data) // 2 :], path
    fs.wait_idle()


def chunk_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "chunks").glob("*/*") if p.is_file())


def chunk_map(cache: Path, files: dict[str, bytes]) -> dict[Path, tuple[str, int]]:
    """Map each chunk file to (origin path, chunk index) via the records."""
    fs = make_fs(cache)
    out = {}
    for path in files:
        version = fs.metadata.get("file", path)
        assert version is not None
        for i in range(version.chunk_count(CS)):
            key = version.key(CS, i)
            out[cache / "chunks" / key.digest[:2] / key.digest] = (path, i)
    return out


def records(cache: Path) -> list[Path]:
    return sorted((cache / "meta").glob("*.json"))


def cli(*argv: str, cache: Path, capsys: Any) -> tuple[int, Any]:
    capsys.readouterr()
    rc = cli_main([*argv, "--cache-dir", str(cache), "--chunk-size", str(CS)])
    out = capsys.readouterr().out
    with contextlib.suppress(ValueError):
        return rc, json.loads(out)
    return rc, out


def counted(cache: Path) -> int:
    """Bytes of the files the budget counts: chunk-named regular files."""
    total = 0
    for p in (cache / "chunks").glob("*/*"):
        if (
            not p.is_symlink()
            and p.is_file()
            and re.fullmatch(r"[0-9a-f]{40}", p.name)
            and p.parent.name == p.name[:2]
        ):
            total += p.stat().st_size
    return total


def usage_counter(cache: Path) -> int | None:
    raw = (cache / "usage").read_bytes()
    return int.from_bytes(raw, "little") if len(raw) == 8 else None


class _FakeCodec:
    """Stands in for a codec when forging a record that names ``config``."""

    def __init__(self, config: dict[str, Any], payload: bytes) -> None:
        self._config, self._payload = config, payload

    def get_config(self) -> dict[str, Any]:
        return self._config

    def encode(self, data: Any) -> bytes:
        return self._payload


def forge_record(data: bytes, digest: str, config: dict[str, Any], payload: bytes):
    """A record with a valid checksum naming ``config`` as its codec.

    Built with the project's own encoder, bypassing its codec check, so the
    record is exactly what a planted file would hold.
    """
    rc = object.__new__(RecordCodec)
    rc.codec = _FakeCodec(config, payload)
    rc._config = json.dumps(config, sort_keys=True).encode()
    rc._decoders = {}
    try:
        head, body = rc.encode(memoryview(data), digest)
    except TypeError:  # an encoder that binds no key
        head, body = rc.encode(memoryview(data))  # type: ignore[call-arg]
    return head + bytes(body)


class _Marker:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


# -- 7: symlinked directories are never followed --------------------------------


def test_symlinked_meta_is_refused_and_never_written_through(
    tmp_path, origin_dir, victim
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    before = victim()
    shutil.rmtree(cache / "meta")
    os.symlink(victim.root, cache / "meta")
    with pytest.raises(NotADirectoryError, match="meta"):
        make_fs(cache)
    assert victim() == before


def test_verify_repair_and_clear_never_delete_through_symlinks(
    tmp_path, origin_dir, victim, capsys
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    before = victim()
    shutil.rmtree(cache / "meta")
    os.symlink(victim.root, cache / "meta")
    shard = chunk_files(cache)[0].parent
    shutil.rmtree(shard)
    os.symlink(victim.root, shard)
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 1
    reasons = {d["path"]: d["reason"] for d in doc["damaged"]}
    assert "symlink" in reasons[str(cache / "meta")]
    assert "symlink" in reasons[str(shard)]
    assert victim() == before
    rc, doc = cli("verify", "--repair", "--json", cache=cache, capsys=capsys)
    assert rc == 0, doc
    assert victim() == before
    assert not (cache / "meta").exists() and not shard.is_symlink()
    # clear, with the links planted again
    os.symlink(victim.root, cache / "meta")
    os.symlink(victim.root, shard)
    rc, _ = cli("clear", cache=cache, capsys=capsys)
    assert rc == 0
    assert victim() == before
    assert not (cache / "meta").is_symlink() and not shard.is_symlink()
    read_all(cache, origin_dir)
    assert victim() == before


def test_chunk_files_and_shards_planted_as_symlinks_are_not_followed(
    tmp_path, origin_dir, victim
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    before = victim()
    files = chunk_files(cache)
    files[0].unlink()
    os.symlink(victim.root / "data.bin", files[0])
    read_all(cache, origin_dir)
    assert victim() == before
    assert not files[0].is_symlink()


# -- 8: only allow-listed codecs are ever built from a record ------------------


@pytest.fixture
def unsafe_pickle(monkeypatch):
    """The user's switch that lets numcodecs unpickle: on."""
    import numcodecs.pickles

    monkeypatch.setattr(numcodecs.pickles, "ALLOW_UNSAFE_PICKLE_DECODE", True)


def _pickle_record(data: bytes, digest: str, marker: Path) -> bytes:
    import pickle

    payload = pickle.dumps(_Marker(str(marker)))
    assert len(payload) < len(data) // 2
    return forge_record(data, digest, {"id": "pickle"}, payload)


def test_a_planted_pickle_codec_record_never_runs(
    tmp_path, origin_dir, unsafe_pickle, capsys
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    marker = tmp_path / "code-ran"
    for path, (origin, index) in chunk_map(cache, origin_dir).items():
        data = origin_dir[origin][index * CS : (index + 1) * CS]
        if len(data) == CS:
            path.write_bytes(_pickle_record(data, path.name, marker))
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert not marker.exists(), "verify ran code from a chunk record"
    assert rc == 1
    chunk_damage = [d for d in doc["damaged"] if "/chunks/" in d["path"]]
    assert chunk_damage and all("codec" in d["reason"] for d in chunk_damage), doc
    fs = make_fs(cache)
    for path, data in origin_dir.items():
        assert fs.cat_file(path) == data
    assert not marker.exists(), "a reader ran code from a chunk record"
    assert fs.cache_stats()["disk"]["checksum_failures"] > 0


async def test_the_shared_tier_refuses_planted_codecs(tmp_path, unsafe_pickle):
    import fsspec

    from cachefs.tiers.shared import SharedTier

    tier = SharedTier(fsspec.filesystem("file"), str(tmp_path / "shared"))
    key = FileVersion("http", "/x", CS, "t").key(CS, 0)
    data = blob(5, CS)
    await tier.put(key, memoryview(data))
    assert bytes(await tier.get(key)) == data
    marker = tmp_path / "code-ran"
    Path(tier.path_for(key.digest)).write_bytes(
        _pickle_record(data, key.digest, marker)
    )
    assert await tier.get(key) is None
    assert not marker.exists()
    assert tier.stats.checksum_failures == 1


def test_compression_with_a_codec_outside_the_allow_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be stored"):
        make_fs(tmp_path / "cache", compression={"id": "pickle"})


# -- 9: directories and files others control are refused -----------------------


def test_a_world_writable_cache_dir_is_refused_unless_trusted(
    tmp_path, origin_dir, capsys
):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(PermissionError, match="chmod 700") as info:
        make_fs(cache)
    assert str(cache) in str(info.value)
    assert "trust_cache_dir" in str(info.value)
    read_all(cache, origin_dir, trust_cache_dir=True)
    rc, _ = cli("stats", cache=cache, capsys=capsys)
    assert rc == 1
    rc, _ = cli("stats", "--trust-cache-dir", cache=cache, capsys=capsys)
    assert rc == 0
    (cache / "chunks").chmod(0o770)
    cache.chmod(0o700)
    with pytest.raises(PermissionError, match="chunks"):
        make_fs(cache)


def test_trust_cache_dir_from_the_environment(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("FSSPEC_CACHEFS_TRUST_CACHE_DIR", "true")
    import fsspec.config

    monkeypatch.setattr(fsspec.config, "conf", {})
    fsspec.config.set_conf_env(fsspec.config.conf)
    fs = CacheFileSystem(
        target_protocol="file", cache_dir=str(cache), skip_instance_cache=True
    )
    assert fs.router.disks[0].trust_cache_dir is True
    with pytest.raises(ValueError, match="trust_cache_dir"):
        make_fs(cache, trust_cache_dir="perhaps")


@ROOT_ONLY
def test_a_cache_dir_another_user_owns_is_refused(tmp_path, origin_dir):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    os.chown(cache, 65534, 65534)
    with pytest.raises(PermissionError, match="owned by uid 65534") as info:
        make_fs(cache)
    assert str(cache) in str(info.value) and "chown" in str(info.value)
    read_all(cache, origin_dir, trust_cache_dir=True)


@ROOT_ONLY
def test_chunk_files_another_user_owns_are_refused(tmp_path, origin_dir, capsys):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    planted = chunk_files(cache)[0]
    os.chown(planted, 65534, 65534)
    fs = make_fs(cache)
    with pytest.raises(PermissionError, match="owned by uid 65534") as info:
        for path in origin_dir:
            fs.cat_file(path)
    assert str(planted) in str(info.value)
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 1 and "uid 65534" in doc["damaged"][0]["reason"]
    read_all(cache, origin_dir, trust_cache_dir=True)


# -- 10: version records are checksummed and validated -------------------------


def _rewrite_size(record: Path, new: str) -> None:
    text = record.read_text()
    out, n = re.subn(r'"size":\s*\d+', f'"size": {new}', text)
    assert n == 1
    record.write_text(out)


@pytest.mark.parametrize(
    "new_size", ["Infinity", "-5", "NaN", "1e400", "true", "FLIP"], ids=str
)
def test_damaged_version_records_are_dropped_and_learned_again(
    tmp_path, origin_dir, new_size, capsys
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    for record in records(cache):
        size = int(re.search(r'"size":\s*(\d+)', record.read_text()).group(1))
        _rewrite_size(record, str(size - 1) if new_size == "FLIP" else new_size)
    for command in ("stats", "ls"):
        rc, _ = cli(command, "--json", cache=cache, capsys=capsys)
        assert rc == 0
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 1
    assert {d["path"] for d in doc["damaged"]} == {str(r) for r in records(cache)}
    n_chunks = len(chunk_files(cache))
    read_all(cache, origin_dir)  # learned again from the origin: exact bytes
    assert len(chunk_files(cache)) == n_chunks  # the good chunks were kept
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 0, doc


def test_verify_repair_removes_damaged_records_not_good_chunks(
    tmp_path, origin_dir, capsys
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    n_chunks = len(chunk_files(cache))
    for record in records(cache):
        size = int(re.search(r'"size":\s*(\d+)', record.read_text()).group(1))
        _rewrite_size(record, str(size - 1))
    rc, doc = cli("verify", "--repair", "--json", cache=cache, capsys=capsys)
    assert rc == 0 and doc["ok"]
    assert records(cache) == []
    assert len(chunk_files(cache)) == n_chunks


# -- 11: a record is bound to its key ------------------------------------------


def test_swapped_chunk_records_are_not_served_as_each_other(
    tmp_path, origin_dir, capsys
):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    full = [
        p
        for p, (origin, i) in chunk_map(cache, origin_dir).items()
        if (i + 1) * CS <= len(origin_dir[origin])
    ]
    a, b = full[0], full[1]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 1
    assert {d["path"] for d in doc["damaged"]} == {str(a), str(b)}
    assert all("another chunk" in d["reason"] for d in doc["damaged"])
    read_all(cache, origin_dir)


def test_old_format_records_are_refetched(tmp_path, origin_dir):
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    n_chunks = len(chunk_files(cache))
    for path in chunk_files(cache):
        raw = bytearray(path.read_bytes())
        raw[4] = 1  # the format byte
        path.write_bytes(raw)
    fs = make_fs(cache)
    for path, data in origin_dir.items():
        assert fs.cat_file(path) == data
    assert fs.cache_stats()["disk"]["checksum_failures"] == n_chunks


# -- 12: strays are removed by repair and never hold the budget hostage --------


def test_a_stray_neither_counts_in_the_budget_nor_survives_repair(tmp_path, capsys):
    cache = tmp_path / "cache"
    tier = DiskTier(cache, 4 * MiB, make_policy("lru"))
    (cache / "chunks" / "ab").mkdir()
    stray = cache / "chunks" / "ab" / ("cd" + "0" * 38)  # a digest, misplaced
    stray.write_bytes(b"\0" * (5 * MiB))
    version = FileVersion("http", "/budget", 10 * CS, "t")
    for i in range(10):
        assert tier.put(version.key(CS, i), blob(i, CS))
    assert tier.stats.evictions == 0
    assert all(tier.contains(version.key(CS, i)) for i in range(10))
    assert tier.usage() == 10 * (record_overhead(CS) + CS) == counted(cache)
    rc, doc = cli("verify", "--repair", "--json", cache=cache, capsys=capsys)
    assert rc == 0
    assert doc["damaged"] == [
        {
            "path": str(stray),
            "reason": doc["damaged"][0]["reason"],
            "removed": True,
        }
    ]
    assert not stray.exists()
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 0 and doc["damaged"] == []


# -- a refused write is logged once per cause ----------------------------------


def test_a_refused_write_is_logged_with_its_errno(tmp_path, caplog):
    cache = tmp_path / "cache"
    tier = DiskTier(cache, 64 * MiB, make_policy("lru"))
    assert tier.last_refusal is None
    # A non-directory where tmp/ was: every write is refused (ENOTDIR).
    shutil.rmtree(cache / "tmp")
    (cache / "tmp").write_bytes(b"")
    version = FileVersion("http", "/refused", 4 * CS, "t")
    with caplog.at_level(logging.WARNING, logger="cachefs"):
        for i in range(4):
            assert tier.put(version.key(CS, i), blob(i, CS)) is False
    assert tier.stats.rejected == 4
    assert isinstance(tier.last_refusal, OSError)
    assert tier.last_refusal.errno is not None
    logged = [r for r in caplog.records if "refused a chunk write" in r.getMessage()]
    assert len(logged) == 1  # the first refusal of this cause only
    assert f"errno {tier.last_refusal.errno}" in logged[0].getMessage()
    assert str(cache) in logged[0].getMessage()


# -- evict: a pattern that equals a path names that path ------------------------


def test_evict_of_a_path_with_glob_characters_takes_that_file_only(tmp_path, capsys):
    root = tmp_path / "origin"
    root.mkdir()
    files = {}
    for name in ("data[1].bin", "data1.bin"):
        (root / name).write_bytes(blob(len(name), 3000))
        files[str(root / name)] = (root / name).read_bytes()
    cache = tmp_path / "cache"
    warm(cache, files)
    rc, doc = cli(
        "evict", str(root / "data[1].bin"), "--json", cache=cache, capsys=capsys
    )
    assert rc == 0
    assert doc["files"] == [str(root / "data[1].bin")]
    rc, doc = cli("ls", "--json", cache=cache, capsys=capsys)
    listed = json.dumps(doc)
    assert "data1.bin" in listed and "data[1].bin" not in listed
    # A pattern naming no recorded file is still a glob.
    rc, doc = cli(
        "evict", str(root / "data?.bin"), "--json", cache=cache, capsys=capsys
    )
    assert doc["files"] == [str(root / "data1.bin")]


# -- the fuzzer ----------------------------------------------------------------

DAMAGE_KINDS = [
    "flip_chunk_byte",
    "truncate_chunk",
    "empty_chunk",
    "swap_chunks",
    "copy_chunk_over",
    "old_format_chunk",
    "pickle_codec_chunk",
    "unknown_codec_chunk",
    "symlink_chunk",
    "dir_as_chunk",
    "version_infinity",
    "version_negative",
    "version_flip_digit",
    "version_garbage",
    "version_misfiled",
    "version_unchecksummed",
    "usage_garbage",
    "usage_short",
    "usage_huge",
    "symlink_meta",
    "symlink_shard",
    "symlink_tmp",
    "stray_in_shard",
    "misplaced_chunk",
    "stray_top",
    "stray_dir_top",
]
_REFUSING = {"symlink_meta", "symlink_tmp"}  # a new cache refuses to start


class Damager:
    def __init__(self, cache: Path, files: dict[str, bytes], victim: Path, rng):
        self.cache, self.files, self.victim, self.rng = cache, files, victim, rng
        self.chunks = chunk_map(cache, files)

    def _chunk(self) -> Path:
        alive = [p for p in self.chunks if p.is_file() and not p.is_symlink()]
        return self.rng.choice(alive)

    def _record(self) -> Path:
        return self.rng.choice(records(self.cache))

    def apply(self, kind: str) -> None:
        getattr(self, kind)()

    def flip_chunk_byte(self) -> None:
        path = self._chunk()
        raw = bytearray(path.read_bytes())
        at = self.rng.randrange(len(raw))
        raw[at] ^= 1 << self.rng.randrange(8)
        path.write_bytes(raw)

    def truncate_chunk(self) -> None:
        path = self._chunk()
        os.truncate(path, self.rng.randrange(1, path.stat().st_size))

    def empty_chunk(self) -> None:
        os.truncate(self._chunk(), 0)

    def swap_chunks(self) -> None:
        a = self._chunk()
        b = self.rng.choice([p for p in self.chunks if p != a and p.is_file()])
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)

    def copy_chunk_over(self) -> None:
        a = self._chunk()
        b = self.rng.choice([p for p in self.chunks if p != a and p.is_file()])
        b.write_bytes(a.read_bytes())

    def old_format_chunk(self) -> None:
        path = self._chunk()
        raw = bytearray(path.read_bytes())
        raw[4] = 1
        path.write_bytes(raw)

    def _forged(self, config: dict[str, Any], payload: bytes) -> None:
        path = self._chunk()
        origin, index = self.chunks[path]
        data = self.files[origin][index * CS : (index + 1) * CS]
        if len(payload) >= len(data) * 0.9:
            payload = payload[: len(data) // 2]
        path.write_bytes(forge_record(data, path.name, config, payload))

    def pickle_codec_chunk(self) -> None:
        import pickle

        self._forged(
            {"id": "pickle"}, pickle.dumps(_Marker(str(self.victim / "code-ran")))
        )

    def unknown_codec_chunk(self) -> None:
        self._forged({"id": "json2", "encoding": "utf-8"}, b"[]")

    def symlink_chunk(self) -> None:
        path = self._chunk()
        path.unlink()
        os.symlink(self.victim / "data.bin", path)

    def dir_as_chunk(self) -> None:
        path = self._chunk()
        path.unlink()
        path.mkdir()
        (path / "inner").write_bytes(b"x" * 100)

    def _set_size(self, new: Callable[[int], str]) -> None:
        found = [
            (r, m)
            for r in records(self.cache)
            if (m := re.search(rb'"size":\s*(\d+)', r.read_bytes()))
        ]
        if not found:  # every record is damaged already
            return
        record, match = self.rng.choice(found)
        text = record.read_text()
        size = int(match.group(1))
        record.write_text(re.sub(r'"size":\s*\d+', f'"size":{new(size)}', text))

    def version_infinity(self) -> None:
        self._set_size(lambda s: "Infinity")

    def version_negative(self) -> None:
        self._set_size(lambda s: str(-s))

    def version_flip_digit(self) -> None:
        self._set_size(lambda s: str(s + self.rng.choice((-1, 1, 10, -10))))

    def version_garbage(self) -> None:
        record = self._record()
        record.write_bytes(self.rng.randbytes(self.rng.randrange(0, 200)))

    def version_misfiled(self) -> None:
        recs = records(self.cache)
        a, b = self.rng.sample(recs, 2)
        b.write_bytes(a.read_bytes())

    def version_unchecksummed(self) -> None:
        record = self._record()
        body = json.loads(record.read_text())
        body.pop("crc32c", None)
        record.write_text(json.dumps(body))

    def usage_garbage(self) -> None:
        (self.cache / "usage").write_bytes(self.rng.randbytes(8))

    def usage_short(self) -> None:
        (self.cache / "usage").write_bytes(b"\x01\x02\x03")

    def usage_huge(self) -> None:
        (self.cache / "usage").write_bytes((2**62).to_bytes(8, "little"))

    def _replace_with_link(self, path: Path) -> None:
        if path.is_symlink():
            return
        shutil.rmtree(path)
        os.symlink(self.victim, path)

    def symlink_meta(self) -> None:
        self._replace_with_link(self.cache / "meta")

    def symlink_tmp(self) -> None:
        self._replace_with_link(self.cache / "tmp")

    def symlink_shard(self) -> None:
        self._replace_with_link(self._chunk().parent)

    def stray_in_shard(self) -> None:
        shard = self._chunk().parent
        (shard / f"junk-{self.rng.randrange(1000)}").write_bytes(b"j" * 3000)

    def misplaced_chunk(self) -> None:
        path = self._chunk()
        other = "00" if path.parent.name != "00" else "01"
        (self.cache / "chunks" / other).mkdir(exist_ok=True)
        shutil.copyfile(path, self.cache / "chunks" / other / path.name)

    def stray_top(self) -> None:
        (self.cache / "chunks" / "README").write_text("stray")

    def stray_dir_top(self) -> None:
        d = self.cache / "chunks" / "lost+found"
        d.mkdir(exist_ok=True)
        os.symlink(self.victim / "precious.json", d / "link")


@pytest.mark.parametrize("seed", range(40))
def test_cache_state_fuzzer(tmp_path, origin_dir, victim, capsys, seed):
    rng = random.Random(seed)
    compression = "zstd" if seed % 4 == 3 else None
    cache = tmp_path / "cache"
    warm(cache, origin_dir, compression=compression)
    before = victim()
    kinds = rng.sample(DAMAGE_KINDS, rng.randint(1, 3))
    damager = Damager(cache, origin_dir, victim.root, rng)
    for kind in kinds:
        damager.apply(kind)

    # verify finds it and touches nothing
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 1, (kinds, doc)
    assert victim() == before

    # readers get exact bytes (or refuse a cache laid out around symlinks)
    if _REFUSING & set(kinds):
        with pytest.raises(NotADirectoryError):
            read_all(cache, origin_dir, compression=compression)
    else:
        read_all(cache, origin_dir, compression=compression)
    assert victim() == before

    # --repair fixes everything, then all is clean and exact
    rc, doc = cli("verify", "--repair", "--json", cache=cache, capsys=capsys)
    assert rc == 0, (kinds, doc)
    assert all(d["removed"] for d in doc["damaged"])
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 0, (kinds, doc)
    read_all(cache, origin_dir, compression=compression)
    rc, doc = cli("verify", "--json", cache=cache, capsys=capsys)
    assert rc == 0, (kinds, doc)
    assert usage_counter(cache) == counted(cache)
    assert victim() == before
    assert not (victim.root / "code-ran").exists()


def test_verify_runs_as_a_command(tmp_path, origin_dir, victim):
    """The console entry point, in its own process, on a damaged cache."""
    cache = tmp_path / "cache"
    warm(cache, origin_dir)
    before = victim()
    shutil.rmtree(cache / "meta")
    os.symlink(victim.root, cache / "meta")
    cmd = [sys.executable, "-m", "cachefs.cli", "verify", "--repair", "--json"]
    cmd += ["--cache-dir", str(cache), "--chunk-size", str(CS)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert victim() == before
