"""One writer thread per process: fetched chunks go to the disk tier in batches.

A cold fill lands each chunk in a buffer on the event loop; writing it to
disk leaves the loop's thread, so a slow disk stalls no fetch. Handing each
chunk to a pool thread of its own cost a wake-up of that thread, another of
the loop, and a lock hand-off per chunk (a cold pass counted about 100
futex calls per 4 MiB chunk). Here one thread takes everything queued at
once, publishes it per tier under one usage lock
(:meth:`~cachefs.tiers.disk.DiskTier.put_many`), and wakes each loop once
for the whole batch.

The bytes queued and being written are bounded (:attr:`DiskWriter.limit`):
a writer past the bound waits on its loop for room, so a disk slower than
the origin holds back fills instead of piling up their buffers. One thread,
not a pool of them, also keeps the address space small (every thread has
its stack, and glibc gives each thread that allocates an arena of its own),
which matters under ``ulimit -v``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cachefs.chunks import ChunkKey
from cachefs.tiers.base import NodeTier

__all__ = ["WRITER", "DiskWriter", "WriterStats"]

#: Bytes of chunks queued or being written at most, per process.
DEFAULT_LIMIT = 32 * 2**20
# The thread ends after this long without work (a new one starts on demand).
_IDLE_SECONDS = 5.0

Items = Sequence[tuple[ChunkKey, memoryview]]


@dataclass(slots=True)
class WriterStats:
    """Counters of the writer.

    Attributes
    ----------
    batches
        Times the thread took what was queued (each wakes every loop once).
    chunks
        Chunks written (or refused by the tier).
    wakeups
        Event-loop wake-ups the thread asked for: one per loop per batch,
        whatever the number of chunks and stores in it.
    waits
        Stores that waited for room under :attr:`DiskWriter.limit`.
    """

    batches: int = 0
    chunks: int = 0
    wakeups: int = 0
    waits: int = 0


@dataclass(slots=True)
class _Job:
    disk: NodeTier
    items: Items
    nbytes: int
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    error: BaseException | None = field(default=None)


class DiskWriter:
    """Writes chunks to disk tiers from one thread, in batches.

    Parameters
    ----------
    limit
        Bytes queued or being written at most; a store that would pass it
        waits (one store larger than it goes alone).
    """

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.stats = WriterStats()
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Job] = []
        self._pending = 0
        self._thread: threading.Thread | None = None
        # Who waits for room: a loop, its future, and the bytes of a store
        # waiting to be queued (0 for a fill's pace). Every batch wakes and
        # forgets them all; those still short of room register again.
        self._rooms: list[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]
        ] = []
        self._pid = os.getpid()

    @property
    def pending(self) -> int:
        """Bytes queued or being written now."""
        return self._pending

    async def store(self, disk: NodeTier, items: Items) -> None:
        """Write ``items`` to ``disk`` (each to its tier); return when done.

        Refusals of the disk (full, read-only) are the tier's to count; an
        unexpected error is raised here.
        """
        if self._pid != os.getpid():
            self._reset()  # forked: the parent's thread and queue are not ours
        loop = asyncio.get_running_loop()
        nbytes = sum(view.nbytes for _, view in items)
        waited = False
        while True:
            with self._cond:
                if self._pending == 0 or self._pending + nbytes <= self.limit:
                    job = _Job(disk, items, nbytes, loop, loop.create_future())
                    self._queue.append(job)
                    self._pending += nbytes
                    self._start_locked()
                    self._cond.notify()
                    break
                room = loop.create_future()
                # Its bytes count against the room fills pace themselves by
                # (room()): landed chunks waiting here hold their buffers too.
                self._rooms.append((loop, room, nbytes))
            if not waited:
                waited = True
                self.stats.waits += 1
            await room
        await job.done

    async def room(self) -> None:
        """Return once the bytes queued are under :attr:`limit` (a fill's pace).

        A fill that lands chunks faster than the disk takes them waits here
        before it receives more, rather than landing them in new buffers
        that wait for the writer. Stores already waiting for room count
        as queued: their chunks' buffers are held all the same.
        """
        if self._pid != os.getpid():
            return  # forked: this process's writer has nothing queued yet
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                waiting = sum(nbytes for _, _, nbytes in self._rooms)
                if self._pending + waiting < self.limit:
                    return
                room = loop.create_future()
                self._rooms.append((loop, room, 0))
            await room

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="cachefs-disk-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if not self._cond.wait(_IDLE_SECONDS) and not self._queue:
                        self._thread = None
                        return
                jobs, self._queue = self._queue, []
            self._write(jobs)
            with self._cond:
                self._pending -= sum(job.nbytes for job in jobs)
                rooms, self._rooms = self._rooms, []
            self.stats.batches += 1
            self.stats.chunks += sum(len(job.items) for job in jobs)
            loops: dict[asyncio.AbstractEventLoop, list[Any]] = {}
            for job in jobs:
                loops.setdefault(job.loop, []).append(job)
            for loop, room, _ in rooms:
                loops.setdefault(loop, []).append(room)
            for loop, done in loops.items():
                # One wake-up of each loop for the whole batch.
                self.stats.wakeups += 1
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    loop.call_soon_threadsafe(_finish, done)

    @staticmethod
    def _write(jobs: list[_Job]) -> None:
        """Write every job's chunks, one ``put_many`` per tier."""
        groups: dict[int, tuple[Any, list[tuple[ChunkKey, memoryview]], list[_Job]]]
        groups = {}
        for job in jobs:
            for key, view in job.items:
                tier = job.disk.tier_for(key)
                group = groups.setdefault(id(tier), (tier, [], []))
                group[1].append((key, view))
                group[2].append(job)
        for tier, items, owners in groups.values():
            try:
                put_many = getattr(tier, "put_many", None)
                if put_many is not None:
                    put_many(items)
                else:  # a tier without batches: one at a time
                    for key, view in items:
                        tier.put(key, view)
            except BaseException as exc:
                for job in owners:
                    job.error = exc


def _finish(done: list[Any]) -> None:
    """Settle a batch's jobs and wake the stores waiting for room (on the loop)."""
    for item in done:
        if isinstance(item, _Job):
            fut, error = item.done, item.error
        else:
            fut, error = item, None
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


#: The writer of this process.
WRITER = DiskWriter()
