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
after it was written). The holder *renews* it every third of the lease time
while it fetches and publishes (for at most :data:`RENEW_LEASES` lease
times), so a slow origin does not get the chunk fetched twice; a lease left
unrenewed (its holder died or hung) expires and may be taken over. The
holder then removes the lease; the others poll the shared tier for the
chunk with backoff while the lease lives, then fetch it themselves.

A lease that cannot be *written* (a read-only or full shared directory, an
engine that times out) is a fault of the shared tier, not a lease held by
another node: the chunk is fetched from the origin at once, the fault is
counted (``lease_failures``) and logged once, and leases are skipped for
the breaker's skip time. A lease is a hint for efficiency, never for
correctness: a lost or doubled lease costs an extra origin fetch, never
wrong bytes (records are verified).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem

from cachefs.tiers.breaker import Breaker, Skipped
from cachefs.tiers.sharedfiles import (
    NotARecord,
    link_new,
    read_regular,
    remove_damage,
    replace,
)

__all__ = ["RENEW_LEASES", "Claim", "LeaseRecord", "Leases", "call_fs", "lease_kind"]

log = logging.getLogger(__name__)

_LINKING = frozenset({"file", "local"})
_CONDITIONAL = frozenset({"s3", "s3a"})

#: A holder renews a lease for at most this many lease times, then lets it
#: expire: a fetch that never ends cannot hold the others back for good.
RENEW_LEASES = 10


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


