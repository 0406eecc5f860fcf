"""``cachefs mount URL MOUNTPOINT`` and ``cachefs umount MOUNTPOINT``.

``mount`` serves the directory ``URL`` read-only at ``MOUNTPOINT`` through a
cache with the command's settings (so a job using the same settings shares
its disk tier). By default it starts a daemon and returns once the mount
answers; ``--foreground`` serves in this process until SIGINT or SIGTERM,
which unmount cleanly. ``umount`` unmounts, lazily where the mount is busy
or its daemon died. See ``docs/mount.md``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, TextIO

from cachefs.cli.format import EXIT_OK
from cachefs.cli.settings import Settings, url_protocol

__all__ = ["add_parsers", "run_mount", "run_umount"]


def add_parsers(
    add: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add the ``mount`` and ``umount`` subcommands through ``add``."""
    p = add("mount", "serve a directory read-only as a FUSE mount", parents=[common])
    p.add_argument("url", metavar="URL", help="the directory to mount")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    p.add_argument(
        "--foreground", action="store_true", help="serve in this process (no daemon)"
    )
    p.add_argument(
        "--direct-io", action="store_true", help="bypass the kernel's page cache"
    )
    p.add_argument(
        "--read-ahead-kb",
        type=int,
        default=1024,
        metavar="KB",
        help="the mount's kernel readahead, where allowed (1024; 0: kernel default)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds to wait for the daemon's mount to answer (60)",
    )
    p.add_argument(
        "--log-file", metavar="PATH", help="where the daemon logs (default: nowhere)"
    )
    p = add("umount", "unmount a cachefs mount (a dead one too)", parents=[common])
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


def _options(settings: Settings) -> dict[str, Any]:
    options = settings.fs_kwargs()
    if settings.target_options:
        options["target_options"] = dict(settings.target_options)
    return options


def run_mount(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs mount``: mount, then return (daemon) or serve (foreground)."""
    from cachefs.mount.control import check_mountpoint, mount

    url = args.url
    url_protocol([url])  # a bad URL is a usage error, said before mounting
    if args.read_ahead_kb < 0:
        raise ValueError(f"--read-ahead-kb must be >= 0, got {args.read_ahead_kb}")
    options = _options(settings)
    if args.foreground:
        from cachefs.mount.daemon import serve

        check_mountpoint(os.path.abspath(args.mountpoint))
        return serve(
            url,
            os.path.abspath(args.mountpoint),
            options,
            direct_io=args.direct_io,
            read_ahead_kb=args.read_ahead_kb,
        )
    log_to = open(args.log_file, "ab") if args.log_file else None  # noqa: SIM115
    try:
        handle = mount(
            url,
            args.mountpoint,
            direct_io=args.direct_io,
            read_ahead_kb=args.read_ahead_kb,
            ready_timeout=args.ready_timeout,
            stderr=log_to if log_to is not None else _devnull(),
            **options,
        )
    finally:
        if log_to is not None:
            log_to.close()
    if not args.quiet:
        out.write(
            f"mounted {url} at {handle.mountpoint} "
            f"(daemon pid {handle.pid}; {handle.read_ahead})\n"
        )
    return EXIT_OK


def _devnull() -> int:
    import subprocess

    return subprocess.DEVNULL


def run_umount(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs umount``: unmount; the daemon exits by itself."""
    from cachefs.mount.control import unmount

    unmount(args.mountpoint)
    if not args.quiet:
        out.write(f"unmounted {os.path.abspath(args.mountpoint)}\n")
    return EXIT_OK
