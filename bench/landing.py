"""Where a received chunk should land on its way to a file (part of disk_writes).

A sender process streams 4 MiB chunks over loopback TCP; the receiver lands
each chunk and stores it in a file of its own, one of four ways:

- ``anon buffer + buffered write``: ``recv_into`` a reused anonymous buffer
  (the landing pool, warm), then one ``pwrite`` through the page cache:
  what cachefs does with buffered writes;
- ``anon buffer + O_DIRECT``: the same buffer, written past the page cache
  (``direct_writes``);
- ``file mapping``: ``recv_into`` a ``MAP_SHARED`` mapping of the file
  itself, sized with ``ftruncate``: the socket's bytes land in the page
  cache once, with no second copy;
- ``file mapping + MAP_POPULATE``: the same, the mapping faulted in first.

Rows give the receiver's CPU per chunk (user + system of the whole process:
receive and store), the reference being the buffered write. Every stored
file is read back and compared with what was sent.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import resource
import socket
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.report import Row

__all__ = ["run_landing"]

CHUNK = 4 << 20
HEAD = 4096  # a record's header room: the payload starts page-aligned
REFERENCE = "anon buffer + buffered write"
_ROW = f"receive + store one {CHUNK >> 20} MiB chunk (receiver CPU)"


def _send(port: int, chunks: int, seed: int) -> None:
    data = _payload(seed)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(chunks):
            conn.sendall(data)


def _payload(seed: int) -> bytes:
    piece = bytes((seed * 31 + i) % 251 for i in range(4096))
    return piece * (CHUNK // 4096)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _recv_exact(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < view.nbytes:
        n = conn.recv_into(view[got:])
        if not n:
            raise EOFError("the sender closed early")
        got += n


def _lands(
    pool: list[mmap.mmap],
) -> dict[str, Callable[[socket.socket, str, int], None]]:
    def anon(conn: socket.socket, path: str, i: int, direct: bool = False) -> None:
        view = memoryview(pool[i % len(pool)])
        _recv_exact(conn, view)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if direct else 0)
        fd = os.open(path, flags, 0o600)
        try:
            os.pwrite(fd, view, HEAD)
        finally:
            os.close(fd)

    def mapped(conn: socket.socket, path: str, i: int, populate: bool = False) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, HEAD + CHUNK)
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
            with mmap.mmap(fd, HEAD + CHUNK, flags=flags) as region:
                view = memoryview(region)[HEAD:]
                try:
                    _recv_exact(conn, view)
                finally:
                    view.release()
        finally:
            os.close(fd)

    return {
        REFERENCE: anon,
        "anon buffer + O_DIRECT": lambda c, p, i: anon(c, p, i, direct=True),
        "file mapping (MAP_SHARED)": mapped,
        "file mapping + MAP_POPULATE": lambda c, p, i: mapped(c, p, i, populate=True),
    }


def _one_pass(
    land: Callable[[socket.socket, str, int], None], where: Path, chunks: int, seed: int
) -> float:
    """Receive ``chunks`` chunks and store each; the receiver's CPU seconds."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        ctx = multiprocessing.get_context("fork")
        sender = ctx.Process(target=_send, args=(port, chunks, seed))
        sender.start()
        conn, _ = listener.accept()
        with conn:
            c0 = _cpu()
            for i in range(chunks):
                land(conn, str(where / f"c{i}"), i)
            spent = _cpu() - c0
        sender.join(60)
    expected = _payload(seed)
    for i in range(chunks):
        with open(where / f"c{i}", "rb") as f:
            f.seek(HEAD)
            if f.read() != expected:
                raise AssertionError(f"chunk {i} was not stored as sent")
    return spent


def run_landing(quick: bool) -> list[Row]:
    """Receiver CPU per chunk for each way of landing and storing it."""
    chunks = 16 if quick else 64
    repeats = 3 if quick else 5
    pool = [
        mmap.mmap(-1, CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for _ in range(8)
    ]
    for buffer in pool:  # a warm pool, as a long-running job's
        with contextlib.suppress(AttributeError, OSError):
            buffer.madvise(mmap.MADV_HUGEPAGE)
        buffer[:] = bytes(CHUNK)
    ms: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for rep in range(repeats):
            for name, land in _lands(pool).items():  # interleaved
                if name in failed:
                    continue
                where = Path(tempfile.mkdtemp(dir=tmp))
                try:
                    spent = _one_pass(land, where, chunks, seed=rep)
                except OSError as exc:  # e.g. no O_DIRECT on this filesystem
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    continue
                finally:
                    for f in where.iterdir():
                        os.truncate(f, 0)  # free the blocks, keep the inodes
                ms.setdefault(name, []).append(1e3 * spent / chunks)
    base = statistics.median(ms[REFERENCE])
    rows = []
    for name, samples in ms.items():
        value = statistics.median(samples)
        rows.append(
            Row(
                row=_ROW,
                system=name,
                value=value,
                unit="ms/chunk",
                samples=samples,
                reference=REFERENCE,
                ratio=base / value if value else None,
                detail={
                    "cpu_s_per_gib": value * (2**30 / CHUNK) / 1e3,
                    "chunks_per_repeat": chunks,
                    "repeats": repeats,
                },
            )
        )
    for name, why in failed.items():
        rows.append(
            Row(_ROW, name, float("nan"), "ms/chunk", detail={"unavailable": why})
        )
    return rows