class Claim(enum.Enum):
    """What trying to take a lease came to."""

    #: This process holds the lease: it fetches the chunk.
    TAKEN = "taken"
    #: Another node holds a live lease: wait for the chunk.
    HELD = "held"
    #: The lease could not be written or read (a fault): fetch at once.
    FAILED = "failed"


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
        Where to count: its ``leases``, ``lease_takeovers``,
        ``lease_renewals``, ``lease_failures`` and ``errors`` attributes
        (:class:`cachefs.tiers.shared.SharedStats`).
    breaker
        The shared tier's breaker: every call to the engine runs under it.
    """

    def __init__(
        self,
        fs: AbstractFileSystem,
        root: str,
        protocol: str,
        lease_time: float,
        owner: str,
        stats: Any,
        breaker: Breaker,
    ) -> None:
        self.fs = fs
        self.root = root
        self.kind = lease_kind(protocol)
        self.lease_time = lease_time
        self.owner = owner
        #: Whether the engine honours the atomic create (None: not probed yet).
        self.supported: bool | None = True if self.kind == "link" else None
        self.stats = stats
        self.breaker = breaker
        #: Monotonic time until which leases are not tried (after a fault).
        self.paused_until = 0.0
        self._warned = False
        self._held: dict[str, float] = {}  # digest -> monotonic time taken
        self._renewer: asyncio.Task[None] | None = None
        self._round: asyncio.Future[Any] | None = None
        self._pid = os.getpid()

    def path_for(self, digest: str) -> str:
        """Return the lease's path on the engine."""
        return f"{self.root}/leases/{digest}"

    def holds(self, digest: str) -> bool:
        """Whether this process holds the lease of ``digest``."""
        self._check_fork()
        return digest in self._held

    async def usable(self) -> bool:
        """Whether leases work on this engine now (probing it the first time).

        ``False`` while leases are paused after a fault or the tier is
        skipped; a probe cut short by the breaker is tried again later.
        """
        if self.kind is None or time.monotonic() < self.paused_until:
            return False
        if self.supported is None:
            try:
                self.supported = await self._probe()
            except (Skipped, TimeoutError):
                return False  # no verdict: the engine did not answer
            if not self.supported:
                log.warning(
                    "cachefs: the shared tier at %s ignores or rejects conditional "
                    "writes: no cross-node single flight (each node may fetch a "
                    "chunk the others are fetching)",
                    self.root,
                )
        return self.supported

    async def take(self, digest: str) -> Claim:
        """Try to take the lease of ``digest``.

        An existing lease that has expired is taken over. A lease that
        cannot be written or read is a fault: counted, logged once, leases
        paused for the breaker's skip time, and :attr:`Claim.FAILED`
        returned (fetch the chunk at once).
        """
        self._check_fork()
        if digest in self._held:
            return Claim.TAKEN
        if time.monotonic() < self.paused_until:
            return Claim.FAILED
        path = self.path_for(digest)
        try:
            for _ in range(2):  # a second try when the lease vanished or expired
                if await self._create(path):
                    self._taken(digest)
                    return Claim.TAKEN
                record = await self._read(path)
                if record is None:
                    continue  # released between our create and our read
                if record.expires > time.time():
                    return Claim.HELD
                # Expired, or not a lease at all: take it over. Two nodes
                # taking over at once may both win (each removes and creates):
                # an extra origin fetch, never wrong bytes.
                with contextlib.suppress(FileNotFoundError):
                    await self._call("rm_file", path)
                self.stats.lease_takeovers += 1
        except (Skipped, TimeoutError):
            return Claim.FAILED  # counted by the breaker, which logs once
        except Exception as exc:
            self._fault(path, exc)
            return Claim.FAILED
        return Claim.HELD  # raced twice: someone holds it now

    async def release(self, digest: str) -> None:
        """Remove the lease of ``digest`` if this process holds it."""
        self._check_fork()
        if self._held.pop(digest, None) is None:
            return
        if self._round is not None:
            # A renewal writing this lease now must not recreate it after us.
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._round)
        if not self._held and self._renewer is not None:
            self._renewer.cancel()  # nothing left to renew
            self._renewer = None
        path = self.path_for(digest)
        try:
            await self._call("rm_file", path)
        except (FileNotFoundError, Skipped, TimeoutError):
            return  # gone, or left to expire
        except Exception as exc:
            self.stats.errors += 1
            log.warning("cachefs: releasing the lease %s failed: %s", path, exc)

    def _taken(self, digest: str) -> None:
        self._held[digest] = time.monotonic()
        self.stats.leases += 1
        if self._warned:
            self._warned = False
            log.warning(
                "cachefs: leases on the shared tier at %s work again", self.root
            )
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_all())

    def _fault(self, path: str, exc: BaseException) -> None:
        """Count a lease that could not be written; pause leases; log once."""
        self.stats.lease_failures += 1
        self.paused_until = time.monotonic() + self.breaker.skip_time
        if not self._warned:
            self._warned = True
            log.warning(
                "cachefs: cannot write the lease %s (%s): fetching from the origin "
                "without cross-node single flight for %s s",
                path,
                exc,
                self.breaker.skip_time,
            )

    async def _renew_all(self) -> None:
        """Renew every held lease each third of the lease time, while any is."""
        while self._held:
            await asyncio.sleep(self.lease_time / 3)
            limit = time.monotonic() - RENEW_LEASES * self.lease_time
            due = [d for d, t in self._held.items() if t > limit]
            if not due:
                continue  # held too long: left to expire
            self._round = asyncio.ensure_future(
                asyncio.gather(*(self._renew(d) for d in due), return_exceptions=True)
            )
            try:
                await self._round
            finally:
                self._round = None

    async def _renew(self, digest: str) -> None:
        """Push the lease's expiry on, if it is still this process's."""
        path = self.path_for(digest)
        try:
            record = await self._read(path)
            if record is None or record.owner != self.owner or digest not in self._held:
                return  # released, or taken over: not ours to renew
            blob = LeaseRecord(self.owner, time.time() + self.lease_time).encode()
            if self.kind == "link":
                tag = f"{self.owner}.{secrets.token_hex(4)}"
                await self._call_thread(replace, path, blob, tag)
            else:
                await self._call("pipe_file", path, blob)
        except Exception as exc:  # the lease may expire: an extra fetch at worst
            log.debug("cachefs: renewing the lease %s failed: %s", path, exc)
            return
        self.stats.lease_renewals += 1

    async def _read(self, path: str) -> LeaseRecord | None:
        """Return the lease at ``path``; ``None`` if none; a stand-in if garbled."""
        try:
            if self.kind == "link":
                data = await self._call_thread(read_regular, path)
            else:
                data = await self._call("cat_file", path)
        except FileNotFoundError:
            return None
        except NotARecord:
            await self._call_thread(remove_damage, path)
            return None
        # Not a lease at all: treated as expired (taken over).
        return LeaseRecord.decode(data) or LeaseRecord("", 0.0)

    async def _create(self, path: str) -> bool:
        """Create the lease at ``path`` unless one exists; ``True`` if created."""
        blob = LeaseRecord(self.owner, time.time() + self.lease_time).encode()
        if self.kind == "link":
            result: bool = await self._call_thread(link_new, path, blob, self.owner)
            return result
        try:
            await self._call("pipe_file", path, blob, mode="create")
        except FileExistsError:
            return False
        return True

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self.breaker.call(
            lambda: call_fs(self.fs, method, *args, **kwargs)
        )

    async def _call_thread(self, func: Any, *args: Any) -> Any:
        return await self.breaker.call(lambda: asyncio.to_thread(func, *args))

    async def _probe(self) -> bool:
        """Check that a second conditional create of one name is refused.

        Raises
        ------
        Skipped, TimeoutError
            The engine did not answer (no verdict).
        """
        path = f"{self.root}/leases/probe.{self.owner}.{secrets.token_hex(4)}"
        try:
            if not await self._create(path):
                return False
            try:
                return not await self._create(path)
            finally:
                with contextlib.suppress(Exception):
                    await self._call("rm_file", path)
        except (Skipped, TimeoutError):
            raise
        except Exception as exc:
            log.debug("cachefs: conditional-write probe of %s failed: %s", path, exc)
            return False

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            # A forked child holds none of its parent's leases.
            self._held = {}
            self._renewer = None
            self._round = None
            self._pid = os.getpid()
