"""DuckDB queries through a registered cachefs (issue 21 item 5)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin

duckdb = pytest.importorskip("duckdb")


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www" / "data"
    root.mkdir(parents=True)
    for i in range(3):
        table = pa.table({"a": list(range(i * 100, i * 100 + 100))})
        pq.write_table(table, root / f"part-{i}.parquet")
    return root.parent


def test_duckdb_reads_parquet_through_cachefs_and_repeats_for_free(
    www: Path, tmp_path: Path
) -> None:
    with HTTPOrigin(root=str(www)) as origin:
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            skip_instance_cache=True,
        )
        con = duckdb.connect()
        con.register_filesystem(fs)
        one = f"cachefs://{origin.url_for('data/part-1.parquet')}"
        many = f"cachefs://{origin.url}/data/*.parquet"
        query = "select count(*), sum(a) from read_parquet('{}')"
        assert con.sql(query.format(one)).fetchall() == [(100, sum(range(100, 200)))]
        assert con.sql(query.format(many)).fetchall() == [(300, sum(range(300)))]
        assert origin.stats.requests > 0
        origin.reset_stats()
        assert con.sql(query.format(many)).fetchall() == [(300, sum(range(300)))]
        assert origin.stats.requests == 0
        # A new connection and a new cache over the same directory (a new
        # process's view): the listing, versions and chunks are on disk.
        again = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            skip_instance_cache=True,
        )
        con2 = duckdb.connect()
        con2.register_filesystem(again)
        assert con2.sql(query.format(many)).fetchall() == [(300, sum(range(300)))]
        assert origin.stats.requests == 0


def test_duckdb_over_a_local_directory(www: Path, tmp_path: Path) -> None:
    fs = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(tmp_path / "cache"),
        skip_instance_cache=True,
    )
    con = duckdb.connect()
    con.register_filesystem(fs)
    for url in (
        f"cachefs://{www}/data/*.parquet",
        f"cachefs://file://{www}/data/*.parquet",
    ):
        got = con.sql(f"select sum(a) from read_parquet('{url}')").fetchall()
        assert got == [(sum(range(300)),)]
    assert fs.modified(f"{www}/data/part-0.parquet").timestamp() == pytest.approx(
        (www / "data" / "part-0.parquet").stat().st_mtime
    )
