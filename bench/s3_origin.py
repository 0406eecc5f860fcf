"""An S3-protocol origin for tests and benchmarks: moto's server on loopback.

:func:`start_s3_server` starts ``moto.server.ThreadedMotoServer`` on
``127.0.0.1`` and a free port (port 0, so parallel runs never collide) and
returns it with an :class:`S3Server` that carries the endpoint and the
credentials in the shapes the fsspec/s3fs APIs want them. Needs the ``moto``
and ``botocore`` packages (``pip install "moto[server]" s3fs``).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

from botocore.session import Session
from moto.server import ThreadedMotoServer

__all__ = ["S3Server", "start_s3_server"]

#: Any credentials work with moto; these are never real.
KEY = "cachefs-test-key"
SECRET = "cachefs-test-secret"
REGION = "us-east-1"

_buckets = itertools.count()


@dataclass(frozen=True)
class S3Server:
    """Where the moto server listens, and how to talk to it.

    Attributes
    ----------
    endpoint_url
        ``http://127.0.0.1:PORT``.
    key, secret
        Credentials (moto accepts any).
    """

    endpoint_url: str
    key: str = KEY
    secret: str = SECRET

    @property
    def target_options(self) -> dict[str, Any]:
        """Options for ``CacheFileSystem(target_protocol="s3", target_options=...)``.

        ``endpoint_url``, ``key`` and ``secret`` are keywords of
        ``s3fs.S3FileSystem``.
        """
        return {
            "endpoint_url": self.endpoint_url,
            "key": self.key,
            "secret": self.secret,
        }

    @property
    def chained_options(self) -> dict[str, Any]:
        """The ``s3={...}`` dict of a chained URL (``client_kwargs`` form)."""
        return {
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            "key": self.key,
            "secret": self.secret,
        }

    def client(self) -> Any:
        """Return a synchronous botocore S3 client (for set-up and checks)."""
        return Session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
        )

    def new_bucket(self, prefix: str = "cachefs-test") -> str:
        """Create an empty bucket with a name no other test uses."""
        name = f"{prefix}-{next(_buckets)}"
        self.client().create_bucket(Bucket=name)
        return name


def start_s3_server() -> tuple[ThreadedMotoServer, S3Server]:
    """Start a moto server on ``127.0.0.1`` and a free port (port 0)."""
    # werkzeug logs every request to stderr; the tests do not need that.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, S3Server(f"http://{host}:{port}")
