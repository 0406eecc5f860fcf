"""The mount's process: ``python -m cachefs.mount.daemon URL MOUNTPOINT ...``.

It builds the :class:`~cachefs.CacheFileSystem` (same tiers and budgets as
any job on the node with the same settings), mounts it read-only with
pyfuse3, and serves until the mount is unmounted (``cachefs umount``,
``fusermount3 -u``) or it gets SIGINT, SIGTERM or SIGHUP, which unmount it
cleanly. Readiness is written to ``--ready-fd`` only once a ``stat`` of the
mount point has been answered through the mount itself; the mount's
``read_ahead_kb`` is raised then, where the kernel allows it.

:func:`cachefs.mount.mount` and ``cachefs mount`` start this process; it is
a module of its own so that the caller never imports the FUSE binding.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec

__all__ = ["main", "raise_read_ahead", "serve", "wait_bound"]

log = logging.getLogger(__name__)

READY = b"ready\n"


def wait_bound(request_timeout: float | None, retries: int) -> float | None:
    """Return the seconds a FUSE request waits for the cache at most.

    Every try of an origin request is bounded by ``request_timeout`` and
    retried ``retries`` times with short backoff; a read may also wait for
    its version first (bounded alike). Twice that, plus slack, is a bound
    the cache's own failures come well within; it catches what they miss.
    """
    if request_timeout is None:
        return None
    return 2 * (retries + 1) * request_timeout + 5.0


def raise_read_ahead(mountpoint: str | os.PathLike[str], kb: int) -> str:
    """Set the mount's ``read_ahead_kb`` to ``kb``; return what happened.

    FUSE mounts have a backing device of their own under ``/sys/class/bdi``
    named by the mount's device number; writing there needs root.
    """
    dev = os.stat(mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    try:
        before = knob.read_text().strip()
        knob.write_text(f"{kb}\n")
        after = knob.read_text().strip()
    except OSError as exc:
        return f"read_ahead_kb not raised ({knob}: {exc.strerror or exc})"
    return f"read_ahead_kb {before} -> {after}"


def serve(
    url: str,
    mountpoint: str,
    options: dict[str, Any],
    *,
    direct_io: bool = False,
    read_ahead_kb: int = 1024,
    ready_fd: int | None = None,
    debug_fuse: bool = False,
) -> int:
    """Mount ``url`` at ``mountpoint`` and serve until unmounted; return 0.

    Parameters
    ----------
    url
        The target URL of the mounted directory.
    mountpoint
        An existing, empty directory.
    options
        :class:`~cachefs.CacheFileSystem` keywords (``cache_dir``,
        ``metadata_ttl``, ``target_options``, ...).
    direct_io
        Serve every open without the kernel's page cache.
    read_ahead_kb
        The mount's kernel readahead (``0`` leaves the kernel's default).
    ready_fd
        A descriptor that gets a line ``ready`` (then what became of
        ``read_ahead_kb``) once the mount answers, then is closed.
    debug_fuse
        Log every FUSE request (libfuse's ``debug`` option).
    """
    import pyfuse3
    import trio

    from cachefs.filesystem import CacheFileSystem
    from cachefs.mount.ops import CacheOperations
    from cachefs.mount.tree import Tree

    protocol = fsspec.core.split_protocol(url)[0] or "file"
    fs = CacheFileSystem(target_protocol=protocol, skip_instance_cache=True, **options)
    tree = Tree(fs, fs._target_path(url))
    config = fs.config
    ops = CacheOperations(
        tree,
        direct_io=direct_io,
        wait_bound=wait_bound(config.request_timeout, config.retries),
    )
    fuse_options = set(pyfuse3.default_options)
    fuse_options |= {"ro", "fsname=cachefs", "subtype=cachefs"}
    if debug_fuse:
        fuse_options.add("debug")
    pyfuse3.init(ops, mountpoint, fuse_options)

    async def ready() -> None:
        # Asked from a thread: the stat is answered by this very process.
        await trio.to_thread.run_sync(os.stat, mountpoint)
        said = "read_ahead_kb left as is"
        if read_ahead_kb:
            said = await trio.to_thread.run_sync(
                raise_read_ahead, mountpoint, read_ahead_kb
            )
        log.info("cachefs mount: %s mounted at %s (%s)", url, mountpoint, said)
        if ready_fd is not None:
            os.write(ready_fd, READY + said.encode() + b"\n")
            os.close(ready_fd)

    async def run() -> None:
        async with trio.open_nursery() as nursery:

            async def fuse_main() -> None:
                await pyfuse3.main()
                nursery.cancel_scope.cancel()  # unmounted from outside

            async def on_signal() -> None:
                sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                with trio.open_signal_receiver(*sigs) as received:
                    async for sig in received:
                        log.info("cachefs mount: signal %d, unmounting", sig)
                        pyfuse3.terminate()
                        return

            nursery.start_soon(fuse_main)
            nursery.start_soon(on_signal)
            nursery.start_soon(ready)
            nursery.start_soon(ops.invalidator)

    try:
        trio.run(run)
    finally:
        # Unmounts unless the kernel already has (fusermount3 -u).
        pyfuse3.close(unmount=True)
        fs.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the daemon's arguments and :func:`serve`."""
    parser = argparse.ArgumentParser(prog="python -m cachefs.mount.daemon")
    parser.add_argument("url")
    parser.add_argument("mountpoint")
    parser.add_argument("--options", default="{}", help="cache keywords as JSON")
    parser.add_argument("--direct-io", action="store_true")
    parser.add_argument("--read-ahead-kb", type=int, default=1024)
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--debug-fuse", action="store_true")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    return serve(
        args.url,
        args.mountpoint,
        json.loads(args.options),
        direct_io=args.direct_io,
        read_ahead_kb=args.read_ahead_kb,
        ready_fd=args.ready_fd,
        debug_fuse=args.debug_fuse,
    )


if __name__ == "__main__":
    raise SystemExit(main())
