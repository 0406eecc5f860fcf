"""One storage_options dict passed to every library (issue 21 item 2).

fsspec's URL chaining writes the caller's top-level keywords into the nested
``{"cachefs": {...}}`` dict (``_un_chain`` updates the dict it popped), so
after ``xr.open_zarr`` the dict says ``asynchronous=True``; the next library
that reads synchronously with it (pandas) gets an asynchronous cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cachefs.testing import HTTPOrigin

xr = pytest.importorskip("xarray")


def test_one_options_dict_for_xarray_then_pandas(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    xr.Dataset({"t": (("x",), np.arange(50.0))}).to_zarr(
        www / "store.zarr", zarr_format=2, consolidated=True
    )
    frame = pd.DataFrame({"a": range(100), "b": [f"r{i}" for i in range(100)]})
    frame.to_csv(www / "table.csv", index=False)
    so = {"cachefs": {"cache_dir": str(tmp_path / "cache")}}
    with HTTPOrigin(root=str(www)) as origin:
        store = f"cachefs::{origin.url_for('store.zarr')}"
        table = f"cachefs::{origin.url_for('table.csv')}"
        assert float(xr.open_zarr(store, storage_options=so).t.sum()) == 1225.0
        # fsspec's doing (upstream), not ours: the dict was changed.
        assert so["cachefs"].get("asynchronous") is True
        pd.testing.assert_frame_equal(pd.read_csv(table, storage_options=so), frame)
        pd.testing.assert_frame_equal(
            pd.read_parquet(_parquet(www, origin, frame), storage_options=so), frame
        )
        origin.reset_stats()
        pd.testing.assert_frame_equal(pd.read_csv(table, storage_options=so), frame)
        assert float(xr.open_zarr(store, storage_options=so).t.sum()) == 1225.0
        assert origin.stats.requests == 0  # repeat reads cost the origin nothing


def _parquet(www: Path, origin: HTTPOrigin, frame: pd.DataFrame) -> str:
    frame.to_parquet(www / "table.parquet", index=False)
    return f"cachefs::{origin.url_for('table.parquet')}"
