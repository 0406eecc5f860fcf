"""Bounded waits for a lock another process of the node holds.

A process fetching a chunk (or learning a file's version) holds a
cross-process lock until the bytes are on disk; the others poll instead of
fetching again. The holder may be stopped (``SIGSTOP``, a debugger, a
swapped-out node) and keep its lock for as long as it pleases, so a waiter
waits at most as long as the fetch it waits for could take
(:func:`fetch_budget`). Past that it fetches the bytes itself: correct
bytes, at worst one extra origin read.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from typing import Protocol

from cachefs.tiers.base import ProcessLock

__all__ = ["FetchLimits", "Turn", "fetch_budget", "wait_turn"]

_POLL_FIRST = 0.002
_POLL_MAX = 0.05


class FetchLimits(Protocol):
    """What bounds one origin fetch (a :class:`~cachefs.fetch.Fetcher`)."""

    timeout: float | None
    retries: int
    backoff: float


def fetch_budget(limits: FetchLimits) -> float | None:
    """Return the seconds one fetch may take at most, or ``None`` (no bound).

    Every try may run its whole ``request_timeout``, and the backoffs
    between tries (each at most 1.5 times its nominal delay, which doubles)
    come on top. With ``request_timeout=None`` a fetch is unbounded, and so
    is the wait for one.
    """
    if limits.timeout is None:
        return None
    tries = limits.retries + 1
    backoffs = 1.5 * limits.backoff * ((1 << limits.retries) - 1)
    return limits.timeout * tries + backoffs


class Turn(enum.Enum):
    """How :func:`wait_turn` ended."""

    #: The other process finished: what it fetched is there.
    DONE = "done"
    #: The lock is ours now.
    OURS = "ours"
    #: The budget ran out with the lock still held elsewhere.
    WAITED_OUT = "waited_out"


async def wait_turn(
    lock: ProcessLock,
    budget: float | None,
    done: Callable[[], bool] | None = None,
) -> Turn:
    """Poll until ``done()`` holds or ``lock`` is ours, for ``budget`` seconds.

    Polls off any thread, with a delay doubling from 2 ms to 50 ms: a
    waiter sees the bytes within 50 ms of their arrival, and a long wait
    costs 20 wakeups a second.

    Parameters
    ----------
    lock
        The lock the other process holds while it fetches.
    budget
        Seconds to wait at most (``None``: until one of the two happens).
    done
        Whether what the holder fetches is there now (checked before each
        try of the lock).
    """
    deadline = None if budget is None else time.monotonic() + budget
    delay = _POLL_FIRST
    while True:
        if done is not None and done():
            return Turn.DONE
        if lock.try_acquire():
            return Turn.OURS
        nap = delay
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return Turn.WAITED_OUT
            nap = min(nap, left)
        await asyncio.sleep(nap)
        delay = min(delay * 2, _POLL_MAX)
