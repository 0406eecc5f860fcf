"""An S3 origin in its own processes: moto's server behind a counting proxy.

:func:`start_origin` starts two child processes:

- ``python -m bench.s3_proxy moto``: moto's S3 server on ``127.0.0.1`` and a
  free port;
- ``python -m bench.s3_proxy proxy UPSTREAM``: a small threaded HTTP/1.1
  proxy in front of it that waits :data:`LATENCY` seconds before forwarding
  each request and counts the response bytes of every ``GET``, per request
  path (the object key), so every system's origin bytes are measured the
  same way, whatever client library it uses.

Writers (set-up, not timed) talk to moto directly; readers talk to the proxy.
The proxy answers two paths of its own, never forwarded and never delayed:
``GET /__proxy__/stats`` (JSON: ``{"bytes": {path: n}, "requests": n}``) and
``POST /__proxy__/reset`` (zero the counters).
"""

from __future__ import annotations

import http.client
import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from bench.procs import stop_process

__all__ = ["LATENCY", "Origin", "start_origin"]

#: Seconds the proxy adds to every forwarded request.
LATENCY = 0.02
KEY = "cachefs-test-key"
SECRET = "cachefs-test-secret"
REGION = "us-east-1"
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}


@dataclass
class Origin:
    """The running origin: moto's URL (for writers) and the proxy's (for readers)."""

    moto_url: str
    proxy_url: str
    procs: list[subprocess.Popen[bytes]]

    def stats(self) -> dict[str, Any]:
        """Return the proxy's counters: bytes per path and requests."""
        with urllib.request.urlopen(f"{self.proxy_url}/__proxy__/stats") as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    def reset(self) -> None:
        """Zero the proxy's counters."""
        req = urllib.request.Request(
            f"{self.proxy_url}/__proxy__/reset", data=b"", method="POST"
        )
        with urllib.request.urlopen(req) as r:
            r.read()

    def client(self, direct: bool = True) -> Any:
        """Return a botocore S3 client (to moto directly, or through the proxy)."""
        from botocore.session import Session

        return Session().create_client(
            "s3",
            endpoint_url=self.moto_url if direct else self.proxy_url,
            region_name=REGION,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
        )

    def stop(self) -> None:
        """Stop both child processes."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            stop_process(proc)


def _spawn(*argv: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.s3_proxy", *argv],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"bench.s3_proxy {argv[0]} did not start: {line!r}")
    return proc, line


def start_origin(latency: float = LATENCY) -> Origin:
    """Start moto and the proxy, each in its own process; return their URLs."""
    moto, moto_url = _spawn("moto")
    try:
        proxy, proxy_url = _spawn("proxy", moto_url, str(latency))
    except BaseException:
        moto.kill()
        raise
    return Origin(moto_url, proxy_url, [moto, proxy])


# -- child processes -----------------------------------------------------------


def _serve_moto() -> None:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"http://{host}:{port}", flush=True)
    while True:
        time.sleep(3600)


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes: dict[str, int] = defaultdict(int)
        self.requests = 0


def _handler(upstream: str, latency: float, counters: _Counters) -> type:
    parts = urlsplit(upstream)
    local = threading.local()

    def connection() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
            local.conn = conn
        return conn

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _own(self) -> bool:
            if not self.path.startswith("/__proxy__/"):
                return False
            if self.path == "/__proxy__/stats":
                with counters.lock:
                    body = json.dumps(
                        {"bytes": dict(counters.bytes), "requests": counters.requests}
                    ).encode()
            else:
                with counters.lock:
                    counters.bytes.clear()
                    counters.requests = 0
                body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def _forward(self) -> None:
            if self._own():
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            time.sleep(latency)
            for attempt in range(2):
                conn = connection()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            if self.command == "GET":
                with counters.lock:
                    counters.bytes[self.path.split("?", 1)[0]] += len(data)
                    counters.requests += 1
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header(
                    "Content-Length", resp.getheader("Content-Length") or "0"
                )
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes its keep-alive connection is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _serve_proxy(upstream: str, latency: float) -> None:
    counters = _Counters()
    server = _Server(("127.0.0.1", 0), _handler(upstream, latency, counters))
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "moto":
        _serve_moto()
    else:
        _serve_proxy(sys.argv[2], float(sys.argv[3]))
