"""The ``cachefs`` command: warm, inspect, verify and measure a cache.

Subcommands: ``warm``, ``stats``, ``ls``, ``evict``, ``clear``, ``verify``,
``bench``, ``config`` and ``demo``; ``cachefs <command> --help`` describes
each, and ``docs/cli.md`` shows a session. Exit codes: ``0`` success, ``1``
the operation did not fully succeed (a file not cached, a damaged chunk, a
missing file), ``2`` a usage error (bad option, size, URL or JSON), ``130``
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TextIO

from cachefs._version import __version__
from cachefs.chunks import ChunkKey
from cachefs.cli_config import CLI_OPTIONS, Settings, keyword_defaults, resolve_settings
from cachefs.cli_format import Progress, fmt_bytes, fmt_time, table
from cachefs.cli_inspect import (
    CacheView,
    UrlPattern,
    check_chunk_file,
    clear_dirs,
    display_url,
    evict_files,
    remove_damaged,
    remove_stray,
)
from cachefs.policy import LRUPolicy
from cachefs.tiers.disk import DiskTier

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("cache options (default: fsspec config, then built-in)")
    g.add_argument(
        "--cache-dir",
        action="append",
        metavar="DIR",
        help="cache directory; repeat for one per disk",
    )
    g.add_argument("--ram-limit", metavar="SIZE", help="RAM tier budget, e.g. 1GiB")
    g.add_argument("--disk-limit", metavar="SIZE", help="disk tier budget, e.g. 500GiB")
    g.add_argument("--chunk-size", metavar="SIZE", help="chunk size, e.g. 4MiB")
    g.add_argument(
        "--metadata-ttl",
        metavar="SECONDS",
        help="seconds file versions are trusted; 'none' trusts them forever",
    )
    g.add_argument(
        "--target-options",
        metavar="JSON",
        help="target filesystem options, e.g. '{\"anon\": true}'",
    )
    g.add_argument(
        "--shared",
        metavar="URL",
        help="shared tier below the disk tier, e.g. file:///mnt/lustre/cachefs",
    )
    g.add_argument(
        "--trust-cache-dir",
        action="store_true",
        default=argparse.SUPPRESS,
        help="use a cache dir another user owns or others can write",
    )
    g.add_argument("-v", "--verbose", action="count", help="more output; tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    common = _common()
    parser = _Parser(
        prog="cachefs",
        description="Warm, inspect and measure a cachefs cache.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"cachefs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, **kw)

    p = add("warm", "fetch files into the cache ahead of use", parents=[common])
    p.add_argument("urls", nargs="+", metavar="URL", help="file, prefix or glob")
    p.add_argument(
        "-r", "--recursive", action="store_true", help="include subdirectories"
    )
    p.add_argument(
        "-j", "--jobs", type=_positive_int, help="concurrent origin requests"
    )
    p.add_argument(
        "--to",
        choices=("node", "shared"),
        default="node",
        help="node: this node's disk tier (default); shared: the shared tier, "
        "once for all nodes (needs --shared)",
    )
    p.add_argument("--rank", type=_int, default=0, help="this node's rank (0)")
    p.add_argument("--world-size", type=_int, default=1, help="number of ranks (1)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal, "
        "and without progress before saying what it waits for",
    )

    p = add("stats", "budgets, usage and cached files per tier", parents=[common])
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("ls", "list cached files", parents=[common])
    p.add_argument("urls", nargs="*", metavar="URL-PREFIX", help="file, prefix or glob")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("evict", "remove files from the cache", parents=[common])
    p.add_argument("urls", nargs="+", metavar="URL", help="file, prefix or glob")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("clear", "remove everything from the cache", parents=[common])
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("verify", "check every chunk file's header and CRC32C", parents=[common])
    p.add_argument("--repair", action="store_true", help="delete damaged chunk files")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("bench", "measure cold, warm and hot throughput", parents=[common])
    p.add_argument("urls", nargs="+", metavar="URL", help="file, prefix or glob")
    p.add_argument(
        "-r", "--recursive", action="store_true", help="include subdirectories"
    )
    p.add_argument(
        "-j", "--jobs", type=_positive_int, default=8, help="reader threads (8)"
    )
    p.add_argument(
        "--block-size", metavar="SIZE", help="bytes per read (default: chunk size)"
    )
    p.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds without progress before saying what it waits for",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("config", "show effective settings and their sources", parents=[common])
    p.add_argument("--json", action="store_true", help="print JSON")

    add("demo", "run the cachefs demo (arguments go to the demo)", add_help=False)
    return parser


# -- commands that read the cache directory -------------------------------------


def _view(settings: Settings, log: Any) -> CacheView:
    view = CacheView(
        settings.cache_dirs,
        settings.chunk_size,
        trust_cache_dir=settings.trust_cache_dir,
    )
    for d, present in zip(view.dirs, view.present, strict=True):
        if not present:
            log(f"note: cache dir {d} does not exist (empty cache)")
    return view


def cmd_stats(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs stats``."""
    view = _view(settings, log)
    chunks = view.chunks()
    records, bad = view.records()
    statuses = [view.status(r) for r in records]
    owned = set(view.expected_lengths(records))
    other = [cf for d, cf in chunks.items() if d not in owned]
    share = settings.disk_limit // len(view.dirs)
    dirs: list[dict[str, Any]] = []
    for root, present in zip(view.dirs, view.present, strict=True):
        files = view.files_in(root)
        dirs.append(
            {
                "path": str(root),
                "exists": present,
                "limit": share,
                "usage": view.usage_counter(root) if present else None,
                "bytes": sum(cf.size for cf in files),
                "chunks": len(files),
                "tmp_files": view.tmp_files(root) if present else 0,
            }
        )
    full = sum(1 for s in statuses if s.cached_chunks == s.chunks)
    empty = sum(1 for s in statuses if s.cached_chunks == 0 and s.chunks)
    doc: dict[str, Any] = {
        "chunk_size": settings.chunk_size,
        "ram": {"limit": settings.ram_limit, "per_process": True},
        "disk": {
            "limit": settings.disk_limit,
            "usage": sum(d["usage"] or 0 for d in dirs),
            "bytes": sum(d["bytes"] for d in dirs),
            "chunks": sum(d["chunks"] for d in dirs),
            "tmp_files": sum(d["tmp_files"] for d in dirs),
            "dirs": dirs,
        },
        "files": {
            "known": len(statuses),
            "full": full,
            "partial": len(statuses) - full - empty,
            "empty": empty,
            "size": sum(s.record.version.size for s in statuses),
            "cached_bytes": sum(s.cached_bytes for s in statuses),
            "unreadable_records": len(bad),
        },
        "other_chunks": {
            "chunks": len(other),
            "bytes": sum(cf.size for cf in other),
        },
    }
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    rows = [["ram", fmt_bytes(settings.ram_limit), "-", "-", "-", "per process"]]
    for i, entry in enumerate(dirs):
        usage = entry["usage"]
        rows.append(
            [
                "disk" if len(dirs) == 1 else f"disk{i}",
                fmt_bytes(share),
                "-" if usage is None else fmt_bytes(usage),
                fmt_bytes(entry["bytes"]),
                str(entry["chunks"]),
                entry["path"] + ("" if entry["exists"] else " (missing)"),
            ]
        )
    out.write(f"chunk size {fmt_bytes(settings.chunk_size)}\n\n")
    headers = ["tier", "budget", "usage", "on disk", "chunks", "where"]
    out.write(table(headers, rows, right=(1, 2, 3, 4)) + "\n\n")
    f = doc["files"]
    out.write(
        f"files: {f['known']} known, {f['full']} fully cached, "
        f"{f['partial']} partly, {f['empty']} not cached "
        f"({fmt_bytes(f['cached_bytes'])} of {fmt_bytes(f['size'])})\n"
    )
    if other:
        out.write(
            f"other chunks: {len(other)} ({fmt_bytes(doc['other_chunks']['bytes'])})"
            " belong to no known file at this chunk size\n"
        )
        if statuses and not f["cached_bytes"]:
            log(
                "hint: no known file has a chunk on disk; was the cache filled "
                "with another --chunk-size?"
            )
    if bad:
        out.write(f"unreadable records: {len(bad)} (ignored by readers)\n")
    if doc["disk"]["tmp_files"]:
        out.write(f"temporary files: {doc['disk']['tmp_files']}\n")
    return EXIT_OK


