"""The contract every cache tier keeps, as test suites to inherit.

As zarr ships ``zarr.testing.store.StoreTests``, cachefs ships
:class:`TierTests` for the tiers read in the caller's thread (RAM, disk) and
:class:`AsyncTierTests` for the ones read on the event loop (shared). A
subclass provides a ``make_tier`` fixture, and the hooks
``read_record``/``write_record`` if its tier keeps records that can be
damaged; every test below then runs against it::

    class TestMyTier(TierTests):
        @pytest.fixture
        def make_tier(self, tmp_path):
            return lambda limit: MyTier(tmp_path, limit, make_policy("lru"))

This module imports pytest (a test-suite base); nothing else in
:mod:`cachefs.testing` does.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from cachefs.chunks import ChunkKey, FileVersion
from cachefs.tiers.base import Tier

__all__ = [
    "CHUNK",
    "DAMAGES",
    "AsyncTierTests",
    "TierTests",
    "chunk_data",
    "chunk_key",
    "holds",
]

T = TypeVar("T")

#: Size of the chunks the suites store (bytes).
CHUNK = 4096
#: How the damage tests spoil a stored record.
DAMAGES = ("flip-payload", "flip-header", "truncate", "empty", "misplaced")


def chunk_key(index: int, size: int = CHUNK, *, path: str = "/contract") -> ChunkKey:
    """Return the key of chunk ``index`` of a test file cut in ``size`` bytes.

    Every chunk of that file is a full ``size`` bytes long.
    """
    version = FileVersion("test", f"{path}-{size}", size * (1 << 20), "token")
    return version.key(size, index)


def chunk_data(key: ChunkKey) -> bytes:
    """Return the deterministic content of ``key`` (``key.length`` bytes)."""
    return random.Random(key.digest).randbytes(key.length)


def _spoil(record: bytes, how: str, other: bytes) -> bytes:
    """Return ``record`` damaged as ``how`` says (``other``: another record)."""
    if how == "flip-payload":
        return record[:-1] + bytes([record[-1] ^ 0xFF])
    if how == "flip-header":
        return bytes([record[0] ^ 0xFF]) + record[1:]
    if how == "truncate":
        return record[: len(record) // 2]
    if how == "empty":
        return b""
    if how == "misplaced":
        return other
    raise ValueError(f"unknown damage {how!r}")


def holds(tier: Any, key: ChunkKey) -> bool:
    """Return whether ``tier`` has ``key`` (``contains()`` or ``in``)."""
    contains = getattr(tier, "contains", None)
    return bool(contains(key)) if contains is not None else key in tier


class TierTests:
    """Tests every tier read in the caller's thread passes.

    Subclasses provide the ``make_tier`` fixture: a callable that builds a
    fresh, empty tier with the byte budget it is given. Tiers that keep
    records outside the process (files) implement :meth:`read_record` and
    :meth:`write_record` so the damage tests can spoil one.
    """

    #: Budget of the tier the single-chunk tests use: many chunks fit.
    roomy = 64 * CHUNK

    @pytest.fixture
    def make_tier(self) -> Callable[[int], Tier]:
        """Build a fresh tier with a byte budget (a subclass provides it)."""
        raise NotImplementedError("a TierTests subclass provides make_tier")

    @pytest.fixture
    def tier(self, make_tier: Callable[[int], Tier]) -> Tier:
        """Return a fresh tier with room for many chunks."""
        return make_tier(self.roomy)

    def read_record(self, tier: Tier, key: ChunkKey) -> bytes:
        """Return the stored record of ``key`` as the tier keeps it."""
        raise NotImplementedError

    def write_record(self, tier: Tier, key: ChunkKey, record: bytes) -> None:
        """Replace (or create) the stored record of ``key`` behind the tier."""
        raise NotImplementedError

    # -- round trips -----------------------------------------------------------

    def test_is_a_tier(self, tier: Tier) -> None:
        """The tier is a :class:`~cachefs.tiers.base.Tier` with its budget."""
        assert isinstance(tier, Tier)
        assert tier.name and tier.limit == self.roomy

    def test_put_then_get_returns_the_same_bytes(self, tier: Tier) -> None:
        """A stored chunk comes back byte for byte, as a read-only view."""
        key = chunk_key(0)
        assert tier.put(key, chunk_data(key))
        view = tier.get(key)
        assert view is not None
        assert view.readonly
        assert bytes(view) == chunk_data(key)

    def test_put_accepts_any_buffer(self, tier: Tier) -> None:
        """bytes, bytearray and (read-only) memoryviews are all stored."""
        keys = [chunk_key(i) for i in range(3)]
        buffers: list[bytes | bytearray | memoryview] = [
            bytearray(chunk_data(keys[0])),
            memoryview(chunk_data(keys[1])),
            memoryview(bytearray(chunk_data(keys[2]))).toreadonly(),
        ]
        for key, buffer in zip(keys, buffers, strict=True):
            assert tier.put(key, buffer)
        for key in keys:
            view = tier.get(key)
            assert view is not None and bytes(view) == chunk_data(key)

    def test_get_of_a_missing_key_is_none(self, tier: Tier) -> None:
        """A miss is ``None`` and is counted, never an exception."""
        assert tier.get(chunk_key(7)) is None
        assert tier.stats.misses == 1 and tier.stats.hits == 0

    def test_keys_of_other_versions_do_not_collide(self, tier: Tier) -> None:
        """Chunk 0 of one file is not chunk 0 of another."""
        key = chunk_key(0)
        other = chunk_key(0, path="/another")
        assert tier.put(key, chunk_data(key))
        assert tier.get(other) is None

    def test_put_twice_keeps_one_copy(self, tier: Tier) -> None:
        """Storing a chunk again neither fails nor counts it twice."""
        key = chunk_key(0)
        assert tier.put(key, chunk_data(key))
        usage = tier.usage()
        assert tier.put(key, chunk_data(key))
        assert tier.usage() == usage and len(tier) == 1

    def test_discard(self, tier: Tier) -> None:
        """A discarded chunk is gone; discarding an absent one is no error."""
        key = chunk_key(0)
        tier.put(key, chunk_data(key))
        tier.discard(key)
        assert tier.get(key) is None
        assert not holds(tier, key)
        tier.discard(key)  # absent: no error
        tier.discard(chunk_key(99))

    def test_contains(self, tier: Tier) -> None:
        """Membership follows puts."""
        key = chunk_key(0)
        assert not holds(tier, key)
        tier.put(key, chunk_data(key))
        assert holds(tier, key)
        assert not holds(tier, chunk_key(1))

    def test_len_and_usage_follow_puts_and_discards(self, tier: Tier) -> None:
        """Chunk count and bytes held follow puts and discards."""
        keys = [chunk_key(i) for i in range(5)]
        assert len(tier) == 0 and tier.usage() == 0
        for key in keys:
            tier.put(key, chunk_data(key))
        assert len(tier) == 5
        assert tier.usage() >= 5 * CHUNK  # records may carry a header
        for key in keys:
            tier.discard(key)
        assert len(tier) == 0 and tier.usage() == 0

    def test_clear(self, tier: Tier) -> None:
        """``clear()`` empties the tier."""
        clear = getattr(tier, "clear", None)
        if clear is None:
            pytest.skip("the tier has no clear()")
        for i in range(3):
            tier.put(chunk_key(i), chunk_data(chunk_key(i)))
        clear()
        assert len(tier) == 0 and tier.usage() == 0
        assert all(tier.get(chunk_key(i)) is None for i in range(3))

    def test_stats_count_hits_misses_and_bytes(self, tier: Tier) -> None:
        """The counters count hits, misses, puts and their bytes."""
        a, b = chunk_key(0), chunk_key(1, size=CHUNK // 2)
        tier.put(a, chunk_data(a))
        tier.put(b, chunk_data(b))
        tier.get(a)
        tier.get(b)
        tier.get(a)
        tier.get(chunk_key(5))
        stats = tier.stats
        assert (stats.hits, stats.misses) == (3, 1)
        assert stats.hit_bytes == 2 * a.length + b.length
        assert (stats.puts, stats.put_bytes) == (2, a.length + b.length)
        assert stats.as_dict()["hits"] == 3

    # -- the budget ------------------------------------------------------------

    def test_budget_is_kept_after_many_puts(
        self, make_tier: Callable[[int], Tier]
    ) -> None:
        """Many puts never leave the tier over its budget."""
        tier = make_tier(10 * CHUNK + CHUNK // 2)
        for i in range(40):
            key = chunk_key(i)
            tier.put(key, chunk_data(key))
            assert tier.usage() <= tier.limit
        assert len(tier) < 40
        assert tier.stats.evictions + tier.stats.rejected > 0
        # Whatever is still held is intact.
        for i in range(40):
            view = tier.get(chunk_key(i))
            assert view is None or bytes(view) == chunk_data(chunk_key(i))

    def test_a_chunk_larger_than_the_budget_is_refused_whole(
        self, make_tier: Callable[[int], Tier]
    ) -> None:
        """A chunk bigger than the budget is refused, not stored in part."""
        tier = make_tier(2 * CHUNK)
        small = chunk_key(0)
        assert tier.put(small, chunk_data(small))
        usage = tier.usage()
        big = chunk_key(0, size=4 * CHUNK)
        assert not tier.put(big, chunk_data(big))
        assert tier.get(big) is None and not holds(tier, big)
        assert tier.usage() == usage
        assert tier.stats.rejected == 1

    def test_views_outlive_eviction(self, make_tier: Callable[[int], Tier]) -> None:
        """A view handed out stays valid after its chunk is evicted."""
        tier = make_tier(2 * CHUNK + CHUNK // 2)
        first = chunk_key(0)
        tier.put(first, chunk_data(first))
        view = tier.get(first)
        assert view is not None
        for i in range(1, 10):
            tier.put(chunk_key(i), chunk_data(chunk_key(i)))
        assert bytes(view) == chunk_data(first)

    def test_concurrent_puts_and_gets(self, make_tier: Callable[[int], Tier]) -> None:
        """Concurrent puts and gets serve only exact bytes."""
        tier = make_tier(16 * CHUNK)
        wrong: list[int] = []
        errors: list[BaseException] = []

        def worker(offset: int) -> None:
            try:
                for n in range(200):
                    key = chunk_key((n * 7 + offset) % 40)
                    view = tier.get(key)
                    if view is None:
                        tier.put(key, chunk_data(key))
                    elif bytes(view) != chunk_data(key):
                        wrong.append(key.index)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and not wrong
        assert tier.usage() <= tier.limit

    # -- processes -------------------------------------------------------------

    def test_after_fork_keeps_working(self, tier: Tier) -> None:
        """After ``after_fork()`` the tier reads and writes as before."""
        key = chunk_key(0)
        tier.put(key, chunk_data(key))
        tier.after_fork()
        view = tier.get(key)
        assert view is not None and bytes(view) == chunk_data(key)
        other = chunk_key(1)
        assert tier.put(other, chunk_data(other))
        tier.discard(key)
        assert tier.get(key) is None

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_a_forked_child_reads_and_writes(self, tier: Tier) -> None:
        """A forked child reads the parent's chunks and stores its own."""
        key, other = chunk_key(0), chunk_key(1)
        tier.put(key, chunk_data(key))
        assert tier.get(key) is not None  # held (mapped) before the fork
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() beside threads: forking is the point.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                tier.after_fork()
                view = tier.get(key)
                ok = view is not None and bytes(view) == chunk_data(key)
                ok = ok and tier.put(other, chunk_data(other))
                got = tier.get(other)
                ok = ok and got is not None and bytes(got) == chunk_data(other)
                code = 0 if ok else 2
            finally:
                os._exit(code)
        assert _wait_child(pid, timeout=30.0) == 0
        view = tier.get(key)  # the parent is unaffected
        assert view is not None and bytes(view) == chunk_data(key)

    # -- damage ----------------------------------------------------------------

    @pytest.mark.parametrize("how", DAMAGES)
    def test_a_damaged_record_is_never_served(self, tier: Tier, how: str) -> None:
        """A damaged record is dropped and counted, never served."""
        key, other = chunk_key(0), chunk_key(1)
        tier.put(key, chunk_data(key))
        tier.put(other, chunk_data(other))
        try:
            record = self.read_record(tier, key)
        except NotImplementedError:
            pytest.skip("the tier keeps no records to damage")
        self.write_record(tier, key, _spoil(record, how, self.read_record(tier, other)))
        assert tier.get(key) is None
        assert tier.stats.checksum_failures == 1
        assert tier.get(key) is None  # dropped, not served on a second look
        assert tier.put(key, chunk_data(key))  # and stored again afterwards
        view = tier.get(key)
        assert view is not None and bytes(view) == chunk_data(key)


