"""The crossings between threads, loops and processes, in one place.

- :func:`call_sync` and :func:`named_timeouts`: a caller's thread into the
  filesystem's event loop.
- :func:`on_own_loop`: a coroutine awaited on another loop onto its owner's.
- :func:`call`: a call of a target filesystem's method from the loop,
  natively when it is async, on a worker thread when it is not.
- :func:`renewed`: an async target rebuilt for a forked child's loop.
- :func:`register`: the live stateful objects of the process; a forked
  child calls their ``after_fork()`` (the one fork hook) and the exit
  calls their ``drain_at_exit()`` (the one exit hook).
- :func:`open_lock_fd` and :func:`close_lock_fd`: every descriptor that
  holds (or is about to take) a cross-process ``flock``, whatever module
  opened it; the same fork hook closes them all in the child first.

fsspec's :func:`fsspec.asyn.sync` turns any ``TimeoutError`` raised on the
loop into a bare :class:`fsspec.exceptions.FSTimeoutError`, leaving the
message — which names the URL and the range — only in ``__cause__``. Every
blocking call of cachefs goes through :func:`call_sync`, which keeps the
type fsspec users catch and gives it the message back.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook must come first
import contextlib
import errno
import functools
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import fsspec
from fsspec.asyn import sync
from fsspec.exceptions import FSTimeoutError
from fsspec.spec import AbstractFileSystem

__all__ = [
    "build_target",
    "call",
    "call_sync",
    "close_lock_fd",
    "live",
    "name_timeouts_of",
    "named_timeouts",
    "on_own_loop",
    "open_lock_fd",
    "register",
    "renewed",
]

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
    result: T = _sync(loop, _cancel_is_an_error, func, *args, timeout=timeout, **kwargs)
    return result


async def _cancel_is_an_error(
    func: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
) -> T:
    """Await ``func``; a cancellation that is not this task's is an error.

    fsspec's ``sync`` hands back ``None`` for a coroutine that raised
    :class:`asyncio.CancelledError` (not an ``Exception``), so a caller
    unpacking the result met a ``TypeError`` far from the cause. A
    cancelled future awaited inside (a request another caller cancelled)
    becomes an ``OSError(ECANCELED)`` naming the call; this task's own
    cancellation (a timeout) stays one, so timeouts are still reported as
    timeouts.
    """
    try:
        return await func(*args, **kwargs)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        name = getattr(func, "__qualname__", repr(func))
        raise OSError(
            errno.ECANCELED,
            f"cachefs: {name} ended because work it waited for was cancelled",
        ) from None


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


# -- calls into a target -------------------------------------------------------


async def call(
    target: AbstractFileSystem, method: str, *args: Any, **kwargs: Any
) -> Any:
    """Call ``target.<method>`` from the running loop; return its result.

    An async target's ``_<method>`` coroutine runs natively on its own loop
    (handed over when that is not the running one); a sync target's method
    runs on a worker thread, so the loop never blocks on it.
    """
    if target.async_impl:
        coro = getattr(target, "_" + method)(*args, **kwargs)
        if target.asynchronous or target.loop is asyncio.get_running_loop():
            return await coro
        fut = asyncio.run_coroutine_threadsafe(coro, target.loop)
        return await asyncio.wrap_future(fut)
    return await asyncio.to_thread(getattr(target, method), *args, **kwargs)


def build_target(
    protocol: str,
    options: dict[str, Any],
    param: str,
    *,
    loop: asyncio.AbstractEventLoop | None,
) -> AbstractFileSystem:
    """Build the fsspec filesystem of ``protocol`` for a cache on ``loop``.

    An async filesystem shares the cache's loop (``None``: an asynchronous
    cache, whose filesystems are asynchronous too), so its coroutines run
    natively in the cache's fetches.

    Raises
    ------
    ValueError
        For a protocol fsspec does not know or cannot import; names
        ``param``.
    """
    options = dict(options)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise ValueError(f"{param}={protocol!r}: {exc}") from exc
    if getattr(cls, "async_impl", False):
        options.setdefault("asynchronous", loop is None)
        if loop is not None:
            options.setdefault("loop", loop)
    built: AbstractFileSystem = cls(**options)
    return built


def renewed(
    target: AbstractFileSystem, loop: asyncio.AbstractEventLoop
) -> AbstractFileSystem:
    """Return ``target`` rebuilt on ``loop`` if it is async, else ``target``.

    A forked child inherits its parent's sessions and loop in an async
    target; neither works there.
    """
    if not getattr(target, "async_impl", False):
        return target
    options = dict(target.storage_options)
    if "loop" in options:
        options["loop"] = loop
    options["skip_instance_cache"] = True
    fresh: AbstractFileSystem = type(target)(*target.storage_args, **options)
    _share_models(target, fresh)
    return fresh


def _share_models(parent: Any, fresh: Any) -> None:
    """Let a renewed s3fs target's session read the parent's botocore models.

    Creating an S3 client parses botocore's JSON models: 0.07 s of CPU in
    every forked DataLoader worker of every epoch, before its first request.
    The loader holding them is plain data, so the child gets a session of
    its own (its own credentials) over the parent's loader: 0.02 s.
    """
    loader = getattr(getattr(parent, "session", None), "get_component", None)
    if loader is None or getattr(fresh, "session", True) is not None:
        return  # not s3fs, or a session the user passed (shared as it is)
    try:
        from aiobotocore.session import AioSession  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover (s3fs brings it)
        return
    session = AioSession(**getattr(fresh, "kwargs", {}))
    session.register_component("data_loader", loader("data_loader"))
    fresh.session = session


# -- a coroutine onto its owner's loop -----------------------------------------


class LoopOwner(Protocol):
    """What :func:`on_own_loop` needs of its method's owner."""

    asynchronous: bool

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...


