"""Interrupts propagate, waits are named, and a refusing disk is blamed.

Real parts only: an HTTP origin on loopback (one that stalls every GET, or a
socket that accepts and never answers), the installed ``cachefs`` command in
a subprocess, real signals, and a real full tmpfs in a private mount
namespace.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards
from tests.test_cli import CACHEFS, cache_args

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]


# -- PrefetchHandle.wait never swallows an interrupt ----------------------------


@pytest.fixture
def stalling_origin() -> Iterator[tuple[HTTPOrigin, str]]:
    """Every GET of a file stalls for a minute; HEAD answers at once."""
    files = make_shards(1, 4 * MiB, seed=3, prefix="stall/")
    with HTTPOrigin(
        files=files, fault_rate=1.0, fault_kind="stall", stall_seconds=60
    ) as server:
        yield server, server.url_for(next(iter(files)))


def _signal_main_soon(signum: int, delay: float) -> threading.Timer:
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(delay, signal.pthread_kill, (main, signum))
    timer.start()
    return timer


def _exit_on_usr1(signum: int, frame: object) -> None:
    raise SystemExit(3)


@pytest.mark.parametrize(
    ("signum", "exc"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGUSR1, SystemExit)],
    ids=["ctrl-c", "system-exit"],
)
def test_wait_propagates_interrupts_and_cancels(stalling_origin, tmp_path, signum, exc):
    _, url = stalling_origin
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=str(tmp_path / "cache"),
        chunk_size="1MiB",
        skip_instance_cache=True,
    )
    previous = signal.signal(signal.SIGUSR1, _exit_on_usr1)
    # As in a terminal: a suite started in the background (``cmd &``) runs
    # with SIGINT ignored, which would make Ctrl-C a no-op here.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        handle = fs.prefetch([url])
        timer = _signal_main_soon(signum, 0.5)
        began = time.monotonic()
        with pytest.raises(exc):
            handle.wait(timeout=30)
        timer.join()
        assert time.monotonic() - began < 10
        # Cancelled on the way out: it ends now, not when the stall does.
        deadline = time.monotonic() + 10
        while not handle.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handle.done()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        signal.signal(signal.SIGINT, previous_int)
        fs.close()


# -- the command says what it waits for, and Ctrl-C ends it ---------------------


class _Stderr:
    """Collect a process's stderr lines on a thread, to wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert proc.stderr is not None
        self._thread = threading.Thread(
            target=self._pump, args=(proc.stderr,), daemon=True
        )
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.lines.append(line)
            if text in line:
                return line
        return None

    def rest(self) -> str:
        self._thread.join(timeout=10)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return "".join(self.lines)


def _sigint_as_in_a_terminal() -> None:
    # A suite started in the background runs with SIGINT ignored, and a
    # child inherits that; the command must see Ctrl-C as a user's would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CACHEFS, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )


def _interrupt(
    proc: subprocess.Popen[str], stderr: _Stderr | None, timeout: float = 15
) -> tuple[int | None, str, str]:
    """SIGINT ``proc``; return its exit code (None: killed), stdout, stderr."""
    proc.send_signal(signal.SIGINT)
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    proc.stdout.close()
    err = stderr.rest() if stderr is not None else proc.stderr.read()
    proc.stderr.close()
    return code, out, err


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_warm_names_the_info_it_waits_for(env, tmp_path, black_hole):
    url = f"{black_hole}/data/shard-0.bin"
    proc = _start(
        env, "warm", url, *cache_args(tmp_path / "cache"), "--progress-interval", "0.5"
    )
    stderr = _Stderr(proc)
    try:
        line = stderr.wait_for("waiting", timeout=20)
        # The line repeats while the wait lasts.
        again = stderr.wait_for("waiting", timeout=10)
    finally:
        code, _, err = _interrupt(proc, stderr)
    assert line is not None, err
    assert line.startswith("warm: waiting ")
    assert f"for the info of {url}" in line
    assert again is not None, err
    assert code == 130, err
    assert "interrupted" in err


