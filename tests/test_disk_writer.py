"""The disk writer thread batches: many chunks, few batches and loop wake-ups.

Each test counts (``DiskWriter.stats``), never times: a batch is whatever
was queued when the thread took the queue, so the tests arrange what is
queued by holding the thread inside a write until the rest is in.
"""

from __future__ import annotations

import asyncio
import threading

from cachefs import CacheFileSystem
from cachefs.chunks import ChunkKey, FileVersion
from cachefs.policy import make_policy
from cachefs.tiers.disk import DiskTier
from cachefs.tiers.writer import WRITER, DiskWriter

KiB = 2**10
CHUNKS = 32


class HeldTier(DiskTier):
    """A real disk tier whose first ``put_many`` waits until released."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []

    def put_many(self, items):
        self.calls.append(len(items))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(30)
        return super().put_many(items)


def _keys(n: int) -> list[ChunkKey]:
    version = FileVersion("memory", "/writer/data", n * 4 * KiB, "v1")
    return [version.key(4 * KiB, i) for i in range(n)]


def test_stores_queued_behind_a_write_go_out_as_one_batch(tmp_path):
    tier = HeldTier(tmp_path / "disk", 2**30, make_policy("lru"))
    writer = DiskWriter()
    keys = _keys(CHUNKS + 1)
    payloads = {k: memoryview(bytes([k.index % 251]) * k.length) for k in keys}

    async def main() -> None:
        # The first store occupies the thread; the next CHUNKS stores (one
        # chunk each, as separate fills hand them over) queue behind it.
        first = asyncio.ensure_future(
            writer.store(tier, [(keys[0], payloads[keys[0]])])
        )
        assert await asyncio.to_thread(tier.entered.wait, 30)
        rest = [
            asyncio.ensure_future(writer.store(tier, [(k, payloads[k])]))
            for k in keys[1:]
        ]
        await asyncio.sleep(0)  # every store queues before its first await
        assert writer.pending == sum(k.length for k in keys)
        tier.release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert writer.stats.chunks == CHUNKS + 1
    # One batch for the first chunk, one for all the rest: the thread took
    # the queue whole and wrote it under one put_many (one usage lock).
    assert writer.stats.batches == 2
    assert tier.calls == [1, CHUNKS]
    assert writer.stats.wakeups == 2  # one loop, woken once per batch
    for key in keys:
        view = tier.get(key)
        assert view is not None and bytes(view) == bytes(payloads[key])


def test_a_cold_read_publishes_its_chunks_in_fewer_batches(tmp_path):
    # One coalesced origin read of a file of CHUNKS chunks hands them to the
    # writer as one store: one batch, one wake-up, CHUNKS chunks.
    data = bytes(range(256)) * (CHUNKS * 64 * KiB // 256)
    origin = tmp_path / "origin.bin"
    origin.write_bytes(data)
    fs = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(tmp_path / "cache"),
        chunk_size="64KiB",
        ram_limit=0,
        skip_instance_cache=True,
    )
    try:
        fs.wait_idle()
        before = (WRITER.stats.batches, WRITER.stats.chunks, WRITER.stats.wakeups)
        assert fs.cat_file(str(origin)) == data
        fs.wait_idle()
        batches, chunks, wakeups = (
            WRITER.stats.batches - before[0],
            WRITER.stats.chunks - before[1],
            WRITER.stats.wakeups - before[2],
        )
    finally:
        fs.close()
    assert chunks == CHUNKS
    assert batches == 1 and wakeups == 1, (batches, wakeups)


def test_a_big_chunk_is_stored_while_the_rest_of_its_read_streams(tmp_path):
    # A read of 4 chunks of 2 MiB (landing buffers from the pool) stores each
    # chunk as it arrives: the first is on disk while the origin is still
    # sending the rest (2 MiB/s: the last byte comes about 3 s after the
    # first chunk), so its buffer can take another chunk's bytes. Before,
    # every chunk of a read was stored once the read had ended.
    from cachefs.testing import HTTPOrigin

    chunk = 2 * 2**20
    data = bytes(range(256)) * (4 * chunk // 256)
    with HTTPOrigin(files={"f.bin": data}, bandwidth=chunk) as origin:
        fs = CacheFileSystem(
            target_protocol="http",
            cache_dir=str(tmp_path / "cache"),
            chunk_size=chunk,
            ram_limit=0,
            skip_instance_cache=True,
        )
        chunks = tmp_path / "cache" / "chunks"
        got: list[bytes] = []
        reader = threading.Thread(
            target=lambda: got.append(fs.cat_file(origin.url_for("f.bin")))
        )
        try:
            reader.start()
            sent_when_stored = sent_when_landed = None
            inflight = fs.router.fills.inflight
            for _ in range(3000):  # 30 s at most
                if any(p.is_file() for p in chunks.rglob("*")):
                    sent_when_stored = origin.stats.bytes_sent
                    break
                reader.join(0.01)
            for _ in range(3000):
                # Stored, chunk 0 leaves the fills in flight (whose future
                # holds its buffer) while the read goes on.
                if not any(k.index == 0 for k in list(inflight)):
                    sent_when_landed = origin.stats.bytes_sent
                    break
                reader.join(0.01)
            reader.join(60)
            fs.wait_idle()
            stored = sum(1 for p in chunks.rglob("*") if p.is_file())
        finally:
            fs.close()
    assert got == [data]
    assert stored == 4
    assert sent_when_stored is not None and sent_when_stored < len(data), (
        sent_when_stored
    )
    assert sent_when_landed is not None and sent_when_landed < len(data), (
        sent_when_landed
    )


def test_stores_waiting_for_room_hold_back_the_fills_pace(tmp_path):
    # A fill receives only while the writer has room (DiskWriter.room). A
    # store that waits for room holds its landed chunk's buffer as surely
    # as a queued one: with the queue at its bound and one store waiting,
    # room() must not let a fill land more. (Before, it counted only the
    # queue: a queue one chunk under the bound let every connection land
    # another chunk while stores already waited.)
    tier = HeldTier(tmp_path / "disk", 2**30, make_policy("lru"))
    keys = _keys(4)
    size = keys[0].length
    writer = DiskWriter(limit=2 * size + 1)
    payloads = {k: memoryview(bytes([k.index + 1]) * k.length) for k in keys}

    async def main() -> None:
        first = asyncio.ensure_future(
            writer.store(tier, [(keys[0], payloads[keys[0]])])
        )
        assert await asyncio.to_thread(tier.entered.wait, 30)
        # The first write holds the thread; one more chunk fits the bound,
        second = asyncio.ensure_future(
            writer.store(tier, [(keys[1], payloads[keys[1]])])
        )
        await asyncio.sleep(0)
        assert writer.pending == 2 * size
        # leaving room for less than a chunk: a third store must wait, and so
        # must a fill's pace (the queue alone is under the bound).
        third = asyncio.ensure_future(
            writer.store(tier, [(keys[2], payloads[keys[2]])])
        )
        await asyncio.sleep(0)
        assert writer.stats.waits == 1
        pace = asyncio.ensure_future(writer.room())
        await asyncio.sleep(0.05)
        assert not pace.done()
        tier.release.set()
        await asyncio.wait_for(asyncio.gather(first, second, third, pace), 30)

    asyncio.run(main())
    for key in keys[:3]:
        view = tier.get(key)
        assert view is not None and bytes(view) == bytes(payloads[key])