def cmd_ls(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs ls``."""
    patterns = [UrlPattern.parse(u) for u in args.urls]
    statuses = _view(settings, log).files(patterns)
    if args.json:
        doc = [
            {
                "url": s.url,
                "protocol": s.record.version.protocol,
                "path": s.record.version.path,
                "token": s.record.version.token,
                "size": s.record.version.size,
                "chunks": s.chunks,
                "cached_chunks": s.cached_chunks,
                "cached_bytes": s.cached_bytes,
                "fraction": round(s.fraction, 6),
                "last_access": s.last_access,
                "fetched": s.record.fetched,
            }
            for s in statuses
        ]
        out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    if not statuses:
        log("no cached files" + (" match" if patterns else ""))
        return EXIT_OK
    rows = [
        [
            f"{100 * s.fraction:.0f}%",
            fmt_bytes(s.record.version.size),
            fmt_time(s.last_access),
            s.record.version.token,
            s.url,
        ]
        for s in statuses
    ]
    headers = ["cached", "size", "last access", "version", "path"]
    out.write(table(headers, rows, right=(0, 1)) + "\n")
    return EXIT_OK


def cmd_evict(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs evict``."""
    patterns = [UrlPattern.parse(u) for u in args.urls]
    view = _view(settings, log)
    statuses = view.files(patterns)
    for p in patterns:
        if not any(p.matches(s.record.version) for s in statuses):
            log(f"nothing cached under {p.text}")
    removed, nbytes = evict_files(view, statuses)
    doc = {"files": [s.url for s in statuses], "chunks": removed, "bytes": nbytes}
    text = f"evicted {len(statuses)} files: {removed} chunks, {fmt_bytes(nbytes)}"
    return _report(args, out, doc, text)


def _report(args: Any, out: TextIO, doc: dict[str, Any], text: str) -> int:
    """Print ``doc`` as JSON with ``--json``, else ``text`` unless ``--quiet``."""
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    elif not args.quiet:
        out.write(text + "\n")
    return EXIT_OK


def cmd_clear(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs clear``."""
    view = _view(settings, log)
    chunks, nbytes, records = clear_dirs(view)
    doc = {"chunks": chunks, "bytes": nbytes, "records": records}
    text = f"cleared {chunks} chunks ({fmt_bytes(nbytes)}) and {records} records"
    return _report(args, out, doc, text)


def cmd_verify(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs verify``."""
    view = _view(settings, log)
    trust = settings.trust_cache_dir
    roots = [d for d, present in zip(view.dirs, view.present, strict=True) if present]
    damaged: list[dict[str, Any]] = []

    def found(
        path: Any, reason: str, removed: bool, key: ChunkKey | None = None
    ) -> None:
        entry: dict[str, Any] = {"path": str(path), "reason": reason}
        where = ""
        if key is not None:
            # Name what the chunk holds: the origin file and its byte range.
            url = display_url(key.version.protocol, key.version.path)
            entry["chunk_of"] = {"url": url, "start": key.start, "stop": key.stop}
            where = f" (bytes {key.start}-{key.stop - 1} of {url})"
        entry["removed"] = removed
        damaged.append(entry)
        log(f"damaged: {path}{where} {reason}" + (" (removed)" if removed else ""))

    # The layout first: a symlinked directory is unlinked, never followed.
    for root in roots:
        for stray in view.strays(root):
            if args.repair:
                remove_stray(root, stray.path)
            found(stray.path, stray.reason, args.repair and not _exists(stray.path))
    view._scans.clear()
    view._chunks = None
    records, bad_records = view.checked_records()
    owners = view.chunk_keys(records)
    expected = {digest: key.length for digest, key in owners.items()}
    files = [cf for root in view.dirs for cf in view.files_in(root)]
    total = sum(cf.size for cf in files)
    progress = Progress(
        sys.stderr, "verify", total, enabled=not args.quiet and not args.json
    )
    checked = 0
    for cf in files:
        reason = check_chunk_file(cf.path, expected.get(cf.digest), trust=trust)
        checked += cf.size
        progress.update(checked, checked)
        if reason is None:
            continue
        if args.repair:
            remove_damaged(cf.path, trust=trust)
        found(
            cf.path, reason, args.repair and not _exists(cf.path), owners.get(cf.digest)
        )
    if files:
        progress.close(total, total)
    for bad in bad_records:
        if args.repair:
            remove_stray(view.dirs[0], bad.path)
        found(bad.path, bad.reason, args.repair and not _exists(bad.path))
    # The usage counter must equal what the chunk files hold.
    view._scans.clear()
    for root in roots:
        counter = view.usage_counter(root)
        if args.repair:
            before, after = DiskTier(
                root, sys.maxsize, LRUPolicy(), trust_cache_dir=trust
            ).recount()
            if before != after:
                found(
                    root / "usage",
                    f"counted {before} bytes, the chunk files hold {after}",
                    True,
                )
        elif counter is not None:
            truth = view.counted_bytes(root)
            if counter != truth:
                found(
                    root / "usage",
                    f"counts {counter} bytes, the chunk files hold {truth}",
                    False,
                )
    left = [d for d in damaged if not d["removed"]]
    if args.json:
        doc = {
            "checked": len(files),
            "bytes": total,
            "damaged": damaged,
            "ok": not left,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
    elif not args.quiet:
        out.write(
            f"verified {len(files)} chunk files ({fmt_bytes(total)}): "
            f"{len(damaged)} damaged"
            + (f", {len(damaged) - len(left)} repaired" if args.repair else "")
            + "\n"
        )
    return EXIT_OK if not left else EXIT_FAILED


def _exists(path: Any) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def cmd_config(settings: Settings, args: Any, out: TextIO, log: Any) -> int:
    """``cachefs config``."""
    names = list(keyword_defaults())
    names += [n for n in settings.values if n not in names]
    if args.json:
        doc = {
            n: {
                "value": _jsonable(settings.values.get(n)),
                "source": settings.sources[n],
            }
            for n in names
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    parsed = {
        "ram_limit": settings.ram_limit,
        "disk_limit": settings.disk_limit,
        "chunk_size": settings.chunk_size,
    }
    rows = []
    for n in names:
        value = settings.values.get(n)
        text = "none" if value is None else str(value)
        if n in parsed and isinstance(value, int):
            text += f" ({fmt_bytes(parsed[n])})"
        if n == "cache_dir":
            text = ", ".join(str(d) for d in settings.cache_dirs)
        rows.append([n, text, settings.sources[n]])
    out.write(table(["keyword", "value", "source"], rows) + "\n")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def cmd_demo(argv: list[str], log: Any) -> int:
    """``cachefs demo``: run :mod:`cachefs.demo`, imported only now.

    The module adds its options with ``add_arguments(parser)`` and runs with
    ``run_cli(args)``; without ``run_cli`` (or the module) the demo is not
    available.
    """
    try:
        demo = importlib.import_module("cachefs.demo")
    except ImportError as exc:
        log(f"demo not available ({exc})")
        return EXIT_USAGE
    run_cli = getattr(demo, "run_cli", None)
    if not callable(run_cli):
        log("demo not available (cachefs.demo has no run_cli)")
        return EXIT_USAGE
    doc = (demo.__doc__ or "").split("\n\n")[0] or None
    parser = _Parser(prog="cachefs demo", description=doc)
    add_arguments = getattr(demo, "add_arguments", None)
    if callable(add_arguments):
        add_arguments(parser)
    return int(run_cli(parser.parse_args(argv)) or 0)


# -- entry point ---------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and len(text.split()) == 1:
        text = f"not found: {text}"
    return " ".join(text.split())


def _cli_settings(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name, None) for name in CLI_OPTIONS}
    return resolve_settings(given)


@contextlib.contextmanager
def _logging(verbose: int) -> Iterator[None]:
    """Send cachefs's log records to stderr while the command runs.

    Undone afterwards, so that calling :func:`main` in a process changes
    nothing there.
    """
    level = logging.INFO if verbose == 1 else logging.DEBUG if verbose else None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not verbose:
        # warm reports each failed file itself, once.
        handler.addFilter(
            lambda r: r.name != "cachefs.prefetch" or r.levelno >= logging.ERROR
        )
    package = logging.getLogger("cachefs")
    saved = package.level
    if level is not None:
        package.setLevel(level)
    package.addHandler(handler)
    package.propagate, propagate = False, package.propagate
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.propagate = propagate
        package.setLevel(saved)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Return the subcommands' parsers by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cachefs`` command; return its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(args_list)
    command = args.command
    err = sys.stderr
    out = sys.stdout

    def log(message: str) -> None:
        err.write(f"cachefs {command}: {message}\n")
        err.flush()

    if extra and command != "demo":
        # Reported by the subcommand's parser, so the line names it
        # ("cachefs warm: error: ...") like every other error of that command.
        parser_of = _subparsers(parser).get(command, parser)
        parser_of.error(f"unrecognized arguments: {' '.join(extra)}")
    verbose = int(getattr(args, "verbose", 0) or 0)
    args.quiet = bool(getattr(args, "quiet", False))
    with _logging(verbose):
        return _dispatch(args, args_list, command, out, err, log, verbose)


def _dispatch(
    args: argparse.Namespace,
    args_list: list[str],
    command: str,
    out: TextIO,
    err: TextIO,
    log: Any,
    verbose: int,
) -> int:
    try:
        if command == "demo":
            forwarded = list(args_list)
            forwarded.remove("demo")  # the demo parses everything else itself
            return cmd_demo(forwarded, log)
        settings = _cli_settings(args)
        if command == "warm":
            from cachefs.cli_warm import run_warm

            return run_warm(settings, args, out, err, log)
        if command == "bench":
            from cachefs.cli_bench import run_bench

            return run_bench(settings, args, out, err)
        handlers = {
            "stats": cmd_stats,
            "ls": cmd_ls,
            "evict": cmd_evict,
            "clear": cmd_clear,
            "verify": cmd_verify,
            "config": cmd_config,
        }
        return handlers[command](settings, args, out, log)
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError) as exc:
        if verbose:
            traceback.print_exc(file=err)
        log(f"error: {_one_line(exc)}")
        return EXIT_USAGE if isinstance(exc, ValueError | TypeError) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
