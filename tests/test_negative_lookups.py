"""Misses remembered like versions: a warmed store opens offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin

xr = pytest.importorskip("xarray")


def _fs(cache: Path, **kw: object) -> CacheFileSystem:
    return CacheFileSystem(
        target_protocol="http", cache_dir=str(cache), skip_instance_cache=True, **kw
    )


def test_warmed_xarray_store_opens_offline_with_no_origin_request(
    tmp_path: Path,
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    data = np.arange(200.0).reshape(10, 20)
    xr.Dataset({"t": (("x", "y"), data)}, attrs={"title": "demo"}).to_zarr(
        root / "store.zarr", zarr_format=2, consolidated=True
    )
    options = {"cache_dir": str(tmp_path / "cache"), "metadata_ttl": None}
    with HTTPOrigin(root=str(root)) as origin:
        url = f"cachefs::{origin.url}/store.zarr"
        warm = xr.open_zarr(url, storage_options={"cachefs": options}).load()
        assert warm.attrs["title"] == "demo"
        origin.reset_stats()
        script = (
            "import sys, xarray as xr\n"
            f"ds = xr.open_zarr({url!r}, storage_options={{'cachefs': {options!r}}})\n"
            "print(float(ds.t.load().sum()))\n"
        )
        online = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert online.returncode == 0, online.stderr
        assert origin.stats.requests == 0  # the 404s of the warm are remembered
    offline = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert offline.returncode == 0, offline.stderr
    assert float(offline.stdout) == data.sum()


def test_a_miss_is_remembered_under_the_ttl_and_forgotten_on_write(
    tmp_path: Path,
) -> None:
    with HTTPOrigin(files={"a.bin": b"a"}) as origin:
        url = origin.url_for("absent.bin")
        fs = _fs(tmp_path / "cache", metadata_ttl=60)
        for _ in range(3):
            with pytest.raises(FileNotFoundError):
                fs.cat_file(url)
            assert not fs.exists(url)
        assert origin.stats.requests <= 2  # learned once (a GET, maybe a HEAD)
        origin.set_file("absent.bin", b"now here")
        fs.invalidate(url)  # what a write through cachefs does
        assert fs.cat_file(url) == b"now here"
        # metadata_ttl=0 keeps nothing: every lookup asks.
        nottl = _fs(tmp_path / "cache0", metadata_ttl=0)
        origin.reset_stats()
        for _ in range(2):
            with pytest.raises(FileNotFoundError):
                nottl.info(origin.url_for("gone.bin"))
        assert origin.stats.requests >= 2


def test_an_unreachable_origin_is_not_remembered_as_a_miss(tmp_path: Path) -> None:
    with HTTPOrigin(files={"a.bin": b"abc"}) as origin:
        url = origin.url_for("a.bin")
    fs = _fs(tmp_path / "cache", metadata_ttl=None, retries=0)
    for call in (fs.info, fs.cat_file):
        with pytest.raises(OSError):  # fsspec's http says FileNotFoundError
            call(url)
        assert not fs.metadata.is_missing("http", url)
