"""pandas, pyarrow and universal-pathlib reading through cachefs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FSSpecHandler, PyFileSystem
from upath import UPath
from upath.registry import available_implementations

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin

COLUMNS = 8
ROWS = 40_000

# universal-pathlib warns when it has no UPath class for a protocol and falls
# back to a generic one; these tests check what works with that fallback.
UPATH_FALLBACK = (
    "ignore:UPath 'cachefs' filesystem not explicitly implemented:UserWarning"
)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data: dict[str, Any] = {f"c{i}": rng.random(ROWS) for i in range(COLUMNS)}
    data["id"] = np.arange(ROWS)
    data["part"] = np.arange(ROWS) % 3
    data["name"] = [f"row-{i}" for i in range(ROWS)]
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, frame: pd.DataFrame) -> Path:
    """Parquet (one file and a partitioned dataset) and CSV, written locally."""
    root = tmp_path_factory.mktemp("tabular")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, root / "table.parquet", compression="none")
    pq.write_to_dataset(table, str(root / "dataset"), partition_cols=["part"])
    frame.to_csv(root / "table.csv", index=False)
    return root


@pytest.fixture
def served(data_dir: Path) -> Iterator[HTTPOrigin]:
    with HTTPOrigin(root=data_dir) as origin:
        yield origin


def options(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cache_dir": str(tmp_path / "cache"),
        "chunk_size": "64KiB",
        "skip_instance_cache": True,
    }
    out.update(extra)
    return out


# -- pandas --------------------------------------------------------------------


def test_pandas_read_parquet_from_a_local_directory(
    data_dir: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    url = f"cachefs::file://{data_dir}/table.parquet"
    so = {"cachefs": options(tmp_path)}
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=so), frame)
    got = pd.read_parquet(url, storage_options=so, columns=["id", "c3"])
    pd.testing.assert_frame_equal(got, frame[["id", "c3"]])


def test_pandas_read_parquet_from_the_memory_filesystem(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    memory = fsspec.filesystem("memory")
    path = f"/cachefs-tabular-{uuid.uuid4().hex}/table.parquet"
    with memory.open(path, "wb") as f:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), f)
    try:
        got = pd.read_parquet(
            f"cachefs::memory://{path}",
            storage_options={"cachefs": options(tmp_path)},
        )
        pd.testing.assert_frame_equal(got, frame)
    finally:
        memory.rm(path.rsplit("/", 1)[0], recursive=True)


def test_pandas_read_parquet_over_http_second_read_is_free(
    served: HTTPOrigin, frame: pd.DataFrame, tmp_path: Path
) -> None:
    url = "cachefs::" + served.url_for("table.parquet")
    so = {"cachefs": options(tmp_path)}
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=so), frame)
    sent = served.stats.bytes_sent
    assert sent > 0
    # skip_instance_cache: a new CacheFileSystem, as in a new process; the
    # disk tier it shares serves every byte.
    pd.testing.assert_frame_equal(pd.read_parquet(url, storage_options=so), frame)
    assert served.stats.bytes_sent == sent


def test_pandas_csv_read_and_write_through_cachefs(
    served: HTTPOrigin, data_dir: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    url = "cachefs::" + served.url_for("table.csv")
    so = {"cachefs": options(tmp_path)}
    pd.testing.assert_frame_equal(pd.read_csv(url, storage_options=so), frame)
    parts = list(pd.read_csv(url, storage_options=so, chunksize=7000))
    pd.testing.assert_frame_equal(pd.concat(parts), frame)
    # Writing goes through to the target, and the cache sees the new file.
    out = f"cachefs::file://{tmp_path}/out.csv"
    local = {"cachefs": options(tmp_path, skip_instance_cache=False)}
    frame.head(10).to_csv(out, index=False, storage_options=local)
    pd.testing.assert_frame_equal(
        pd.read_csv(out, storage_options=local), frame.head(10)
    )
    frame.tail(5).to_csv(out, index=False, storage_options=local)
    pd.testing.assert_frame_equal(
        pd.read_csv(out, storage_options=local), frame.tail(5).reset_index(drop=True)
    )
    assert pd.read_csv(tmp_path / "out.csv").shape == (5, frame.shape[1])


# -- pyarrow -------------------------------------------------------------------


def test_pyarrow_reads_columns_by_range(
    served: HTTPOrigin, data_dir: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    fs = CacheFileSystem(target_protocol="http", **options(tmp_path))
    handler = PyFileSystem(FSSpecHandler(fs))
    url = served.url_for("table.parquet")
    table = pq.read_table(url, filesystem=handler, columns=["c3"])
    pd.testing.assert_frame_equal(table.to_pandas(), frame[["c3"]])
    # One column of eleven: the footer and that column chunk, not the file.
    size = (data_dir / "table.parquet").stat().st_size
    assert served.stats.bytes_sent < 0.3 * size
    sent = served.stats.bytes_sent
    table = pq.read_table(url, filesystem=handler, columns=["c3"])
    assert served.stats.bytes_sent == sent
    # pyarrow also takes the fsspec filesystem itself.
    whole = pq.read_table(url, filesystem=fs).to_pandas()
    pd.testing.assert_frame_equal(whole, frame)
    meta = pq.ParquetFile(url, filesystem=fs).metadata
    assert meta.num_rows == ROWS


def test_pyarrow_dataset_over_a_cached_directory(
    data_dir: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    fs = CacheFileSystem(target_protocol="file", **options(tmp_path))
    handler = PyFileSystem(FSSpecHandler(fs))
    dataset = pads.dataset(
        str(data_dir / "dataset"), filesystem=handler, partitioning="hive"
    )
    assert len(dataset.files) == 3
    table = dataset.to_table(filter=pads.field("part") == 1, columns=["id", "c0"])
    expected = frame[frame.part == 1][["id", "c0"]]
    got = table.to_pandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))
    assert fs.cache_stats()["origin"]["bytes"] > 0


# -- universal-pathlib ---------------------------------------------------------


def test_upath_has_a_cachefs_implementation() -> None:
    """UPath needs a registered class for "cachefs".

    Without one it falls back to a generic class with a UserWarning (an error
    under this suite's warning filter) and treats cachefs as a plain
    filesystem rather than a pass-through cache like ``simplecache``.
    """
    assert "cachefs" in available_implementations()
    cls = type(UPath("cachefs::memory://x/y.bin"))
    assert cls.__module__.startswith("cachefs")


@pytest.mark.filterwarnings(UPATH_FALLBACK)
def test_upath_reads_through_cachefs(
    data_dir: Path, frame: pd.DataFrame, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    path = UPath(f"cachefs::file://{data_dir}/table.parquet", cache_dir=str(cache_dir))
    assert isinstance(path.fs, CacheFileSystem)
    assert path.fs.cache_dirs == [cache_dir]
    assert path.exists() and path.is_file()
    assert path.stat().st_size == (data_dir / "table.parquet").stat().st_size
    assert path.read_bytes() == (data_dir / "table.parquet").read_bytes()
    with path.open("rb") as f:
        pd.testing.assert_frame_equal(pd.read_parquet(f), frame)
    table = pq.read_table(path.path, filesystem=path.fs, columns=["id"])
    assert table.num_rows == ROWS
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["dataset", "table.csv", "table.parquet"]


@pytest.mark.filterwarnings(UPATH_FALLBACK)
def test_upath_over_http_serves_repeats_from_the_cache(
    served: HTTPOrigin, data_dir: Path, tmp_path: Path
) -> None:
    path = UPath(
        "cachefs::" + served.url_for("table.csv"), cache_dir=str(tmp_path / "c")
    )
    expected = (data_dir / "table.csv").read_bytes()
    assert path.read_bytes() == expected
    sent = served.stats.bytes_sent
    assert path.read_bytes() == expected
    assert path.read_text().splitlines()[0].startswith("c0,")
    assert served.stats.bytes_sent == sent


@pytest.mark.filterwarnings(UPATH_FALLBACK)
def test_upath_derived_paths_keep_the_chain(data_dir: Path, tmp_path: Path) -> None:
    """``parent``, ``/`` and ``with_name`` must name the cached target path.

    With the fallback class the derived paths render as
    ``cachefs:///<dir>/table.csv::file:///<dir>/table.parquet``: the new
    path on the cachefs segment and the stale original one on the target.
    """
    cache_dir = str(tmp_path / "cache")
    path = UPath(f"cachefs::file://{data_dir}/table.parquet", cache_dir=cache_dir)
    assert str(path) == f"cachefs::file://{data_dir}/table.parquet"
    sibling = path.with_name("table.csv")
    assert str(sibling) == f"cachefs::file://{data_dir}/table.csv"
    assert str(path.parent) == f"cachefs::file://{data_dir}"
    assert str(path.parent / "table.csv") == str(sibling)
    assert sibling.read_bytes() == (data_dir / "table.csv").read_bytes()
    # The string form is a URL that opens the same file.
    again = UPath(str(sibling), cache_dir=cache_dir)
    assert again.read_bytes() == (data_dir / "table.csv").read_bytes()


@pytest.mark.filterwarnings(UPATH_FALLBACK)
def test_upath_over_http_derives_lists_and_globs(
    served: HTTPOrigin, data_dir: Path, tmp_path: Path
) -> None:
    """``parent``, ``/``, ``iterdir`` and ``glob`` over an HTTP target.

    UPath rebuilds a derived path from the target's URL with
    ``protocol="cachefs"`` and used to refuse it ("'cachefs' incompatible
    with 'http'"); fsspec's ``simplecache::`` still does.
    """
    path = UPath("cachefs::" + served.url_for("table.csv"), cache_dir=str(tmp_path))
    parent = path.parent
    base = served.url_for("table.csv").rsplit("/", 1)[0]
    assert str(parent).rstrip("/") == "cachefs::" + base
    sibling = parent / "table.parquet"
    assert sibling.read_bytes() == (data_dir / "table.parquet").read_bytes()
    assert parent.is_dir() and not path.is_dir() and path.is_file()
    names = sorted(p.name for p in parent.iterdir())
    assert {"table.csv", "table.parquet"} <= set(names)
    assert sorted(p.name for p in parent.glob("*.csv")) == ["table.csv"]
