"""Listings cached under the metadata TTL rules, on disk too (issue 21 items 4, 6, 7).

The records are read back as possibly hostile: damaged, oversized, misfiled,
symlinked or foreign ones are dropped and listed again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachefs import CacheFileSystem
from cachefs.listings import MAX_RECORD, ListingCache, decode_listing, listing_name
from cachefs.testing import HTTPOrigin

FILES = {f"shards/shard-{i:02d}.bin": bytes([i]) * 1000 for i in range(4)}


def _fs(cache: Path, **kw: object) -> CacheFileSystem:
    return CacheFileSystem(
        target_protocol="http", cache_dir=str(cache), skip_instance_cache=True, **kw
    )


def test_a_glob_is_listed_once_and_a_new_process_globs_offline(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HTTPOrigin(files=dict(FILES)) as origin:
        pattern = f"{origin.url}/shards/shard-*.bin"
        fs = _fs(cache, metadata_ttl=None)
        assert len(fs.glob(pattern)) == 4
        listed = origin.stats.requests
        assert listed > 0
        for _ in range(3):
            assert len(fs.glob(pattern)) == 4
            assert len(fs.find(f"{origin.url}/shards")) == 4
            assert len(fs.ls(f"{origin.url}/shards")) == 4
        assert origin.stats.requests - listed <= 2  # one find and one ls, once
        for name in fs.glob(pattern):
            fs.cat_file(name)  # warmed: the job's shards are cached
        fs.wait_idle()
        script = (
            "from cachefs import CacheFileSystem\n"
            f"fs = CacheFileSystem(target_protocol='http', cache_dir={str(cache)!r},"
            " metadata_ttl=None, retries=0)\n"
            f"names = fs.glob({pattern!r})\n"
            "print(len(names), sum(len(fs.cat_file(n)) for n in names))\n"
        )
        origin.reset_stats()
        online = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert online.returncode == 0, online.stderr
        assert origin.stats.requests == 0
    offline = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.split() == ["4", "4000"]


def test_listings_follow_the_ttl_and_writes(tmp_path: Path) -> None:
    with HTTPOrigin(files=dict(FILES)) as origin:
        nottl = _fs(tmp_path / "c0", metadata_ttl=0)
        for _ in range(2):
            nottl.glob(f"{origin.url}/shards/*.bin")
        asked = origin.stats.requests
        nottl.glob(f"{origin.url}/shards/*.bin")
        assert origin.stats.requests > asked  # metadata_ttl=0 keeps nothing
    mem = tmp_path / "mem"
    mem.mkdir()
    (mem / "a.txt").write_bytes(b"a")
    fs = CacheFileSystem(
        target_protocol="file", cache_dir=str(tmp_path / "c1"), skip_instance_cache=True
    )
    assert fs.ls(str(mem), detail=False) == [str(mem / "a.txt")]
    fs.pipe_file(str(mem / "b.txt"), b"b")  # a write through the cache
    assert sorted(fs.ls(str(mem), detail=False)) == [
        str(mem / "a.txt"),
        str(mem / "b.txt"),
    ]


def _records(cache: Path) -> list[Path]:
    return sorted((cache / "meta" / "listings").glob("*.listing"))


@pytest.mark.parametrize(
    "damage", ["flip", "oversize", "misfiled", "bad-entry", "symlink", "not-json"]
)
def test_damaged_listing_records_are_dropped_and_listed_again(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    with HTTPOrigin(files=dict(FILES)) as origin:
        url = f"{origin.url}/shards"
        fs = _fs(cache)
        fs.ls(url)
        (record,) = [
            r for r in _records(cache) if decode_listing(r.read_bytes())[1] == "ls"
        ]
        raw = record.read_bytes()
        body = json.loads(raw)
        if damage == "flip":
            record.write_bytes(raw.replace(b"shard-01", b"shard-99"))
        elif damage == "oversize":
            record.write_bytes(raw + b" " * MAX_RECORD)
        elif damage == "not-json":
            record.write_bytes(b"\xff" * 10)
        elif damage == "symlink":
            target = tmp_path / "planted"
            target.write_bytes(raw)
            record.unlink()
            record.symlink_to(target)
        else:
            # Re-sealed with a valid checksum: the check that is left must hold.
            import crc32c

            body.pop("crc32c")
            if damage == "misfiled":
                body["path"] = f"{origin.url}/elsewhere"
            else:
                body["entries"][0]["name"] = {"nested": "object"}
            canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            body["crc32c"] = crc32c.crc32c(canon)
            record.write_bytes(
                json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
            )
        origin.reset_stats()
        fresh = _fs(cache)
        names = fresh.ls(url, detail=False)
        assert sorted(names) == sorted(origin.url_for(n) for n in FILES)
        assert origin.stats.requests >= 1  # listed again, not served
        assert "dropping listing record" in caplog.text


def test_listing_cache_bounds_what_it_persists(tmp_path: Path) -> None:
    cache = ListingCache(None, tmp_path / "listings")
    huge = [
        {"name": f"b/{i:07d}" + "x" * 4000, "size": 1, "type": "file"}
        for i in range(9000)
    ]
    cache.put("s3", "ls", "b", huge)
    assert not list((tmp_path / "listings").iterdir())  # too large: memory only
    assert cache.get("s3", "ls", "b") == huge
    cache.put(
        "s3", "ls", "c", [{"name": "c/k", "size": 3, "type": "file", "odd": object()}]
    )
    name = listing_name("s3", "ls", "c", "")
    assert (tmp_path / "listings" / name).stat().st_mode & 0o777 == 0o600
    again = ListingCache(None, tmp_path / "listings")
    assert again.get("s3", "ls", "c") == [{"name": "c/k", "size": 3, "type": "file"}]
    assert os.stat(tmp_path / "listings").st_mode & 0o777 == 0o700


def test_an_http_directory_stays_a_directory_in_later_processes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HTTPOrigin(files=dict(FILES)) as origin:
        url = f"{origin.url}/shards/"
        for ttl in (None, 60.0):
            fs = _fs(cache / str(ttl), metadata_ttl=ttl)
            assert fs.info(url)["type"] == "directory"
            later = _fs(cache / str(ttl), metadata_ttl=ttl)
            assert later.isdir(url)
            assert later.info(url)["type"] == "directory"
            assert later.metadata.get("http", url) is None  # no version of a page
            dest = tmp_path / f"got-{ttl}"
            later.get(url, str(dest), recursive=True)
            assert sorted(p.name for p in dest.rglob("*.bin")) == [
                f"shard-{i:02d}.bin" for i in range(4)
            ]


def test_info_in_a_new_process_trusts_the_fresh_record_like_open(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    with HTTPOrigin(files=dict(FILES)) as origin:
        urls = [origin.url_for(n) for n in FILES]
        fs = _fs(cache)  # the default metadata_ttl
        for u in urls:
            assert fs.cat_file(u) == FILES[u.split("/", 3)[3]]
        fs.wait_idle()
        origin.reset_stats()
        later = _fs(cache)
        for u in urls:
            assert later.info(u)["size"] == 1000
            assert later.modified(u).timestamp() > 0
            assert later.cat_file(u)[:1] == bytes([urls.index(u)])
        assert origin.stats.head_requests == 0
        assert origin.stats.requests == 0


def test_cachefs_clear_removes_the_listing_records(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HTTPOrigin(files=dict(FILES)) as origin:
        pattern = f"{origin.url}/shards/shard-*.bin"
        fs = _fs(cache, metadata_ttl=None)
        assert len(fs.glob(pattern)) == 4
        listings = cache / "meta" / "listings"
        stored = sorted(listings.iterdir())
        assert stored
        cleared = subprocess.run(
            [
                sys.executable,
                "-m",
                "cachefs",
                "clear",
                "--cache-dir",
                str(cache),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cleared.returncode == 0, cleared.stderr
        assert json.loads(cleared.stdout)["records"] == len(stored)
        assert list(listings.iterdir()) == []
        # A new cache lists at the origin again: nothing stale survived.
        origin.reset_stats()
        assert len(_fs(cache, metadata_ttl=None).glob(pattern)) == 4
        assert origin.stats.requests > 0
