"""Cross-node single flight: chunk leases on the shared tier's own engine.

Before a node fetches a chunk from the origin (having missed it in the
shared tier) it takes the chunk's *lease*: a small record under
``<root>/leases/<digest>`` created only if none exists, with the engine's
own atomic primitive, so that no service of cachefs's runs anywhere:

- a local-style filesystem (``file://`` on a local disk, NFS, Lustre, GPFS,
  ...): the record is written to a temporary name and ``link()``-ed to the
  lease's name, which fails with ``EEXIST`` when the lease exists (the
  classic lock-file idiom, atomic on NFS too, where ``O_EXCL`` once was not);
- an S3-compatible store: a conditional PUT (``If-None-Match: *``, s3fs's
  ``mode="create"``), probed once per process; a store that rejects or
  ignores the condition gets no leases (every node fetches, as before);
- any other engine: no leases.

A lease names its holder and the time it expires (``lease_time`` seconds
after it was taken); an expired lease (its holder died or hung) may be
taken over. The holder fetches the chunk, publishes it to the shared tier
and then removes the lease; the others poll the shared tier for the chunk
with backoff, for at most about ``lease_time``, then fetch it themselves.
A lease is a hint for efficiency, never for correctness: a lost or doubled
lease costs an extra origin fetch, never wrong bytes (records are verified).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem

__all__ = ["LeaseRecord", "Leases", "call_fs", "lease_kind"]

log = logging.getLogger(__name__)

_LINKING = frozenset({"file", "local"})
_CONDITIONAL = frozenset({"s3", "s3a"})


async def call_fs(
    fs: AbstractFileSystem, method: str, *args: Any, **kwargs: Any
) -> Any:
    """Call ``fs.<method>`` natively when async, else on a worker thread."""
    from cachefs.bridge import call  # the one crossing into a target

    return await call(fs, method, *args, **kwargs)


def lease_kind(protocol: str) -> str | None:
    """Return how leases are created on ``protocol``'s engine, or ``None``.

    ``"link"`` for local-style filesystems, ``"conditional-put"`` for
    S3-compatible stores (still probed), ``None`` where the engine has no
    atomic create that cachefs knows of.
    """
    if protocol in _LINKING:
        return "link"
    if protocol in _CONDITIONAL:
        return "conditional-put"
    return None


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a lease says: who holds it, and until when (Unix time)."""

    owner: str
    expires: float

    def encode(self) -> bytes:
        """Return the record's bytes."""
        return json.dumps({"owner": self.owner, "expires": self.expires}).encode()

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord | None:
        """Parse a record; ``None`` when it is not one."""
        try:
            raw = json.loads(data)
            return cls(str(raw["owner"]), float(raw["expires"]))
        except (ValueError, KeyError, TypeError):
            return None


class Leases:
    """The chunk leases under ``root`` on ``fs``.

    Parameters
    ----------
    fs
        The shared tier's filesystem.
    root
        The shared tier's directory or prefix; leases live under ``leases/``.
    protocol
        ``fs``'s protocol name.
    lease_time
        Seconds a lease holds before others may take it over.
    owner
        This process's name in the leases it takes (host and pid).
    stats
        Where to count: its ``leases``, ``lease_takeovers`` and ``errors``
        attributes (:class:`cachefs.tiers.shared.SharedStats`).
    """

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        protocol: str,
        lease_time: float,
        owner: str,
        stats: Any,
    ) -> None:
        self.fs = fs
        self.root = root
        self.kind = lease_kind(protocol)
        self.lease_time = lease_time
        self.owner = owner
        #: Whether the engine honours the atomic create (None: not probed yet).
        self.supported: bool | None = True if self.kind == "link" else None
        self.stats = stats
        self._held: set[str] = set()
        self._pid = os.getpid()

    def path_for(self, digest: str) -> str:
        """Return the lease's path on the engine."""
        return f"{self.root}/leases/{digest}"

    def holds(self, digest: str) -> bool:
        """Whether this process holds the lease of ``digest``."""
        self._check_fork()
        return digest in self._held

    async def usable(self) -> bool:
        """Whether leases work on this engine (probing it the first time)."""
        if self.kind is None:
            return False
        if self.supported is None:
            self.supported = await self._probe()
            if not self.supported:
                log.warning(
                    "cachefs: the shared tier at %s ignores or rejects conditional "
                    "writes: no cross-node single flight (each node may fetch a "
                    "chunk the others are fetching)",
                    self.root,
                )
        return self.supported

    async def take(self, digest: str) -> bool:
        """Try to take the lease of ``digest``; ``True`` when this process holds it.

        An existing lease that has expired is taken over. Engine errors are
        counted and logged; they leave the lease untaken.
        """
        self._check_fork()
        if digest in self._held:
            return True
        path = self.path_for(digest)
        try:
            for _ in range(2):  # a second try when the lease vanished or expired
                if await self._create(path):
                    self._held.add(digest)
                    self.stats.leases += 1
                    return True
                try:
                    data = await call_fs(self.fs, "cat_file", path)
                except FileNotFoundError:
                    continue  # released between our create and our read
                record = LeaseRecord.decode(data)
                if record is not None and record.expires > time.time():
                    return False
                # Expired, or not a lease at all: take it over. Two nodes
                # taking over at once may both win (each removes and creates):
                # an extra origin fetch, never wrong bytes.
                with contextlib.suppress(FileNotFoundError):
                    await call_fs(self.fs, "rm_file", path)
                self.stats.lease_takeovers += 1
        except Exception as exc:
            self.stats.errors += 1
            log.warning("cachefs: taking the lease %s failed: %s", path, exc)
        return False

    async def release(self, digest: str) -> None:
        """Remove the lease of ``digest`` if this process holds it."""
        self._check_fork()
        if digest not in self._held:
            return
        self._held.discard(digest)
        path = self.path_for(digest)
        try:
            await call_fs(self.fs, "rm_file", path)
        except FileNotFoundError:
            return
        except Exception as exc:
            self.stats.errors += 1
            log.warning("cachefs: releasing the lease %s failed: %s", path, exc)

    async def _create(self, path: str) -> bool:
        """Create the lease at ``path`` unless one exists; ``True`` if created."""
        blob = LeaseRecord(self.owner, time.time() + self.lease_time).encode()
        if self.kind == "link":
            return await asyncio.to_thread(self._link, path, blob)
        try:
            await call_fs(self.fs, "pipe_file", path, blob, mode="create")
        except FileExistsError:
            return False
        return True

    def _link(self, path: str, blob: bytes) -> bool:
        folder = os.path.dirname(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = f"{path}.{self.owner}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
        try:
            # link() publishes the complete record atomically, or fails.
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    async def _probe(self) -> bool:
        """Check that a second conditional create of one name is refused."""
        path = f"{self.root}/leases/probe.{self.owner}.{secrets.token_hex(4)}"
        try:
            if not await self._create(path):
                return False
            try:
                return not await self._create(path)
            finally:
                with contextlib.suppress(Exception):
                    await call_fs(self.fs, "rm_file", path)
        except Exception as exc:
            log.debug("cachefs: conditional-write probe of %s failed: %s", path, exc)
            return False

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # A forked child holds none of its parent's leases.
            self._held = set()
            self._pid = os.getpid()