def test_warm_names_the_bytes_it_waits_for_and_ctrl_c_ends_it(
    env, tmp_path, stalling_origin
):
    _, url = stalling_origin
    proc = _start(
        env, "warm", url, *cache_args(tmp_path / "cache"), "--progress-interval", "0.5"
    )
    stderr = _Stderr(proc)
    try:
        line = stderr.wait_for("waiting", timeout=20)
    finally:
        began = time.monotonic()
        code, out, err = _interrupt(proc, stderr)
    assert line is not None, err
    assert f"for the bytes of {url}" in line
    # Before: the interrupt was swallowed and warm waited for the stall.
    assert code == 130, err
    assert time.monotonic() - began < 15
    assert "interrupted" in err
    assert "warmed" not in out


def test_bench_names_the_bytes_it_waits_for(env, tmp_path, stalling_origin):
    _, url = stalling_origin
    proc = _start(
        env,
        "bench",
        url,
        *cache_args(tmp_path / "cache"),
        "--progress-interval",
        "0.5",
        "-j",
        "1",
    )
    stderr = _Stderr(proc)
    try:
        line = stderr.wait_for("waiting", timeout=20)
    finally:
        code, _, err = _interrupt(proc, stderr)
    assert line is not None, err
    assert line.startswith("bench: waiting ")
    assert f"the fsspec pass: bytes 0-1048576 of {url}" in line
    assert code == 130, err


def test_quiet_warm_prints_no_waiting_lines(env, tmp_path, black_hole):
    proc = _start(
        env,
        "warm",
        f"{black_hole}/x.bin",
        *cache_args(tmp_path / "cache"),
        "--progress-interval",
        "0.2",
        "--quiet",
    )
    stderr = _Stderr(proc)
    try:
        line = stderr.wait_for("waiting", timeout=2)
    finally:
        _, _, err = _interrupt(proc, stderr)
    assert line is None
    assert "waiting" not in err


# -- a disk that refuses writes is named, not the budget ------------------------


_UNSHARE = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c")


def _in_mount_namespace(
    script: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_UNSHARE, script, "sh", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.fixture
def mount_namespace(tmp_path) -> Path:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = _in_mount_namespace('mount -t tmpfs -o size=1m t "$1"', str(mnt))
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr}")
    return mnt


@pytest.fixture
def big_origin() -> Iterator[str]:
    files = make_shards(1, 8 * MiB + 5, seed=21, prefix="full/")
    with HTTPOrigin(files=files) as server:
        yield server.url_for(next(iter(files)))


def test_warm_on_a_full_disk_says_the_disk_refused(env, mount_namespace, big_origin):
    cache = mount_namespace / "cache"
    script = 'mount -t tmpfs -o size=3m t "$1" && shift && exec "$@"'
    proc = _in_mount_namespace(
        script,
        str(mount_namespace),
        *CACHEFS,
        "warm",
        big_origin,
        "--cache-dir",
        str(cache),
        "--chunk-size",
        "1MiB",
        "--disk-limit",
        "1GiB",
        "--json",
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "--disk-limit" not in proc.stderr
    assert f"not fully cached: {big_origin} (the disk refused writes" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["incomplete"] == [big_origin]
    assert doc["disk_error"].startswith("the disk refused writes")
    assert "full" in doc["disk_error"] or "ENOSPC" in doc["disk_error"]


def test_warm_over_the_budget_still_blames_the_budget(env, tmp_path, big_origin):
    proc = subprocess.run(
        [
            *CACHEFS,
            "warm",
            big_origin,
            *cache_args(tmp_path / "cache"),
            "--disk-limit",
            "3MiB",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "--disk-limit smaller than the data?" in proc.stderr
    assert json.loads(proc.stdout)["disk_error"] is None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
