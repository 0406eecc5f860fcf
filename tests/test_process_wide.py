"""``cache_protocols``: one line that caches a protocol for the whole process.

For libraries that build their own URLs and cannot take ``cachefs::``:
Hugging Face ``datasets.load_dataset`` (both modes) and polars-style readers
that go through ``fsspec.open``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from cachefs import CacheFileSystem
from cachefs.process_wide import cache_protocols, cached_protocols, uncache_protocols
from cachefs.testing import HTTPOrigin

datasets = pytest.importorskip("datasets")

ROWS = 300


def _parquet() -> bytes:
    frame = pd.DataFrame({"id": range(ROWS), "text": [f"row {i}" for i in range(ROWS)]})
    out = io.BytesIO()
    frame.to_parquet(out, row_group_size=100)
    return out.getvalue()


@pytest.fixture
def cached_http(tmp_path: Path) -> Iterator[Path]:
    cache_dir = tmp_path / "cachefs"
    cache_protocols("http", cache_dir=str(cache_dir), chunk_size="256KiB")
    try:
        yield cache_dir
    finally:
        uncache_protocols("http")
    assert "http" not in cached_protocols()


def test_fsspec_calls_read_through_the_cache(cached_http: Path) -> None:
    data = bytes(range(256)) * 4096
    with HTTPOrigin(files={"d/x.bin": data}) as origin:
        url = origin.url_for("d/x.bin")
        fs, path = fsspec.core.url_to_fs(url)
        assert isinstance(fs, CacheFileSystem)
        assert path == url  # the target's path form, no cachefs:: prefix
        for _ in range(3):
            with fsspec.open(url) as f:
                assert f.read() == data
            assert fsspec.filesystem("http").cat_file(url, start=5, end=9) == data[5:9]
        assert origin.stats.bytes_sent == len(data)
    assert any(cached_http.iterdir())


def test_uncache_restores_the_original_class(cached_http: Path) -> None:
    uncache_protocols("http")
    assert not isinstance(fsspec.filesystem("http"), CacheFileSystem)


def test_bad_calls_name_the_problem() -> None:
    with pytest.raises(ValueError, match="at least one protocol"):
        cache_protocols()
    with pytest.raises(ValueError, match="target_protocol="):
        cache_protocols("http", target_protocol="s3")
    with pytest.raises(ValueError, match="'cachefs'"):
        cache_protocols("cachefs")
    with pytest.raises(ValueError, match="'nosuchproto'"):
        cache_protocols("nosuchproto")


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_reads_the_origin_once(
    cached_http: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    data = _parquet()
    with HTTPOrigin(files={"t/train.parquet": data}) as origin:
        url = origin.url_for("t/train.parquet")
        for attempt in range(2):
            # A fresh datasets cache each time, so datasets itself downloads
            # again: the second download is served by cachefs.
            dataset = datasets.load_dataset(
                "parquet",
                data_files=url,
                split="train",
                streaming=streaming,
                cache_dir=str(tmp_path / f"hf{attempt}"),
            )
            got = list(dataset)
            assert [r["id"] for r in got] == list(range(ROWS))
            assert got[7]["text"] == "row 7"
        assert origin.stats.bytes_sent == len(data)
