"""The shared tier: chunk records on any fsspec filesystem, cluster-wide.

Below each node's disk tier sits one tier every node reads before the
origin: a directory on a parallel or network filesystem mounted everywhere
(``file://`` on NFS, Lustre, GPFS, Weka, ...), an S3-compatible store near the
cluster, or anything else fsspec reaches. Records use the disk tier's format
(:mod:`cachefs.tiers.record`) and are verified on every read, so a node never
takes a partial or damaged chunk, a record stored under another chunk's name,
or one naming a codec outside the allow-list. Publishing is atomic: a
temporary name and a rename where the engine renames atomically (local and
network filesystems, :mod:`cachefs.tiers.sharedfiles`), else a single PUT
under the final, content-addressed key (object stores make an object visible
only complete). Budget and eviction are the engine's business (quotas,
lifecycle rules); ``clear()`` empties it.

Where the engine has an atomic create (:mod:`cachefs.tiers.lease`), a chunk
missing here is fetched from the origin by one node cluster-wide
(:meth:`SharedTier.fill_once`): the node that takes the chunk's lease fetches
and publishes it, the others wait for it to appear here.

The tier is a cache, so its faults never fail a read nor hold one up: every
call to the engine is bounded by ``timeout`` (the cache's
``request_timeout``) under a :class:`~cachefs.tiers.breaker.Breaker` that
skips the tier for a while after a timeout; anything but a regular file at a
record's path is damage, removed; a failed publish or lease is counted and
logged once, and the chunk comes from the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem

from cachefs.chunks import ChunkKey
from cachefs.tiers.base import AcceptChunk, FetchChunks
from cachefs.tiers.breaker import SKIP_TIME, Breaker, Skipped
from cachefs.tiers.lease import RENEW_LEASES, Claim, Leases, call_fs
from cachefs.tiers.record import RecordCodec
from cachefs.tiers.sharedfiles import (
    NotARecord,
    publish,
    read_regular,
    remove_damage,
)

__all__ = ["SharedStats", "SharedTier", "call_fs"]  # call_fs: re-exported

log = logging.getLogger(__name__)

# Protocols whose rename is atomic and whose writes can be seen half-done.
_RENAMING = frozenset({"file", "local"})

# Polling for a chunk another node fetches: first and longest pause, seconds.
_POLL_FIRST = 0.02
_POLL_MAX = 0.5


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
        Records found damaged or partial, or something other than a regular
        file at a record's path: never served, removed.
    errors
        Failed calls to the engine (counted, logged once, never raised).
    timeouts, skipped
        Calls to the engine that ran past the timeout (each opens the
        breaker), and calls skipped while it was open.
    leases, lease_takeovers, lease_renewals
        Chunk leases this process took, how many of them it took over from
        a holder whose lease had expired, and renewals of held leases.
    lease_failures
        Leases that could not be written or read (a read-only or full
        shared directory): each such chunk was fetched at once.
    lease_waits, lease_timeouts
        Chunks this process waited for while another node fetched them, and
        waits that ran out (the chunk was then fetched here).
    """

    hits: int = 0
    misses: int = 0
    hit_bytes: int = 0
    puts: int = 0
    put_bytes: int = 0
    checksum_failures: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0
    leases: int = 0
    lease_takeovers: int = 0
    lease_renewals: int = 0
    lease_failures: int = 0
    lease_waits: int = 0
    lease_timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counters as a plain dict."""
        return asdict(self)


class SharedTier:
    """Chunk records under ``root`` on the filesystem ``fs``.

    An :class:`~cachefs.tiers.base.AsyncTier`: read on the event loop.

    Parameters
    ----------
    fs
        The engine's fsspec filesystem.
    root
        The tier's directory or key prefix on ``fs``.
    codec
        numcodecs codec for new records, or ``None``.
    lease_time
        Seconds a chunk lease holds (cross-node single flight); ``0`` turns
        leases off.
    timeout
        Seconds any call to the engine may take (the cache's
        ``request_timeout``); ``None`` for no bound.
    skip_time
        Seconds the tier is skipped after a call timed out
        (:data:`cachefs.tiers.breaker.SKIP_TIME` by default).
    """

    name = "shared"

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        codec: Any = None,
        *,
        lease_time: float = 30.0,
        timeout: float | None = None,
        skip_time: float = SKIP_TIME,
    ) -> None:
        self.root = root.rstrip("/")
        self.stats = SharedStats()
        self._records = RecordCodec(codec)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self.renames = protocol in _RENAMING
        self._tag = f"{socket.gethostname()}.{os.getpid()}"
        self.lease_time = lease_time
        self.breaker = Breaker(
            f"{protocol}://{self.root}", timeout, skip_time, stats=self.stats
        )
        self.leases: Leases | None = (
            Leases(
                fs,
                self.root,
                protocol,
                lease_time,
                self._tag,
                self.stats,
                self.breaker,
            )
            if lease_time > 0
            else None
        )
        self._put_warned = False
        self.fs = fs

    @property
    def fs(self) -> AbstractFileSystem:
        """The engine's fsspec filesystem (renewed after a fork)."""
        return self._fs

    @fs.setter
    def fs(self, fs: AbstractFileSystem) -> None:
        self._fs = fs
        if self.leases is not None:
            self.leases.fs = fs

    def path_for(self, digest: str) -> str:
        """Return the record's path on the engine."""
        return f"{self.root}/chunks/{digest[:2]}/{digest}"

    async def get(self, key: ChunkKey) -> memoryview | None:
        """Return the verified chunk, or ``None`` (missing, damaged, error)."""
        return await self._get(key, count_miss=True)

    async def _get(self, key: ChunkKey, *, count_miss: bool) -> memoryview | None:
        path = self.path_for(key.digest)
        try:
            if self.renames:
                data = await self._call_thread(read_regular, path)
            else:
                data = await self._call("cat_file", path)
        except FileNotFoundError:
            self.stats.misses += count_miss
            return None
        except NotARecord as exc:
            await self._drop(path, str(exc.strerror))
            return None
        except (Skipped, TimeoutError):
            return None  # counted by the breaker, which logs once
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
            await self._drop(path, f"it {why or 'does not decompress to its length'}")
            return None
        self.stats.hits += 1
        self.stats.hit_bytes += chunk.nbytes
        return chunk

    async def put(self, key: ChunkKey, chunk: memoryview) -> None:
        """Publish ``chunk`` atomically; failures are counted, never raised.

        Then, published or not, the chunk's lease is released if this
        process holds it: waiting nodes find the chunk, or fetch it.
        """
        try:
            await self._put(key, chunk)
        finally:
            if self.leases is not None:
                await asyncio.shield(self.leases.release(key.digest))

    async def _put(self, key: ChunkKey, chunk: memoryview) -> None:
        head, payload = self._records.encode(chunk.cast("B"), key.digest)
        blob = head + payload.tobytes()  # one copy, off the read path
        final = self.path_for(key.digest)
        try:
            if self.renames:
                await self._publish_file(final, blob)
            else:
                await self._call("pipe_file", final, blob)
        except (Skipped, TimeoutError):
            return  # counted by the breaker, which logs once
        except Exception as exc:
            self.stats.errors += 1
            if not self._put_warned:  # once: a read-only tier would flood the log
                self._put_warned = True
                log.warning(
                    "cachefs: publishing %s to the shared tier failed: %s "
                    "(further failures are counted, not logged)",
                    final,
                    exc,
                )
            return
        self._put_warned = False
        self.stats.puts += 1
        self.stats.put_bytes += chunk.nbytes

    async def _publish_file(self, final: str, blob: bytes) -> None:
        tag = f"{self._tag}.{secrets.token_hex(4)}"
        try:
            await self._call_thread(publish, f"{self.root}/tmp", final, blob, tag)
        except IsADirectoryError:
            # A directory at the record's path: damage. Remove it, try again.
            await self._drop(final, "a directory, not a record")
            await self._call_thread(publish, f"{self.root}/tmp", final, blob, tag)

    async def clear(self) -> None:
        """Remove every record (other nodes simply refetch).

        Asked for, so tried even while the tier is skipped; each call is
        bounded by the timeout all the same.

        Raises
        ------
        TimeoutError
            The engine did not answer within the timeout.
        """
        for sub in ("chunks", "tmp", "leases"):
            path = f"{self.root}/{sub}"
            with contextlib.suppress(FileNotFoundError):
                await asyncio.wait_for(
                    call_fs(self.fs, "rm", path, recursive=True), self.breaker.timeout
                )

    async def fill_once(
        self,
        keys: list[ChunkKey],
        fetch: FetchChunks,
        accept: AcceptChunk,
    ) -> None:
        """Fetch ``keys`` (missing here) from the origin once cluster-wide.

        This process takes the lease of each key it can and calls ``fetch``
        with those (it must deliver them and publish them with :meth:`put`,
        which releases their leases). The keys another node holds the lease
        of are waited for: polled here with backoff while that lease lives
        (renewed by its holder), handed to ``accept`` when published, else
        fetched with ``fetch`` too. Without leases (off, an engine with no
        atomic create, a lease that cannot be written, a tier being
        skipped), ``fetch`` gets the keys at once.

        Raises
        ------
        Exception
            The first failure of ``fetch`` or ``accept``, once every key's
            fetch or wait has ended.
        """
        leases = self.leases
        if leases is None or not keys or not await leases.usable():
            await fetch(keys)
            return
        claims = await asyncio.gather(*(leases.take(k.digest) for k in keys))
        theirs = [k for k, c in zip(keys, claims, strict=True) if c is Claim.HELD]
        mine = [k for k, c in zip(keys, claims, strict=True) if c is Claim.TAKEN]
        # A lease that could not be written: a shared-tier fault, fetch now.
        unleased = [k for k, c in zip(keys, claims, strict=True) if c is Claim.FAILED]
        self.stats.lease_waits += len(theirs)
        # Published (and its lease released) between our miss and our take?
        found = await asyncio.gather(*(self._recheck(k) for k in mine))
        done = [(k, v) for k, v in zip(mine, found, strict=True) if v is not None]
        mine = [k for k, v in zip(mine, found, strict=True) if v is None] + unleased

        async def fetch_leased(group: list[ChunkKey]) -> None:
            try:
                await fetch(group)
            except BaseException:
                # put() releases the leases of what was fetched; a failed
                # fetch gives the others back at once (shielded: a cancelled
                # fill must not leave leases to expire).
                await asyncio.shield(
                    asyncio.gather(*(leases.release(k.digest) for k in group))
                )
                raise

        async def wait(key: ChunkKey) -> None:
            view = await self._await_peer(key)
            if view is not None:
                await accept(key, view)
            else:
                await fetch_leased([key])

        jobs = [accept(k, v) for k, v in done] + [wait(k) for k in theirs]
        if mine:
            jobs.append(fetch_leased(mine))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _await_peer(self, key: ChunkKey) -> memoryview | None:
        """Wait for another node to publish ``key``; ``None``: fetch it here.

        Polls with backoff. Ends when the chunk is here, when this process
        takes its lease (released, or expired: its holder died), when the
        lease cannot be read (a fault), or after as many lease times as a
        holder renews it: every wait is bounded.
        """
        leases = self.leases
        assert leases is not None
        deadline = time.monotonic() + (RENEW_LEASES + 1) * self.lease_time
        delay = _POLL_FIRST
        while True:
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, _POLL_MAX)
            view = await self._get(key, count_miss=False)
            if view is not None:
                return view
            claim = await leases.take(key.digest)
            if claim is Claim.TAKEN:
                # Released because it was published just now, or expired.
                return await self._recheck(key)
            if claim is Claim.FAILED:
                return None
            if time.monotonic() >= deadline:
                self.stats.lease_timeouts += 1
                return None

    async def _recheck(self, key: ChunkKey) -> memoryview | None:
        """Look for ``key`` once more after taking its lease.

        A chunk published (and its lease released) between a miss and the
        take is found here, and the lease given back, rather than fetched
        twice.
        """
        view = await self._get(key, count_miss=False)
        if view is not None and self.leases is not None:
            await self.leases.release(key.digest)
        return view

    async def _drop(self, path: str, why: str) -> None:
        """Count, log and remove a damaged record; never raises."""
        self.stats.checksum_failures += 1
        log.warning("cachefs: dropping shared chunk %s: %s", path, why)
        with contextlib.suppress(Exception):
            if self.renames:
                await self._call_thread(remove_damage, path)
            else:
                await self._call("rm_file", path)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call the engine's ``method`` under the breaker."""
        return await self.breaker.call(
            lambda: call_fs(self.fs, method, *args, **kwargs)
        )

    async def _call_thread(self, func: Any, *args: Any) -> Any:
        """Run a file call of :mod:`cachefs.tiers.sharedfiles` under the breaker."""
        return await self.breaker.call(lambda: asyncio.to_thread(func, *args))
