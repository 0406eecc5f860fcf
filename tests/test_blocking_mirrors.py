"""The blocking methods fsspec mirrors from coroutines, built once per class.

fsspec builds a blocking twin of each coroutine on every instance; cachefs
builds them on its class (a new process's first open paid 0.26 ms for it,
issue 20). Each still finds its coroutine when called, names its timeouts
(through ``call_sync``), and an asynchronous cache's are served by its
synchronous twin. A cancellation inside is an error, not ``None``.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest
from fsspec.asyn import get_loop
from fsspec.exceptions import FSTimeoutError

from cachefs import CacheFileSystem
from cachefs.bridge import call_sync


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.bin").write_bytes(b"hello")
    (root / "a" / "y.bin").write_bytes(b"world!")
    return root


def _fs(tmp_path: Path, cls: type[CacheFileSystem] = CacheFileSystem, **kw: Any) -> Any:
    return cls(
        target_protocol="file",
        cache_dir=str(tmp_path / "cache"),
        skip_instance_cache=True,
        **kw,
    )


def test_an_instance_carries_no_mirrors_and_its_class_ones_work(tmp_path):
    root = _tree(tmp_path)
    fs = _fs(tmp_path)
    mirrored = [n for n, v in vars(fs).items() if hasattr(v, "__wrapped__")]
    assert mirrored == []
    assert "ls" in vars(CacheFileSystem) and "walk" in vars(CacheFileSystem)
    assert sorted(fs.ls(str(root / "a"), detail=False)) == sorted(
        [str(root / "a" / "b"), str(root / "a" / "y.bin")]
    )
    assert fs.info(str(root / "a" / "y.bin"))["size"] == 6
    assert fs.exists(str(root / "a" / "b" / "x.bin"))
    walked = list(fs.walk(str(root)))  # an async generator's blocking twin
    assert [(len(dirs), len(files)) for _, dirs, files in walked] == [
        (1, 0),
        (1, 1),
        (0, 1),
    ]
    assert CacheFileSystem.ls.__doc__
    fs.close()


class _Sized(CacheFileSystem):
    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        info = await super()._info(path, **kwargs)
        return {**info, "seen_by": "subclass"}


def test_a_subclass_override_is_the_coroutine_run(tmp_path):
    root = _tree(tmp_path)
    fs = _fs(tmp_path, _Sized)
    assert fs.info(str(root / "a" / "y.bin"))["seen_by"] == "subclass"
    fs.close()


def test_an_asynchronous_cache_serves_blocking_calls_by_its_twin(tmp_path):
    root = _tree(tmp_path)
    fs = _fs(tmp_path, asynchronous=True)
    assert fs.info(str(root / "a" / "y.bin"))["size"] == 6
    assert fs.cat_file(str(root / "a" / "b" / "x.bin")) == b"hello"
    assert len(list(fs.walk(str(root)))) == 3
    twin = fs.sync_twin()
    assert twin is not fs and not twin.asynchronous
    twin.close()


def test_a_cancelled_wait_on_the_loop_is_an_error_not_none() -> None:
    # fsspec's sync returns None for a coroutine that raised CancelledError;
    # a caller unpacking that met a TypeError far from the cause.
    async def waits_on_a_cancelled_request() -> int:
        request = asyncio.get_running_loop().create_future()
        request.cancel()
        await request
        return 1

    with pytest.raises(OSError, match="waits_on_a_cancelled_request") as info:
        call_sync(get_loop(), waits_on_a_cancelled_request)
    assert info.value.errno == errno.ECANCELED


def test_a_timeout_on_the_loop_is_still_a_timeout() -> None:
    async def waits_long() -> None:
        await asyncio.sleep(60)

    with pytest.raises(FSTimeoutError):
        call_sync(get_loop(), waits_long, timeout=0.05)