def _wait_child(pid: int, timeout: float) -> int:
    """Return a forked child's exit status; kill it after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child did not finish in {timeout} s")


class AsyncTierTests:
    """Tests every tier read on the event loop passes (its calls are coroutines).

    Such a tier (the shared tier) keeps no budget of its own (the engine
    behind it does): the suite checks round trips, misses, counters,
    concurrency and that damaged records are never served. Subclasses
    provide the ``make_tier`` fixture (a callable building a fresh, empty
    tier) and the async hooks :meth:`read_record`/:meth:`write_record`.
    Each test runs its own event loop: no pytest plugin is needed.
    """

    @pytest.fixture
    def make_tier(self) -> Callable[[], Any]:
        """Build a fresh tier (a subclass provides it)."""
        raise NotImplementedError("an AsyncTierTests subclass provides make_tier")

    @pytest.fixture
    def tier(self, make_tier: Callable[[], Any]) -> Any:
        """Return a fresh tier."""
        return make_tier()

    async def read_record(self, tier: Any, key: ChunkKey) -> bytes:
        """Return the stored record of ``key`` as the tier keeps it."""
        raise NotImplementedError

    async def write_record(self, tier: Any, key: ChunkKey, record: bytes) -> None:
        """Replace (or create) the stored record of ``key`` behind the tier."""
        raise NotImplementedError

    @staticmethod
    def run(coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to its end on a fresh event loop."""
        return asyncio.run(coro)

    def test_put_then_get_returns_the_same_bytes(self, tier: Any) -> None:
        """A stored chunk comes back byte for byte, as a read-only view."""

        async def main() -> None:
            key = chunk_key(0)
            await tier.put(key, memoryview(chunk_data(key)))
            view = await tier.get(key)
            assert view is not None and view.readonly
            assert bytes(view) == chunk_data(key)

        self.run(main())

    def test_get_of_a_missing_key_is_none(self, tier: Any) -> None:
        """A miss is ``None`` and is counted, never an exception."""
        assert self.run(tier.get(chunk_key(7))) is None
        assert tier.stats.misses == 1 and tier.stats.hits == 0

    def test_put_twice_is_harmless(self, tier: Any) -> None:
        """Publishing a chunk again neither fails nor damages it."""

        async def main() -> None:
            key = chunk_key(0)
            await tier.put(key, memoryview(chunk_data(key)))
            await tier.put(key, memoryview(chunk_data(key)))
            view = await tier.get(key)
            assert view is not None and bytes(view) == chunk_data(key)

        self.run(main())

    def test_stats_count_hits_misses_and_bytes(self, tier: Any) -> None:
        """The counters count hits, misses, puts and their bytes."""

        async def main() -> None:
            a, b = chunk_key(0), chunk_key(1, size=CHUNK // 2)
            await tier.put(a, memoryview(chunk_data(a)))
            await tier.put(b, memoryview(chunk_data(b)))
            for key in (a, b, a, chunk_key(5)):
                await tier.get(key)

        self.run(main())
        stats = tier.stats
        assert (stats.hits, stats.misses) == (3, 1)
        assert stats.hit_bytes == 2 * CHUNK + CHUNK // 2
        assert (stats.puts, stats.put_bytes) == (2, CHUNK + CHUNK // 2)

    def test_clear(self, tier: Any) -> None:
        """``clear()`` empties the tier."""

        async def main() -> None:
            keys = [chunk_key(i) for i in range(3)]
            for key in keys:
                await tier.put(key, memoryview(chunk_data(key)))
            await tier.clear()
            assert [await tier.get(k) for k in keys] == [None] * 3
            await tier.clear()  # already empty: no error

        self.run(main())

    def test_concurrent_puts_and_gets(self, tier: Any) -> None:
        """Concurrent puts and gets serve only exact bytes."""
        keys = [chunk_key(i) for i in range(24)]

        async def one(key: ChunkKey) -> bool:
            await tier.put(key, memoryview(chunk_data(key)))
            view = await tier.get(key)
            return view is not None and bytes(view) == chunk_data(key)

        async def main() -> list[bool]:
            jobs: list[Awaitable[bool]] = [one(k) for k in keys + keys]
            return list(await asyncio.gather(*jobs))

        assert all(self.run(main()))

    @pytest.mark.parametrize("how", DAMAGES)
    def test_a_damaged_record_is_never_served(self, tier: Any, how: str) -> None:
        """A damaged record is dropped and counted, never served."""
        key, other = chunk_key(0), chunk_key(1)

        async def main() -> None:
            await tier.put(key, memoryview(chunk_data(key)))
            await tier.put(other, memoryview(chunk_data(other)))
            try:
                record = await self.read_record(tier, key)
            except NotImplementedError:
                pytest.skip("the tier keeps no records to damage")
            spoiled = _spoil(record, how, await self.read_record(tier, other))
            await self.write_record(tier, key, spoiled)
            assert await tier.get(key) is None
            assert tier.stats.checksum_failures == 1
            assert await tier.get(key) is None
            await tier.put(key, memoryview(chunk_data(key)))
            view = await tier.get(key)
            assert view is not None and bytes(view) == chunk_data(key)

        self.run(main())
