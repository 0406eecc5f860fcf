"""The staging area (:class:`cachefs.tiers.staging.Staging`) on its own.

A prefetch reserves its bytes, settles the reservation when they arrive
(staged, or given back) and a reader that went away refuses them; the
budget covers staged chunks and reservations together.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from cachefs.chunks import ChunkKey, FileVersion
from cachefs.tiers.staging import READER_IDLE, Staging

V = FileVersion("memory", "/staged", 1 << 20, "t")
CHUNK = 100


def key(i: int) -> ChunkKey:
    return V.key(CHUNK, i)


def chunk(i: int, n: int = CHUNK) -> memoryview:
    return memoryview(bytes([i % 256]) * n).toreadonly()


def test_a_reservation_within_the_budget_is_granted() -> None:
    staging = Staging(limit=300)
    assert staging.try_reserve(100)
    assert staging.try_reserve(200)
    assert not staging.try_reserve(1)  # full: refused, never waits
    assert staging.stats.peak_staged_bytes == 300


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    staging = Staging(limit=100)
    assert staging.try_reserve(250)  # nothing else held: allowed
    assert not staging.try_reserve(1)
    staging.unreserve(250)
    assert staging.try_reserve(100)
    assert not staging.try_reserve(250)  # not beside anything else


def test_put_settles_the_reservation_and_take_frees_it() -> None:
    staging = Staging(limit=200)
    assert staging.try_reserve(CHUNK)
    assert staging.put(key(0), chunk(0))
    assert key(0) in staging and staging.stats.staged_bytes == CHUNK
    assert staging.try_reserve(CHUNK)  # reservation became the staged bytes
    assert not staging.try_reserve(CHUNK)
    view = staging.take(key(0))
    assert view is not None and bytes(view) == bytes(chunk(0))
    assert key(0) not in staging and staging.stats.staged_bytes == 0
    assert staging.stats.used == 1
    assert staging.take(key(0)) is None  # taken once
    assert staging.try_reserve(CHUNK)


def test_unreserve_gives_the_budget_back() -> None:
    staging = Staging(limit=CHUNK)
    assert staging.try_reserve(CHUNK)
    staging.unreserve(CHUNK)
    assert staging.try_reserve(CHUNK)


def test_a_refused_chunk_is_not_staged_and_its_budget_is_freed() -> None:
    staging = Staging(limit=CHUNK)
    assert staging.try_reserve(CHUNK)
    staging.refuse([key(0)])
    assert not staging.put(key(0), chunk(0))
    assert key(0) not in staging and staging.stats.wasted == 1
    assert staging.try_reserve(CHUNK)
    # The refusal is used up: a later fetch of the chunk is staged.
    staging.unreserve(CHUNK)
    assert staging.try_reserve(CHUNK)
    assert staging.put(key(0), chunk(0))


def test_forget_drops_a_refusal() -> None:
    staging = Staging(limit=CHUNK)
    staging.refuse([key(0)])
    staging.forget(key(0))
    assert staging.try_reserve(CHUNK)
    assert staging.put(key(0), chunk(0))


def test_abandon_and_clear_count_waste() -> None:
    staging = Staging(limit=10 * CHUNK)
    for i in range(3):
        assert staging.try_reserve(CHUNK)
        staging.put(key(i), chunk(i))
    staging.abandon([key(0), key(9)])
    assert key(0) not in staging and staging.stats.wasted == 1
    staging.clear()
    assert staging.stats.wasted == 3 and staging.stats.staged_bytes == 0
    assert staging.take(key(1)) is None


def test_unread_chunks_are_reclaimed_only_after_hold() -> None:
    holding = Staging(limit=CHUNK, hold=30.0)
    assert holding.try_reserve(CHUNK)
    holding.put(key(0), chunk(0))
    assert not holding.try_reserve(CHUNK)  # its reader may still come
    assert key(0) in holding

    expired = Staging(limit=CHUNK, hold=0.0)
    assert expired.try_reserve(CHUNK)
    expired.put(key(0), chunk(0))
    assert expired.try_reserve(CHUNK)  # the unread chunk made room
    assert key(0) not in expired and expired.stats.wasted == 1


async def test_reserve_waits_for_room_and_a_take_from_another_thread_wakes_it() -> None:
    staging = Staging(limit=CHUNK)
    assert staging.try_reserve(CHUNK)
    staging.put(key(0), chunk(0))
    waiter = asyncio.ensure_future(staging.reserve(CHUNK))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    taker = threading.Thread(target=staging.take, args=(key(0),))
    taker.start()
    await asyncio.wait_for(waiter, 5)
    taker.join()
    assert not staging.try_reserve(1)  # the waiter holds the budget now


async def test_a_cancelled_reserve_holds_nothing() -> None:
    staging = Staging(limit=CHUNK)
    assert staging.try_reserve(CHUNK)
    waiter = asyncio.ensure_future(staging.reserve(CHUNK))
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    staging.unreserve(CHUNK)
    assert staging.try_reserve(CHUNK)


async def test_many_reservers_share_the_budget() -> None:
    staging = Staging(limit=3 * CHUNK, hold=30.0)
    held = 0
    most = 0

    async def prefetch(i: int) -> None:
        nonlocal held, most
        await staging.reserve(CHUNK)
        held += 1
        most = max(most, held)
        await asyncio.sleep(0.001)
        staging.put(key(i), chunk(i))
        await asyncio.sleep(0.001)
        held -= 1
        assert staging.take(key(i)) is not None  # its reader reads it

    await asyncio.wait_for(asyncio.gather(*(prefetch(i) for i in range(40))), 20)
    assert most <= 3
    assert staging.stats.peak_staged_bytes <= staging.limit
    assert staging.stats.used == 40 and staging.stats.staged_bytes == 0


def test_random_operations_keep_the_budget() -> None:
    rng = random.Random(13)
    staging = Staging(limit=5 * CHUNK, hold=30.0)
    reserved: list[int] = []  # chunk indexes reserved, not yet settled
    next_index = 0
    for _ in range(2000):
        op = rng.randrange(5)
        if op == 0 and staging.try_reserve(CHUNK):
            reserved.append(next_index)
            next_index += 1
        elif op == 1 and reserved:
            i = reserved.pop(rng.randrange(len(reserved)))
            staging.put(key(i), chunk(i))
        elif op == 2 and reserved:
            reserved.pop(rng.randrange(len(reserved)))
            staging.unreserve(CHUNK)
        elif op == 3 and next_index:
            i = rng.randrange(next_index)
            view = staging.take(key(i))
            assert view is None or bytes(view) == bytes(chunk(i))
        elif op == 4 and reserved:
            staging.refuse([key(reserved[rng.randrange(len(reserved))])])
        staged = staging.stats.staged_bytes
        assert staged + CHUNK * len(reserved) <= staging.limit
    assert staging.stats.peak_staged_bytes <= staging.limit


def test_after_fork_starts_empty() -> None:
    staging = Staging(limit=CHUNK)
    assert staging.try_reserve(CHUNK)
    staging.put(key(0), chunk(0))
    staging.after_fork()
    assert key(0) not in staging and staging.stats.staged_bytes == 0
    assert staging.try_reserve(CHUNK)


def test_a_staged_chunk_the_disk_holds_is_dropped_without_waiting_the_hold() -> None:
    on_disk = {key(0)}
    staging = Staging(limit=2 * CHUNK, hold=60.0, elsewhere=on_disk.__contains__)
    for i in (0, 1):
        assert staging.try_reserve(CHUNK)
        staging.put(key(i), chunk(i))
    assert staging.try_reserve(CHUNK)  # key(0) is on disk: its copy goes
    assert key(0) not in staging and key(1) in staging
    assert staging.stats.spilled == 1 and staging.stats.wasted == 0
    assert not staging.try_reserve(CHUNK)  # key(1) is nowhere else: held


async def test_a_reservation_wakes_when_a_staged_chunk_reaches_disk() -> None:
    on_disk: set[ChunkKey] = set()
    staging = Staging(limit=CHUNK, hold=60.0, elsewhere=on_disk.__contains__)
    assert staging.try_reserve(CHUNK)
    staging.put(key(0), chunk(0))
    waiter = asyncio.ensure_future(staging.reserve(CHUNK))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    on_disk.add(key(0))  # its disk write ended, which signals nothing
    await asyncio.wait_for(waiter, 5)  # polled: well within the hold
    assert staging.stats.spilled == 1 and key(0) not in staging


def test_the_newest_staged_chunk_on_disk_is_dropped_first() -> None:
    # A reader streams behind its prefetch: the oldest staged chunk is the
    # one it reads next. Dropped, it would be read back from the disk tier
    # (from the device, where the tier writes past the page cache); the
    # newest is read last.
    on_disk = {key(0), key(1), key(2)}
    staging = Staging(limit=3 * CHUNK, hold=60.0, elsewhere=on_disk.__contains__)
    for i in (0, 1, 2):
        assert staging.try_reserve(CHUNK)
        staging.put(key(i), chunk(i))
    assert staging.try_reserve(CHUNK)
    assert key(0) in staging and key(1) in staging and key(2) not in staging
    assert staging.stats.spilled == 1


def test_a_bound_within_the_budget_waits_for_the_reader_and_drops_nothing() -> None:
    # Everything staged is on disk too, so the whole budget would spill it;
    # a reservation within a smaller bound must not: the reader is about to
    # take those chunks.
    staging = Staging(limit=1000, hold=60.0, elsewhere=lambda k: True)
    for i in range(3):
        assert staging.try_reserve(CHUNK, within=300)
        assert staging.put(key(i), chunk(i))
    assert not staging.try_reserve(CHUNK, within=300)
    assert staging.stats.spilled == 0 and all(key(i) in staging for i in range(3))
    assert staging.try_reserve(CHUNK)  # the whole budget still has room
    staging.unreserve(CHUNK)
    assert staging.take(key(0)) is not None
    assert staging.try_reserve(CHUNK, within=300)  # the reader made room


def test_a_bound_gives_way_once_the_reader_leaves_staged_chunks_waiting() -> None:
    staging = Staging(limit=1000, hold=60.0)
    for i in range(3):
        assert staging.try_reserve(CHUNK, within=300)
        assert staging.put(key(i), chunk(i))
    assert not staging.try_reserve(CHUNK, within=300)
    # The oldest staged chunk has waited READER_IDLE with nothing taken (at
    # least: a slow machine only waits longer): the whole budget applies.
    time.sleep(READER_IDLE * 1.2)
    assert staging.try_reserve(CHUNK, within=300)
    assert staging.try_reserve(CHUNK, within=300)  # until a reader takes one
    assert staging.take(key(0)) is not None
    assert not staging.try_reserve(CHUNK, within=300)  # 200 staged + 200 booked


def test_reserve_within_a_bound_returns_when_a_reader_takes() -> None:
    staging = Staging(limit=1000, hold=60.0, elsewhere=lambda k: True)

    async def scenario() -> None:
        for i in range(3):
            await staging.reserve(CHUNK, within=300)
            assert staging.put(key(i), chunk(i))
        waiter = asyncio.ensure_future(staging.reserve(CHUNK, within=300))
        await asyncio.sleep(0)
        assert not waiter.done()
        taker = threading.Thread(target=staging.take, args=(key(0),))
        taker.start()
        await asyncio.wait_for(waiter, timeout=30)
        taker.join()
        assert staging.stats.spilled == 0

    asyncio.run(scenario())
