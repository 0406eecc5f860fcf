"""An origin that costs almost no CPU: nginx serving a tmpfs directory.

:class:`NginxOrigin` writes a minimal configuration (one worker, ``sendfile``,
keep-alive; an access log of one number per response, its body bytes, so
origin bytes are counted) into a temporary prefix, starts Debian's
``nginx`` binary in the foreground on a free loopback port and serves
``root`` (a directory on tmpfs, so the origin reads no disk). Where no
``nginx`` binary is found, :func:`start_http_origin` falls back to the
project's own :class:`cachefs.testing.HTTPOrigin` in its own process (no
added latency) and says so in its ``label``: that origin spends far more
CPU per byte, on the same two cores as the client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.procs import Closing, stop_process

__all__ = ["NginxOrigin", "start_http_origin", "tmpfs_dir"]

_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 256; }}
http {{
    log_format sent '$body_bytes_sent';
    access_log {prefix}/access.log sent;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def tmpfs_dir(prefix: str) -> Path:
    """Make a private directory on tmpfs (``/dev/shm``), else in the temp dir."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen on port {port} in {timeout:g} s")


class NginxOrigin(Closing):
    """nginx serving ``root`` on ``127.0.0.1`` (see the module docstring)."""

    def __init__(self, root: Path, binary: str) -> None:
        self._prefix = Path(tempfile.mkdtemp(prefix="cachefs-nginx-"))
        # Workers run as an unprivileged user when started by root: they must
        # be able to read the served tree.
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.port = _free_port()
        conf = self._prefix / "nginx.conf"
        conf.write_text(_CONF.format(prefix=self._prefix, port=self.port, root=root))
        self._proc = subprocess.Popen(
            [binary, "-p", str(self._prefix), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_listening(self.port, self._proc, 10.0)
        except RuntimeError as exc:
            err = self._stderr()
            self.close()
            raise RuntimeError(f"{exc}: {err}") from None
        self.label = f"nginx {self.version(binary)} (sendfile, tmpfs, 1 worker)"
        self.pids = [self._proc.pid]
        self._log_offset = 0

    def take_counts(self) -> tuple[int, int]:
        """Return (requests, body bytes sent) since the last call."""
        path = self._prefix / "access.log"
        try:
            with open(path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return 0, 0
        # Only whole lines: nginx writes each line with one write().
        data = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(data)
        sizes = [int(x) for x in data.split()]
        return len(sizes), sum(sizes)

    @staticmethod
    def version(binary: str) -> str:
        """Return nginx's version string (``nginx -v`` prints it on stderr)."""
        out = subprocess.run([binary, "-v"], capture_output=True, text=True)
        return out.stderr.strip().rpartition("/")[2] or "?"

    def _stderr(self) -> str:
        if self._proc.poll() is None or self._proc.stderr is None:
            return ""
        return self._proc.stderr.read().decode(errors="replace").strip()[-500:]

    def url_for(self, path: str) -> str:
        """Return the URL of ``path`` (relative to the served root)."""
        return f"http://127.0.0.1:{self.port}/{quote(path)}"

    def close(self) -> None:
        """Stop nginx (SIGTERM to its master) and remove its prefix."""
        if self._proc.poll() is None:
            self._proc.terminate()
            stop_process(self._proc)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self._prefix, ignore_errors=True)


def start_http_origin(root: Path) -> Any:
    """Start nginx over ``root``, else the project's origin in its own process.

    The returned object has ``port``, ``label``, ``url_for(path)``,
    ``take_counts()`` (GET requests and body bytes since its last call)
    and ``close()``, and is a context manager.
    """
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)),
        None,
    )
    if binary is not None:
        return NginxOrigin(root, binary)
    from bench.user_paths import OriginProcess

    origin = OriginProcess(root, latency=0.0)
    origin.label = (  # type: ignore[attr-defined]
        "HTTPOrigin (aiohttp, in memory) in its own process: nginx not found"
    )

    def take_counts() -> tuple[int, int]:
        stats = origin.stats()
        origin.reset()
        return int(stats["get_requests"]), int(stats["bytes_sent"])

    origin.take_counts = take_counts  # type: ignore[attr-defined]
    return origin
