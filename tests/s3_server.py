"""A moto S3 server on loopback, shared by the test session.

Use it from a test module with::

    pytest_plugins = ("tests.s3_server",)

and ask for the fixtures: ``s3_server`` (session-scoped; the server starts on
the first test that needs it, on ``127.0.0.1`` and a free port) and
``s3_bucket`` (a new empty bucket per test, so tests never see each other's
objects) and ``put`` (uploads an object to that bucket). The server itself
is :mod:`bench.s3_origin`, which the benchmarks use too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bench.s3_origin import S3Server, start_s3_server

__all__ = ["S3Server", "put", "s3_bucket", "s3_server", "start_s3_server"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server for the whole session (started on first use)."""
    server, info = start_s3_server()
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_server.new_bucket()


@pytest.fixture
def put(s3_server: S3Server, s3_bucket: str) -> Callable[[str, bytes], str]:
    """Upload an object to ``s3_bucket``; return its ``bucket/key`` path."""
    client = s3_server.client()

    def upload(key: str, data: bytes) -> str:
        client.put_object(Bucket=s3_bucket, Key=key, Body=data)
        return f"{s3_bucket}/{key}"

    return upload
