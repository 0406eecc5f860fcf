"""Any fsspec filesystem, slower and less reliable on purpose.

:class:`LatencyFileSystem` wraps a real filesystem (sync or async: memory,
local, HTTP, ...) and adds what remote storage does to a reader: a delay
before every call, calls that fail, reads that come back short. Like zarr's
``LatencyStore`` it wraps by explicit delegation, so what a test exercises
is the code under test against real bytes, never a mock of cachefs itself.

Faults are chosen by the order of calls (``fail_first``, ``fail_every``,
``short_every``) or by a seeded generator (``fail_rate``), so a test says
exactly which call fails and a run repeats.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from fsspec.asyn import AsyncFileSystem
from fsspec.spec import AbstractFileSystem

__all__ = ["LatencyFileSystem"]

#: What a failing call raises: an exception type, or a factory given the
#: method's name and the path.
ErrorFactory = type[BaseException] | Callable[[str, str], BaseException]


class LatencyFileSystem(AsyncFileSystem):  # type: ignore[misc]
    """Wrap ``fs``, adding latency to every call and faults to some.

    The wrapper is an async filesystem whatever ``fs`` is: calls to an async
    ``fs`` run on its own loop, calls to a sync one on a worker thread, so
    the caller's loop is never blocked.

    Parameters
    ----------
    fs
        The filesystem holding the data.
    latency
        Seconds slept before every call (all methods).
    fail_first
        The first ``fail_first`` counted calls fail.
    fail_every
        Every ``fail_every``-th counted call fails (the ``fail_every``-th,
        twice that, ...); ``0`` for none.
    fail_rate
        Fraction of counted calls that fail, drawn from a generator seeded
        with ``seed``.
    short_every
        Every ``short_every``-th counted ``cat_file`` returns the first half
        of its bytes only; ``0`` for none.
    error
        What a failing call raises: an exception type (given a message naming
        the call), or a factory ``error(method, path)``. The default,
        ``ConnectionResetError``, is a fault worth retrying.
    methods
        The methods (sync names) whose calls are counted and may fail.
    seed
        Seed of the ``fail_rate`` generator.
    **storage_options
        Passed to :class:`fsspec.asyn.AsyncFileSystem` (``asynchronous``,
        ``loop``).

    Attributes
    ----------
    calls
        Calls made so far, by method.
    faults
        Faults injected so far (failures and short reads).
    max_concurrent
        The most calls in flight at once.

    Notes
    -----
    Files opened with :meth:`open` are the wrapped filesystem's own: only
    the calls above are slowed and faulted.
    """

    protocol = "latency"
    # An instance holds fault counters: two tests must never share one.
    cachable = False

    def __init__(
        self,
        fs: AbstractFileSystem,
        *,
        latency: float = 0.0,
        fail_first: int = 0,
        fail_every: int = 0,
        fail_rate: float = 0.0,
        short_every: int = 0,
        error: ErrorFactory = ConnectionResetError,
        methods: Collection[str] = ("cat_file",),
        seed: int = 0,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        if fs.async_impl and fs.asynchronous and not self.asynchronous:
            raise ValueError("an asynchronous fs needs asynchronous=True here too")
        self.fs = fs
        self.latency = latency
        self.fail_first = fail_first
        self.fail_every = fail_every
        self.fail_rate = fail_rate
        self.short_every = short_every
        self.error = error
        self.methods = frozenset(methods)
        self.calls: Counter[str] = Counter()
        self.faults = 0
        self.max_concurrent = 0
        self._counted = 0
        self._in_flight = 0
        self._rng = random.Random(seed)
        # Calls arrive from the wrapper's loop and from sync callers' threads.
        self._lock = threading.Lock()

    @property
    def fsid(self) -> str:
        """The wrapped filesystem's identity: the bytes are its bytes."""
        return f"latency-{self.fs.fsid}"

    # -- the fault plan --------------------------------------------------------

    def _plan(self, method: str) -> tuple[int, bool, bool]:
        """Count one call; return its number and whether it fails or is short."""
        with self._lock:
            self.calls[method] += 1
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
            if method not in self.methods:
                return 0, False, False
            self._counted += 1
            n = self._counted
            fail = (
                n <= self.fail_first
                or (self.fail_every > 0 and n % self.fail_every == 0)
                or (self.fail_rate > 0 and self._rng.random() < self.fail_rate)
            )
            short = (
                not fail
                and method == "cat_file"
                and self.short_every > 0
                and n % self.short_every == 0
            )
            self.faults += fail or short
        return n, fail, short

    def _raise(self, method: str, path: str, n: int) -> None:
        error = self.error
        if isinstance(error, type):
            raise error(f"injected fault: {method} of {path} (counted call {n})")
        raise error(method, path)

    async def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        n, fail, short = self._plan(method)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if fail:
                self._raise(method, path, n)
            result = await self._inner(method, path, *args, **kwargs)
        finally:
            with self._lock:
                self._in_flight -= 1
        if short:
            return result[: len(result) // 2]
        return result

    async def _inner(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` (sync name) of the wrapped filesystem."""
        fs = self.fs
        if not fs.async_impl:
            return await asyncio.to_thread(getattr(fs, method), *args, **kwargs)
        coro = getattr(fs, "_" + method)(*args, **kwargs)
        if fs.asynchronous or fs.loop is asyncio.get_running_loop():
            return await coro
        # The wrapped filesystem's session belongs to its own loop.
        future = asyncio.run_coroutine_threadsafe(coro, fs.loop)
        return await asyncio.wrap_future(future)

    # -- the filesystem --------------------------------------------------------

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        info: dict[str, Any] = await self._call("info", path, **kwargs)
        return info

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        listing: list[Any] = await self._call("ls", path, detail=detail, **kwargs)
        return listing

    async def _cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        data: bytes = await self._call("cat_file", path, start=start, end=end, **kwargs)
        return data

    async def _pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        await self._call("pipe_file", path, value, **kwargs)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        await self._call("rm_file", path, **kwargs)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        await self._call("makedirs", path, exist_ok=exist_ok)

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        await self._call("cp_file", path1, path2, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return self.fs.open(path, mode, **kwargs)

    def __repr__(self) -> str:
        return f"LatencyFileSystem({self.fs!r}, latency={self.latency})"
