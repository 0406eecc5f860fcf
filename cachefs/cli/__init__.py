"""The ``cachefs`` command: warm, inspect, verify and measure a cache.

Subcommands: ``warm``, ``stats``, ``ls``, ``evict``, ``clear``, ``verify``,
``bench``, ``config`` and ``demo``; ``cachefs <command> --help`` describes
each, and ``docs/cli.md`` shows a session. Exit codes: ``0`` success, ``1``
the operation did not fully succeed (a file not cached, a damaged chunk, a
missing file), ``2`` a usage error (bad option, size, URL or JSON), ``130``
interrupted.

One module per job: :mod:`~cachefs.cli.main` parses and dispatches,
:mod:`~cachefs.cli.settings` resolves the settings (``config``),
:mod:`~cachefs.cli.inspect` reads a cache (``stats``, ``ls``),
:mod:`~cachefs.cli.maintain` removes and repairs (``evict``, ``clear``,
``verify``), :mod:`~cachefs.cli.warm`, :mod:`~cachefs.cli.bench` and
:mod:`~cachefs.cli.demo` run those commands, and :mod:`~cachefs.cli.format`
holds what they print. The package is the top layer: nothing else in cachefs
imports it.
"""

from cachefs.cli.main import main

__all__ = ["main"]
