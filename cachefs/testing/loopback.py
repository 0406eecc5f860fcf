"""An aiohttp application served on loopback from a daemon thread.

The base of the demo's origin (:mod:`cachefs.cli.demo_origin`) and of the
test and benchmark origin (:class:`cachefs.testing.origin.HTTPOrigin`): it
binds ``127.0.0.1`` on port 0 (so parallel runs never collide), runs the
application on its own event loop, and stops cleanly. Subclasses implement
:meth:`LoopbackServer._handle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["LoopbackServer"]


class LoopbackServer:
    """Serve :meth:`_handle` for every GET (and HEAD) on ``127.0.0.1``."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set on stop; handlers waiting on it (latency, stalls) end early.
        self._closing: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """TCP port the server listens on (0 before ``start``)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, ``"http://127.0.0.1:PORT"`` (no trailing slash)."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self, timeout: float = 10.0) -> Self:
        """Start serving in a daemon thread; block until listening.

        Parameters
        ----------
        timeout : float, default 10.0
            Seconds to wait for the server to come up.

        Returns
        -------
        Self
            This server, to allow ``server = Server(...).start()``.
        """
        name = type(self).__name__
        if self._thread is not None:
            raise RuntimeError(f"{name} already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._port = sock.getsockname()[1]
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"{name}-{self._port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            error = self._error
            self.stop()
            raise RuntimeError(f"{name} failed to start") from error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down: wake waiting handlers, close connections, join the thread."""
        thread, loop, closing = self._thread, self._loop, self._closing
        if thread is None:
            return
        if loop is not None and closing is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(closing.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"{type(self).__name__} thread did not stop")
        self._thread = self._loop = self._closing = None
        self._port = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request (GET or HEAD)."""
        raise NotImplementedError

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._main(sock))
        except BaseException as exc:  # reported by start()
            self._error = exc
        finally:
            sock.close()
            self._ready.set()

    async def _main(self, sock: socket.socket) -> None:
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)  # HEAD comes with GET
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._closing.wait()
        finally:
            await runner.cleanup()
