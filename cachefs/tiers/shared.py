"""The shared tier: chunk records on any fsspec filesystem, cluster-wide.

Below each node's disk tier sits one tier every node reads before the
origin: a directory on a parallel or network filesystem mounted everywhere
(``file://`` on NFS, Lustre, GPFS, Weka, ...), an S3-compatible store near the
cluster, or anything else fsspec reaches. Records use the disk tier's format
(:mod:`cachefs.tiers.record`) and are verified on every read, so a node never
takes a partial or damaged chunk, a record stored under another chunk's name,
or one naming a codec outside the allow-list. Publishing is atomic: a temporary name and
a rename where the engine renames atomically (local and network
filesystems), else a single PUT under the final, content-addressed key
(object stores make an object visible only complete). Budget and eviction
are the engine's business (quotas, lifecycle rules); ``clear()`` empties it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem

from cachefs.chunks import ChunkKey
from cachefs.tiers.record import RecordCodec

__all__ = ["SharedStats", "SharedTier", "call_fs"]

log = logging.getLogger(__name__)

# Protocols whose rename is atomic and whose writes can be seen half-done.
_RENAMING = frozenset({"file", "local"})


async def call_fs(
    fs: AbstractFileSystem, method: str, *args: Any, **kwargs: Any
) -> Any:
    """Call ``fs.<method>`` natively when async, else on a worker thread."""
    if fs.async_impl:
        coro = getattr(fs, "_" + method)(*args, **kwargs)
        if fs.asynchronous or fs.loop is asyncio.get_running_loop():
            return await coro
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(coro, fs.loop)
        )
    return await asyncio.to_thread(getattr(fs, method), *args, **kwargs)


@dataclass(slots=True)
class SharedStats:
    """Counters of the shared tier.

    Attributes
    ----------
    hits, misses, hit_bytes
        Lookups that found (or did not find) a valid chunk, and its bytes.
    puts, put_bytes
        Chunks this process published, and their bytes.
    checksum_failures
        Records found damaged or partial: never served.
    errors
        Failed calls to the engine (counted, logged, never raised).
    """

    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0
    puts: int = 0
    put_bytes: int = 0
    checksum_failures: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return asdict(self)


class SharedTier:
    """Chunk records under ``root`` on the filesystem ``fs``.

    Parameters
    ----------
    fs
        The engine's fsspec filesystem.
    root
        The tier's directory or key prefix on ``fs``.
    codec
        numcodecs codec for new records, or ``None``.
    """

    name = "shared"

    def __init__(self, fs: AbstractFileSystem, root: str, codec: Any = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.stats = SharedStats()
        self._records = RecordCodec(codec)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self.renames = protocol in _RENAMING
        self._tag = f"{socket.gethostname()}.{os.getpid()}"

    def path_for(self, digest: str) -> str:
        """Return the record's path on the engine."""
        return f"{self.root}/chunks/{digest[:2]}/{digest}"

    async def get(self, key: ChunkKey) -> memoryview | None:
        """Return the verified chunk, or ``None`` (missing, damaged, error)."""
        path = self.path_for(key.digest)
        try:
            data = await call_fs(self.fs, "cat_file", path)
        except FileNotFoundError:
            self.stats.misses += 1
            return None
        except Exception as exc:
            self.stats.errors += 1
            log.warning("cachefs: shared tier read of %s failed: %s", path, exc)
            return None
        record, why = RecordCodec.check(memoryview(data), key.length, key.digest)
        chunk = None
        if record is not None:
            chunk = (
                self._records.decode(record, key.length)
                if record.compressed
                else record.payload.toreadonly()
            )
        if chunk is None:
            self.stats.checksum_failures += 1
            why = why or "does not decompress to its length"
            log.warning("cachefs: dropping shared chunk %s: it %s", path, why)
            await self._remove_quietly(path)
            return None
        self.stats.hits += 1
        self.stats.hit_bytes += chunk.nbytes
        return chunk

    async def put(self, key: ChunkKey, chunk: memoryview) -> None:
        """Publish ``chunk`` atomically; failures are counted, never raised."""
        head, payload = self._records.encode(chunk.cast("B"), key.digest)
        blob = head + payload.tobytes()  # one copy, off the read path
        final = self.path_for(key.digest)
        try:
            if self.renames:
                await call_fs(self.fs, "makedirs", f"{self.root}/tmp", exist_ok=True)
                await call_fs(
                    self.fs, "makedirs", final.rpartition("/")[0], exist_ok=True
                )
                tmp = f"{self.root}/tmp/{key.digest}.{self._tag}.{secrets.token_hex(4)}"
                await call_fs(self.fs, "pipe_file", tmp, blob)
                await call_fs(self.fs, "mv", tmp, final)
            else:
                await call_fs(self.fs, "pipe_file", final, blob)
        except Exception as exc:
            self.stats.errors += 1
            log.warning(
                "cachefs: publishing %s to the shared tier failed: %s", final, exc
            )
            return
        self.stats.puts += 1
        self.stats.put_bytes += chunk.nbytes

    async def clear(self) -> None:
        """Remove every record (other nodes simply refetch)."""
        for sub in ("chunks", "tmp"):
            path = f"{self.root}/{sub}"
            with contextlib.suppress(FileNotFoundError):
                await call_fs(self.fs, "rm", path, recursive=True)

    async def _remove_quietly(self, path: str) -> None:
        try:
            await call_fs(self.fs, "rm_file", path)
        except Exception:
            return
