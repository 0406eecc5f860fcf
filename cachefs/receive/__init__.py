"""The receive path: origin bytes land once, in the buffer that becomes the chunk.

- :mod:`~cachefs.receive.parse`: HTTP/1.1 heads as plain functions over bytes.
- :mod:`~cachefs.receive.protocol`: one connection, an
  :class:`asyncio.BufferedProtocol` that lands body bytes in chunk buffers.
- :mod:`~cachefs.receive.pool`: keep-alive connections per endpoint.
- :mod:`~cachefs.receive.read`: a ranged read in progress and its checks.
- :mod:`~cachefs.receive.ranged`: one checked ranged GET, delivered by parts.
- :mod:`~cachefs.receive.targets`: which targets' requests it can send.
"""
