"""Hugging Face ``datasets`` over cachefs: what works, and the upstream limit."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cachefs.testing import HTTPOrigin

datasets = pytest.importorskip("datasets")

ROWS = 500


def _parquet() -> bytes:
    frame = pd.DataFrame({"id": range(ROWS), "text": [f"row {i}" for i in range(ROWS)]})
    out = io.BytesIO()
    frame.to_parquet(out, row_group_size=100)
    return out.getvalue()


def rows(urls: list[str], cache_dir: str) -> Iterator[dict[str, Any]]:
    """The recipe: read the files through cachefs, hand rows to datasets."""
    for url in urls:
        with fsspec.open(url, cachefs={"cache_dir": cache_dir}) as f:
            for batch in pq.ParquetFile(f).iter_batches():
                yield from batch.to_pylist()


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    return tmp_path


@pytest.mark.parametrize("streaming", [False, True])
def test_recipe_reads_through_the_cache(hf_cache: Path, streaming: bool) -> None:
    data = _parquet()
    with HTTPOrigin(files={"t/train.parquet": data}) as origin:
        gen_kwargs = {
            "urls": ["cachefs::" + origin.url_for("t/train.parquet")],
            "cache_dir": str(hf_cache / "cachefs"),
        }
        for attempt in range(2):  # the second reads the cache, not the origin
            if streaming:
                dataset = datasets.IterableDataset.from_generator(
                    rows, gen_kwargs=gen_kwargs
                )
            else:  # a fresh Arrow cache, so the generator really runs again
                dataset = datasets.Dataset.from_generator(
                    rows, gen_kwargs=gen_kwargs, cache_dir=str(hf_cache / f"a{attempt}")
                )
            got = list(dataset)
            assert [r["id"] for r in got] == list(range(ROWS))
            assert got[7]["text"] == "row 7"
        assert origin.stats.bytes_sent == len(data)


@pytest.mark.xfail(
    raises=(FileNotFoundError, TypeError),
    strict=True,
    reason="datasets' resolve_pattern rebuilds 'cachefs::URL' as 'URL::URL' "
    "(upstream; docs/integrations.md has the report)",
)
@pytest.mark.parametrize("prefix", ["cachefs::", "simplecache::"])
def test_load_dataset_with_a_chained_url_is_broken_upstream(
    hf_cache: Path, prefix: str
) -> None:
    with HTTPOrigin(files={"t/train.parquet": _parquet()}) as origin:
        datasets.load_dataset(
            "parquet",
            data_files=prefix + origin.url_for("t/train.parquet"),
            split="train",
            cache_dir=str(hf_cache / "hf"),
        )