def on_own_loop(
    method: Callable[..., Coroutine[Any, Any, T]],
) -> Callable[..., Coroutine[Any, Any, T]]:
    """Run an async method on its owner's loop, whoever awaits it.

    A non-``asynchronous`` owner keeps its fetches, sessions and locks on
    fsspec's loop; a library awaiting its coroutines from another loop (zarr's
    ``FsspecStore`` does) is served by handing the call over to that loop.
    """

    @functools.wraps(method)
    async def on_own_loop(self: LoopOwner, *args: Any, **kwargs: Any) -> T:
        if not self.asynchronous and asyncio.get_running_loop() is not self.loop:
            coro = method(self, *args, **kwargs)
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
            return await asyncio.wrap_future(fut)
        return await method(self, *args, **kwargs)

    return on_own_loop


# -- descriptors holding flock locks: never inherited -------------------------

#: Descriptors this process holds cross-process locks on (or is taking one on).
_LOCK_FDS: set[int] = set()
#: Held while a lock descriptor is opened and registered, or unregistered and
#: closed, and across ``fork()``: a fork cannot land between ``open`` and
#: the registration (the child would keep a copy nobody knows of), nor
#: between the unregistration and ``close``. Reentrant: a garbage collection
#: inside ``open_lock_fd`` may finalize a tier, whose ``__del__`` closes its
#: stripe descriptor here, in the same thread (a plain lock hung there).
_LOCK_FDS_GUARD = threading.RLock()


def open_lock_fd(opener: Callable[[], int]) -> int:
    """Open a descriptor to take a ``flock`` on; a forked child closes it.

    ``flock`` belongs to the open file description, which a forked child
    shares. A child that kept a copy would hold the lock for as long as it
    lives once the parent closes its own descriptor: the child's writers,
    and every other process of the node, would then block. Every such
    descriptor of the package is opened here and closed with
    :func:`close_lock_fd`.

    Parameters
    ----------
    opener
        Opens the file and returns the descriptor: a few quick system calls
        (a fork waits for them).
    """
    with _LOCK_FDS_GUARD:
        fd = opener()
        _LOCK_FDS.add(fd)
    return fd


def close_lock_fd(fd: int) -> None:
    """Close a descriptor from :func:`open_lock_fd`, dropping its lock."""
    with _LOCK_FDS_GUARD:
        _LOCK_FDS.discard(fd)
        os.close(fd)


def _before_fork() -> None:
    _LOCK_FDS_GUARD.acquire()


def _after_fork_in_parent() -> None:
    _LOCK_FDS_GUARD.release()


def _close_inherited_lock_fds() -> None:
    global _LOCK_FDS_GUARD
    # Closing the child's copy leaves the parent's lock with the parent: its
    # own descriptor keeps the open file description, and the lock, alive.
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    _LOCK_FDS_GUARD = threading.RLock()  # the forking thread held it


# -- live objects: one fork hook, one exit hook --------------------------------

_LIVE: dict[int, weakref.ref[Any]] = {}


def register(obj: Any) -> None:
    """Hold ``obj`` (weakly) among the live stateful objects of the process.

    In a forked child its ``after_fork()`` runs, if it has one: locks another
    thread held at fork would never be released there, and the parent's
    fetches, loop and sessions are not the child's. At exit its
    ``drain_at_exit()`` runs, if it has one, before worker threads stop
    taking work. Register an object once; it leaves when it is collected.
    """
    key = id(obj)
    _LIVE[key] = weakref.ref(obj, lambda _: _LIVE.pop(key, None))


def live() -> list[Any]:
    """Return the registered objects still alive."""
    return [obj for ref in list(_LIVE.values()) if (obj := ref()) is not None]


def _after_fork_in_child() -> None:
    _close_inherited_lock_fds()
    for obj in live():
        hook = getattr(obj, "after_fork", None)
        if hook is not None:
            hook()


def _drain_at_exit() -> None:
    for obj in live():
        hook = getattr(obj, "drain_at_exit", None)
        if hook is not None:
            # Best effort: the interpreter is going away.
            with contextlib.suppress(Exception):
                hook()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)

# The drain must run before concurrent.futures refuses new work at exit (its
# own hook runs when threading shuts down, before atexit): a fill still
# streaming would otherwise lose its disk writes ("cannot schedule new
# futures after interpreter shutdown"). Threading's exit hooks run newest
# first, so registering after concurrent.futures is imported puts this one
# ahead of it; atexit is the fallback where that hook does not exist.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_drain_at_exit)
else:  # pragma: no cover - every CPython >= 3.9 has it
    atexit.register(_drain_at_exit)
