"""polars through cachefs: the file-object route (issue 21 item 9).

polars rejects ``cachefs::`` URLs, so users hand it a file object from
``fsspec.open``; it reads the whole file through the object. The first read
goes to the origin once; a new process reads it with no origin request.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest

from cachefs.testing import HTTPOrigin

pl = pytest.importorskip("polars")


def _parquet() -> tuple[bytes, object]:
    rng = np.random.default_rng(21)
    frame = pl.DataFrame(
        {"id": np.arange(50_000), "x": rng.random(50_000), "k": np.arange(50_000) % 7}
    )
    out = io.BytesIO()
    frame.write_parquet(out)
    return out.getvalue(), frame


def test_polars_reads_through_a_cachefs_file_object(tmp_path: Path) -> None:
    raw, frame = _parquet()
    cache = str(tmp_path / "cache")
    with HTTPOrigin(files={"t/x.parquet": raw}) as origin:
        url = f"cachefs::{origin.url_for('t/x.parquet')}"
        options = {"cache_dir": cache, "metadata_ttl": None}
        with fsspec.open(url, "rb", cachefs=options) as f:
            got = pl.read_parquet(f)
        assert got.equals(frame)
        assert origin.stats.bytes_sent == len(raw)  # the whole file, once
        # polars refuses the chained URL itself (why the file-object route).
        with pytest.raises(Exception):  # noqa: B017 - polars' own error type
            pl.read_parquet(url)
        origin.reset_stats()
        script = (
            "import fsspec, polars as pl\n"
            f"with fsspec.open({url!r}, 'rb', cachefs={options!r}) as f:\n"
            "    print(pl.read_parquet(f).height)\n"
        )
        fresh = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.split() == ["50000"]
        assert origin.stats.requests == 0  # a new process: all from the cache
