"""A circuit breaker for the shared tier: a slow engine costs one timeout.

The shared tier is a cache: when its engine is slow or dead (an S3 endpoint
that accepts connections and never answers, a hung network mount) a read
must not wait on it. Every call to the engine runs under ``timeout``
(the cache's ``request_timeout``); the first call that runs past it *opens*
the breaker, and for ``skip_time`` seconds (:data:`SKIP_TIME` unless set)
every call is skipped at once: the node reads from the origin, as it would
with no shared tier. When the skip time is over, one call goes through as a
probe; if the engine answers (with data or with an error: it is alive) the
breaker closes, if it times out again the tier is skipped once more.

A call that runs past its timeout is abandoned, not joined: an async engine's
coroutine is cancelled, a sync engine's worker thread is left to finish on
its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["SKIP_TIME", "Breaker", "Skipped"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds the shared tier is skipped after a call to it timed out.
SKIP_TIME = 30.0


class Skipped(Exception):
    """Raised instead of calling an engine while its breaker is open."""


class Breaker:
    """Bound calls to one engine; skip it for a while after a timeout.

    Parameters
    ----------
    name
        The engine, for messages (its URL).
    timeout
        Seconds a call may take; ``None`` for no bound (and no breaker).
    skip_time
        Seconds the engine is skipped after a timeout.
    stats
        Where to count: its ``timeouts`` and ``skipped`` attributes.
    """

    def __init__(
        self,
        name: str,
        timeout: float | None,
        skip_time: float = SKIP_TIME,
        *,
        stats: Any,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive or None, got {timeout!r}")
        if skip_time < 0:
            raise ValueError(f"skip_time must be >= 0, got {skip_time!r}")
        self.name = name
        self.timeout = timeout
        self.skip_time = skip_time
        self.stats = stats
        #: Monotonic time until which calls are skipped; 0.0: closed.
        self.open_until = 0.0
        self._probing = False
        self._pid = os.getpid()

    @property
    def is_open(self) -> bool:
        """Whether calls are being skipped now (a probe in flight included)."""
        return self.open_until > 0.0 and (
            self._probing or time.monotonic() < self.open_until
        )

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Return ``await make()``, bounded by the timeout.

        Raises
        ------
        Skipped
            The breaker is open: ``make`` was not called.
        TimeoutError
            The call ran past the timeout (the breaker is now open).
        Exception
            Whatever the call raised (the engine answered: it is alive).
        """
        probe = self._admit()
        try:
            result = await asyncio.wait_for(make(), self.timeout)
        except TimeoutError:
            self._trip()
            raise
        except Exception:
            self._close(probe)
            raise
        except BaseException:
            if probe:  # cancelled: no verdict, the next call probes
                self._probing = False
            raise
        self._close(probe)
        return result

    def _admit(self) -> bool:
        """Let a call through (``True``: as the probe) or raise Skipped."""
        if os.getpid() != self._pid:
            # A forked child: its parent's probe does not run here.
            self._pid = os.getpid()
            self._probing = False
        if self.open_until == 0.0:
            return False
        if self._probing or time.monotonic() < self.open_until:
            self.stats.skipped += 1
            raise Skipped(self.name)
        self._probing = True  # one call tries the engine; the rest skip
        return True

    def _trip(self) -> None:
        self.stats.timeouts += 1
        was_open = self.open_until > 0.0
        self.open_until = time.monotonic() + self.skip_time
        self._probing = False
        if not was_open:
            log.warning(
                "cachefs: the shared tier at %s did not answer within %s s: "
                "skipping it for %s s (reads go to the origin)",
                self.name,
                self.timeout,
                self.skip_time,
            )

    def _close(self, probe: bool) -> None:
        if probe or self.open_until > 0.0:
            if self.open_until > 0.0:
                log.warning("cachefs: the shared tier at %s answers again", self.name)
            self.open_until = 0.0
            self._probing = False
