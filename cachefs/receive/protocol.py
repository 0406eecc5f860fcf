"""One keep-alive HTTP/1.1 connection whose body bytes land in chunk buffers.

:class:`Connection` is an :class:`asyncio.BufferedProtocol`: the event loop
asks it for a buffer (``get_buffer``) and the kernel (or the SSL object)
copies the socket's bytes straight into it. While the head is read, that is
a small head buffer; once the caller has checked the head and given the
sizes of the pieces it wants (:meth:`Connection.receive`), it is a slice of
the landing buffer that becomes the next chunk, so body bytes are written
once, by the kernel. A full piece wakes the reader once.

Parsing is :mod:`cachefs.receive.parse`; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from cachefs.errors import ShortReadError
from cachefs.receive.landing import POOL
from cachefs.receive.parse import Head, HTTPProtocolError, parse_head

__all__ = ["Connection"]

_HEAD_START = 2 * 2**10
_SKIP = 256 * 2**10


class Connection(asyncio.BufferedProtocol):
    """A client connection that carries one request at a time.

    Attributes
    ----------
    reused
        Requests this connection carried before the current one.
    received
        Bytes received for the current response (head and body).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reused = 0
        self.received = 0
        self._head = bytearray(_HEAD_START)
        self._head_len = 0
        self._state = "idle"  # idle, head, plan, body, done, closed
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._parsed: Head | None = None
        self._leftover = b""
        self._remaining = 0  # body bytes not yet received
        self._skip = 0  # leading body bytes the caller does not want
        self._sizes: deque[int] = deque()
        self._cur: memoryview | None = None
        self._got = 0
        self._filled: deque[memoryview] = deque()
        self._scratch: memoryview | None = None
        self._eof = False
        self._hold_back = False  # pause once a full piece waits for the caller
        self._held = False  # reading paused for that

    # -- the caller's side --------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the connection is open and between requests."""
        return self._state == "idle" and self.transport is not None

    @property
    def finished(self) -> bool:
        """Whether the whole body of the current response was received."""
        return self._state == "done"

    async def request(self, data: bytes) -> Head:
        """Send a request head; return the response head once parsed.

        Raises
        ------
        ConnectionError
            If the connection closes or resets first.
        HTTPProtocolError
            If the response head is malformed.
        """
        assert self._state == "idle" and self.transport is not None
        self._state = "head"
        self.received = self._head_len = 0
        self._parsed = None
        self._held = False
        self.transport.write(data)
        # The last response may have left reading paused: its head pauses
        # it, and a body that came whole with the head never resumes it.
        self.transport.resume_reading()
        while (head := self.head) is None:
            if self._error is not None:
                raise self._error
            await self._wait()
        return head

    @property
    def head(self) -> Head | None:
        """The head of the current response, once parsed."""
        return self._parsed

    def receive(
        self, length: int, skip: int, sizes: Iterable[int], *, hold_back: bool = False
    ) -> None:
        """Start landing a body of ``length`` bytes.

        The first ``skip`` bytes are dropped; the next land in buffers of
        ``sizes`` (in order), each handed out by :meth:`next_piece` once
        full. Bytes past them are left unread: the connection is then not
        reused. With ``hold_back``, reading pauses whenever a full piece
        waits for :meth:`next_piece`, so a caller that takes its time
        between pieces (waiting for the disk) holds the sender back through
        TCP instead of having more pieces land in new buffers.
        """
        if self._state != "plan":  # failed meanwhile: next_piece raises
            return
        self._state = "body"
        self._remaining = length
        self._skip = skip
        self._sizes = deque(sizes)
        self._hold_back = hold_back
        leftover, self._leftover = self._leftover, b""
        self._feed(leftover)
        if self._state == "body" and self._eof:
            self._lost(None)
        elif self._state == "body" and self.transport is not None and not self._held:
            self.transport.resume_reading()

    async def next_piece(self) -> memoryview:
        """Return the next full piece.

        Raises
        ------
        ShortReadError
            If the connection ended before the piece was complete.
        """
        while not self._filled:
            if self._error is not None:
                raise self._error
            await self._wait()
        piece = self._filled.popleft()
        if self._held and not self._filled:
            self._held = False
            if (
                self._state == "body"
                and self.transport is not None
                and (self._sizes or self._cur is not None or self._skip)
            ):
                # More pieces to land for the caller (else the rest of the
                # body stays unread, as when no piece was held).
                self.transport.resume_reading()
        return piece

    def close(self) -> None:
        """Close the connection now (any unread bytes are dropped)."""
        self._state = "closed"
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def reset(self) -> None:
        """Make a finished connection ready for its next request."""
        assert self._state == "done"
        self._state = "idle"
        self.reused += 1
        self._filled.clear()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the loop's side (asyncio.BufferedProtocol) --------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        """Hand out where the next bytes land: the piece being filled."""
        if self._state == "body" and self._remaining:
            if self._skip:
                if self._scratch is None:
                    self._scratch = memoryview(bytearray(_SKIP))
                return self._scratch[: min(self._skip, _SKIP)]
            if self._cur is None and self._sizes:
                self._cur = POOL.take(self._sizes.popleft())
                self._got = 0
            if self._cur is not None:
                return self._cur[self._got :]
        if self._head_len == len(self._head):
            # parse_head refuses a head past HEAD_LIMIT: this stays bounded.
            self._head.extend(bytes(len(self._head)))
        return memoryview(self._head)[self._head_len :]

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` written into the last buffer handed out."""
        self.received += nbytes
        if self._state == "body" and self._remaining:
            self._body_bytes(nbytes)
            return
        self._head_len += nbytes
        if self._state != "head":
            # Bytes nobody asked for (between requests, or past the body
            # asked for): the connection's framing is lost.
            self._fail(HTTPProtocolError("bytes received outside a response"))
            return
        try:
            parsed = parse_head(memoryview(self._head)[: self._head_len])
        except HTTPProtocolError as exc:
            self._fail(exc)
            return
        if parsed is None:
            return
        head, used = parsed
        self._leftover = bytes(self._head[used : self._head_len])
        self._parsed = head
        self._state = "plan"
        if self.transport is not None:
            # Until the caller has checked the head and says where the body
            # goes, it stays in the kernel's socket buffer.
            self.transport.pause_reading()
        if len(self._head) > _HEAD_START:
            self._head = bytearray(_HEAD_START)
        self._wake()

    def _feed(self, data: bytes) -> None:
        """Land bytes that arrived with the head, as the kernel would."""
        view = memoryview(data)
        while view and self._state == "body" and self._remaining:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self._body_bytes(n)
            view = view[n:]
        if view:
            self._fail(HTTPProtocolError("bytes received past the body"))

    def _body_bytes(self, nbytes: int) -> None:
        self._remaining -= nbytes
        if self._skip:
            self._skip -= nbytes
        else:
            self._got += nbytes
            cur = self._cur
            if cur is not None and self._got == len(cur):
                self._filled.append(cur)
                self._cur = None
                # A caller already waiting takes the piece at once: pausing
                # and resuming reading for it would be two wasted calls.
                waiting = self._waiter is not None and not self._waiter.done()
                self._wake()
                if self._hold_back and self._remaining and not waiting:
                    self._hold()
        if not self._remaining:
            self._state = "done"
            self._wake()
        elif (
            self._cur is None
            and not self._sizes
            and not self._skip
            and self.transport is not None
        ):
            # Every piece asked for is in: leave the rest unread.
            self.transport.pause_reading()

    def _hold(self) -> None:
        """Pause reading until the caller takes the full piece (hold_back)."""
        if not self._held and self.transport is not None:
            self._held = True
            self.transport.pause_reading()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.close()
        self._wake()

    def eof_received(self) -> bool | None:
        """End the response: the peer closed its side (short if in a body)."""
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a response still in progress: the connection ended."""
        self.transport = None
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        state = self._state
        if state in ("idle", "done", "closed"):
            if state == "idle":
                self.close()
            return
        if state == "plan":
            # The head is in; the body may be too (it came with the head).
            # :meth:`receive` decides once it knows the body's length.
            self._eof = True
            return
        if state == "body":
            err: BaseException = ShortReadError(
                f"origin closed the connection with {self._remaining} body "
                "bytes still to come"
            )
        else:
            err = ConnectionError(
                "origin closed the connection before a response head"
                + (f" ({self.received} bytes in)" if self.received else "")
            )
        if exc is not None:
            err.__cause__ = exc
        self._fail(err)
