"""Parse the ``cachefs`` command line and run one subcommand.

Options common to every subcommand become :class:`~cachefs.cli.settings.Settings`
first; a user's mistake (bad option, size, URL, JSON) ends in one line on
stderr and status ``2``, a failed operation in status ``1``, an interrupt in
``130`` (see :mod:`cachefs.cli`); ``-v`` adds log records and tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

from cachefs._version import __version__
from cachefs.cli.format import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from cachefs.cli.inspect import cmd_ls, cmd_stats
from cachefs.cli.maintain import cmd_clear, cmd_evict, cmd_verify
from cachefs.cli.mount import add_parsers as add_mount_parsers
from cachefs.cli.mount import run_mount, run_umount
from cachefs.cli.settings import CLI_OPTIONS, Settings, cmd_config, resolve_settings

__all__ = ["build_parser", "main"]

#: The subcommands that work on the cache directory alone.
_COMMANDS: dict[str, Callable[[Settings, Any, TextIO, Callable[[str], None]], int]] = {
    "stats": cmd_stats,
    "ls": cmd_ls,
    "evict": cmd_evict,
    "clear": cmd_clear,
    "verify": cmd_verify,
    "config": cmd_config,
    "mount": run_mount,
    "umount": run_umount,
}


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
    g.add_argument(
        "--direct-writes",
        choices=("auto", "on", "off"),
        help="write chunks with O_DIRECT, bypassing the page cache (default "
        "auto: when the disk budget is at least twice this machine's RAM)",
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

    add_mount_parsers(add, common)

    add("demo", "run the cachefs demo (arguments go to the demo)", add_help=False)
    return parser


# -- the demo -------------------------------------------------------------------


def cmd_demo(argv: list[str], log: Any) -> int:
    """``cachefs demo``: run :mod:`cachefs.cli.demo`, imported only now.

    The module adds its options with ``add_arguments(parser)`` and runs with
    ``run_cli(args)``; without ``run_cli`` (or the module) the demo is not
    available.
    """
    try:
        demo = importlib.import_module("cachefs.cli.demo")
    except ImportError as exc:
        log(f"demo not available ({exc})")
        return EXIT_USAGE
    run_cli = getattr(demo, "run_cli", None)
    if not callable(run_cli):
        log("demo not available (cachefs.cli.demo has no run_cli)")
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


def _unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """Say what in ``extra`` ``parser`` does not know, with a guess for a typo.

    An unknown option is named alone, with the closest of the subcommand's own
    options (``--disk-limt`` -> ``--disk-limit``) when one is close; other
    leftovers are listed as argparse would.
    """
    known = [o for action in parser._actions for o in action.option_strings]
    for arg in extra:
        if not arg.startswith("-") or arg == "-":
            continue
        name = arg.split("=", 1)[0]  # --disk-limt=1GiB names --disk-limt
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown option {name}{hint}"
    return f"unrecognized arguments: {' '.join(extra)}"


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
        parser_of.error(_unrecognized(parser_of, extra))
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
            from cachefs.cli.warm import run_warm

            return run_warm(settings, args, out, err, log)
        if command == "bench":
            from cachefs.cli.bench import run_bench

            return run_bench(settings, args, out, err)
        return _COMMANDS[command](settings, args, out, log)
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_INTERRUPTED
    except (ValueError, TypeError, OSError) as exc:
        if verbose:
            traceback.print_exc(file=err)
        log(f"error: {_one_line(exc)}")
        return EXIT_USAGE if isinstance(exc, ValueError | TypeError) else EXIT_FAILED
