"""Keep-alive connections to origins, kept per event loop.

A :class:`ConnectionPool` opens :class:`~cachefs.receive.protocol.Connection`
objects with ``loop.create_connection`` (TLS through the loop's own SSL
transport) and keeps the idle ones per :class:`Endpoint`, so a run of ranged
reads costs one TCP (and TLS) handshake per connection, not per request.
A connection is reused only when its last response was read to its end and
allowed it; anything else is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cachefs.receive.parse import Head
from cachefs.receive.protocol import Connection

__all__ = ["ConnectionPool", "Endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where connections go: scheme, host, port and the TLS context.

    Attributes
    ----------
    host, port
        The server.
    tls
        The SSL context of an ``https`` endpoint; ``None`` for ``http``.
    """

    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[str, int, int]:
        """What tells two endpoints' connections apart."""
        return self.host, self.port, id(self.tls) if self.tls is not None else 0


class ConnectionPool:
    """Idle keep-alive connections per endpoint, for one event loop.

    Parameters
    ----------
    idle_per_endpoint
        Idle connections kept per endpoint at most; more are closed.
    on_open
        Called each time a connection is opened.
    """

    def __init__(
        self,
        idle_per_endpoint: int = 32,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.idle_per_endpoint = idle_per_endpoint
        self._on_open = on_open
        self._idle: dict[tuple[str, int, int], list[Connection]] = {}
        self._busy: set[Connection] = set()
        self.opened = 0
        self.closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        idle = sum(c.alive for cs in self._idle.values() for c in cs)
        return idle + sum(c.transport is not None for c in self._busy)

    async def _open(self, endpoint: Endpoint) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            Connection,
            endpoint.host,
            endpoint.port,
            ssl=endpoint.tls,
            server_hostname=endpoint.host if endpoint.tls is not None else None,
        )
        self.opened += 1
        if self._on_open is not None:
            self._on_open()
        return conn

    def _take_idle(self, endpoint: Endpoint) -> Connection | None:
        idle = self._idle.get(endpoint.key, [])
        while idle:
            conn = idle.pop()
            if conn.alive:
                return conn
        return None

    @contextlib.asynccontextmanager
    async def request(
        self, endpoint: Endpoint, data: bytes
    ) -> AsyncIterator[tuple[Connection, Head]]:
        """Send request ``data``; yield the connection and the response head.

        The caller lands the body (:meth:`Connection.receive`). On leaving
        the block the connection goes back to the pool if its response was
        read to the end and allows reuse, else it is closed.

        A reused connection that the server closed while idle (it answers
        nothing) is replaced by a new one once, without counting as a fault.
        """
        if self.closed:
            raise RuntimeError("cachefs: the connection pool is closed")
        conn = self._take_idle(endpoint)
        while True:
            if conn is None:
                conn = await self._open(endpoint)
            self._busy.add(conn)
            try:
                head = await conn.request(data)
                break
            except ConnectionError:
                self._busy.discard(conn)
                conn.close()
                if not conn.reused or conn.received:
                    raise
                conn = None  # the server dropped an idle connection
            except BaseException:
                self._busy.discard(conn)
                conn.close()
                raise
        keep = False
        try:
            yield conn, head
            keep = conn.finished and head.keep_alive
        finally:
            self._busy.discard(conn)
            idle = self._idle.setdefault(endpoint.key, [])
            if keep and not self.closed and len(idle) < self.idle_per_endpoint:
                conn.reset()
                idle.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        """Close every connection; later requests are refused."""
        self.closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
