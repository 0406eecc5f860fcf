"""Every path call takes and returns paths as the target does (issue 21 item 1).

Each check runs the same call on cachefs and on the target filesystem itself,
for s3 (moto), file, http (the loopback origin) and memory, with the target's
protocol prefix on the pattern and without it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from cachefs import CacheFileSystem
from cachefs.data import ShardDataset
from cachefs.testing import HTTPOrigin

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ("tests.s3_server",)

FILES = {
    **{f"train/images/{i}.png": bytes([i]) * (100 + i) for i in range(6)},
    **{f"train/shards/shard-{i:02d}.bin": bytes([i]) * 4000 for i in range(3)},
    "train/labels.txt": b"labels",
}


@dataclass
class Site:
    """One target: the cache over it, the target itself, and its roots."""

    name: str
    cache: CacheFileSystem
    target: AbstractFileSystem
    url: str  # the dataset's root as a URL with the target's protocol
    bare: str  # the same root as the target's own path (http: the URL)


def _memory_site(tmp_path: Path) -> Iterator[Site]:
    root = f"/paths-{uuid.uuid4().hex}"
    target = fsspec.filesystem("memory")
    for name, data in FILES.items():
        target.pipe_file(f"{root}/{name}", data)
    cache = CacheFileSystem(
        target_protocol="memory",
        cache_dir=str(tmp_path / "cache"),
        skip_instance_cache=True,
    )
    try:
        yield Site("memory", cache, target, f"memory://{root}", root)
    finally:
        target.rm(root, recursive=True)


def _file_site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "data"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    cache = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(tmp_path / "cache"),
        skip_instance_cache=True,
    )
    yield Site("file", cache, fsspec.filesystem("file"), f"file://{root}", str(root))


def _http_site(tmp_path: Path) -> Iterator[Site]:
    with HTTPOrigin(files=dict(FILES)) as origin:
        cache = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            skip_instance_cache=True,
        )
        target = fsspec.filesystem("http", skip_instance_cache=True)
        yield Site("http", cache, target, origin.url, origin.url)


def _s3_site(tmp_path: Path, server: S3Server) -> Iterator[Site]:
    bucket = server.new_bucket()
    client = server.client()
    for name, data in FILES.items():
        client.put_object(Bucket=bucket, Key=name, Body=data)
    cache = CacheFileSystem(
        target_protocol="s3",
        target_options=server.target_options,
        cache_dir=str(tmp_path / "cache"),
        skip_instance_cache=True,
    )
    target = fsspec.filesystem("s3", skip_instance_cache=True, **server.target_options)
    yield Site("s3", cache, target, f"s3://{bucket}", bucket)


@pytest.fixture(params=["s3", "file", "http", "memory"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        yield from _s3_site(tmp_path, server)
    else:
        maker = {"file": _file_site, "http": _http_site, "memory": _memory_site}
        yield from maker[request.param](tmp_path)


def both(site: Site, call: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Return what cachefs and the target answer to the same call."""
    mine = getattr(site.cache, call)(*args, **kwargs)
    theirs = getattr(site.target, call)(*args, **kwargs)
    return mine, theirs


@pytest.mark.parametrize("form", ["url", "bare", "chained"])
def test_glob_matches_what_the_target_matches(site: Site, form: str) -> None:
    root = {"url": site.url, "bare": site.bare, "chained": site.url}[form]
    pattern = f"{root}/train/images/*.png"
    mine = site.cache.glob(f"cachefs::{pattern}" if form == "chained" else pattern)
    theirs = site.target.glob(pattern)
    assert len(theirs) == 6
    assert sorted(mine) == sorted(theirs)
    assert site.cache.glob(f"{root}/train/**/shard-0*.bin") == site.target.glob(
        f"{root}/train/**/shard-0*.bin"
    )


@pytest.mark.parametrize("form", ["url", "bare"])
def test_find_ls_walk_expand_path_as_the_target(site: Site, form: str) -> None:
    root = site.url if form == "url" else site.bare
    mine, theirs = both(site, "find", f"{root}/train")
    assert len(theirs) == len(FILES) and mine == theirs
    mine, theirs = both(site, "ls", f"{root}/train/images", detail=False)
    assert sorted(mine) == sorted(theirs) and len(theirs) == 6
    mine, theirs = both(site, "expand_path", f"{root}/train/images/", recursive=True)
    assert sorted(mine) == sorted(theirs)
    walked = [(d, sorted(f)) for d, _, f in site.cache.walk(f"{root}/train")]
    walked_t = [(d, sorted(f)) for d, _, f in site.target.walk(f"{root}/train")]
    assert sorted(walked) == sorted(walked_t)


def test_get_recursive_and_open_files_take_the_targets_urls(
    site: Site, tmp_path: Path
) -> None:
    dest = tmp_path / "got"
    site.cache.get(f"{site.url}/train/images/", str(dest), recursive=True)
    got = sorted(p.name for p in dest.rglob("*.png"))
    assert got == [f"{i}.png" for i in range(6)]
    assert (dest / "3.png").read_bytes() == FILES["train/images/3.png"]
    files = site.cache.glob(f"{site.url}/train/shards/*.bin")
    opened = fsspec.open_files(
        [site.cache.unstrip_protocol(f) for f in files],
        cachefs={"cache_dir": str(tmp_path / "cache"), **_target_options(site)},
    )
    assert [f.open().read() for f in opened] == [
        FILES[f"train/shards/shard-{i:02d}.bin"] for i in range(3)
    ]


def _target_options(site: Site) -> dict[str, Any]:
    if site.name == "s3":
        return {"target_options": dict(site.cache.fs.storage_options)}
    return {}


def test_shard_dataset_globs_the_targets_urls(site: Site) -> None:
    data = ShardDataset(
        f"{site.url}/train/shards/shard-*.bin",
        fs=site.cache,
        format="raw",
        shuffle=False,
        rank=0,
        world_size=1,
    )
    samples = [bytes(s["data"]) for s in data]
    assert samples == [FILES[f"train/shards/shard-{i:02d}.bin"] for i in range(3)]


def test_cp_with_a_glob_on_s3(s3_server: S3Server, tmp_path: Path) -> None:
    (site,) = list(_s3_site(tmp_path, s3_server))
    site.cache.cp(f"{site.url}/train/images/*.png", f"{site.url}/copy/")
    copied = site.target.glob(f"{site.url}/copy/*.png")
    assert len(copied) == 6
    assert site.cache.cat_file(f"{site.url}/copy/2.png") == FILES["train/images/2.png"]
    # The copy is seen at once through the cache (its listings were dropped).
    assert len(site.cache.glob(f"{site.url}/copy/*.png")) == 6
