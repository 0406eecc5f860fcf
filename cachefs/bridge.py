"""The crossing from a caller's thread into the filesystem's event loop.

fsspec's :func:`fsspec.asyn.sync` turns any ``TimeoutError`` raised on the
loop into a bare :class:`fsspec.exceptions.FSTimeoutError`, leaving the
message — which names the URL and the range — only in ``__cause__``. Every
blocking call of cachefs goes through :func:`call_sync`, which keeps the
type fsspec users catch and gives it the message back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fsspec.asyn import sync
from fsspec.exceptions import FSTimeoutError

__all__ = ["call_sync", "named_timeouts"]

T = TypeVar("T")


def named_timeouts(method: Callable[..., T]) -> Callable[..., T]:
    """Wrap a blocking callable so a bare ``FSTimeoutError`` gets its message."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except FSTimeoutError as exc:
            cause = exc.__cause__
            if exc.args or cause is None or not str(cause):
                raise
            raise FSTimeoutError(str(cause)).with_traceback(
                cause.__traceback__
            ) from cause

    return wrapper


_sync = named_timeouts(sync)


def call_sync(
    loop: asyncio.AbstractEventLoop,
    func: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    timeout: float | None = None,
    **kwargs: Any,
) -> T:
    """Run ``func(*args, **kwargs)`` on ``loop`` and wait for its result.

    Parameters
    ----------
    loop
        The loop the coroutine runs on (not the caller's).
    func
        The coroutine function.
    timeout
        Seconds to wait at most, as :func:`fsspec.asyn.sync`.

    Raises
    ------
    FSTimeoutError
        With the message of the timeout that caused it (URL and range).
    """
    result: T = _sync(loop, func, *args, timeout=timeout, **kwargs)
    return result


def name_timeouts_of(obj: Any) -> None:
    """Give the sync mirrors fsspec made on ``obj`` their timeout messages.

    fsspec sets a blocking twin of each ``_method`` on the instance once it is
    built; each is wrapped in :func:`named_timeouts` (once).
    """
    if vars(obj).get("_timeouts_named"):
        return
    for name, attr in list(vars(obj).items()):
        wrapped = getattr(attr, "__wrapped__", None)
        if callable(attr) and asyncio.iscoroutinefunction(wrapped):
            setattr(obj, name, named_timeouts(attr))
    obj._timeouts_named = True
