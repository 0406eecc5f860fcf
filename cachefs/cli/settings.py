"""Effective settings of the ``cachefs`` command, and where each came from.

A keyword's value comes, in increasing precedence, from the keyword's default
in :class:`~cachefs.CacheFileSystem`, fsspec's configuration files
(``~/.config/fsspec`` or ``$FSSPEC_CONFIG_DIR``), the environment
(``FSSPEC_CACHEFS='{...}'``, then ``FSSPEC_CACHEFS_<KWARG>``), and the
command line. fsspec applies its configuration whenever the class is built;
the command resolves the same layers itself so that it knows the chunk size,
directories and budgets even for commands that build no filesystem, and
checks them with the filesystem's own parser,
:meth:`~cachefs.config.CacheConfig.from_kwargs`, naming the option or the
source of a bad value.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import fsspec

from cachefs.cli.format import EXIT_OK, fmt_bytes, table
from cachefs.config import (
    FSSPEC_KEYWORDS,
    TARGET_KEYWORDS,
    CacheConfig,
    fsspec_config_sources,
    unknown_keyword,
)
from cachefs.filesystem import CacheFileSystem

__all__ = [
    "CLI_OPTIONS",
    "Settings",
    "cmd_config",
    "keyword_defaults",
    "make_fs",
    "resolve_settings",
    "url_protocol",
]

#: Keywords the command line sets, with the option that sets each.
CLI_OPTIONS = {
    "cache_dir": "--cache-dir",
    "ram_limit": "--ram-limit",
    "disk_limit": "--disk-limit",
    "chunk_size": "--chunk-size",
    "metadata_ttl": "--metadata-ttl",
    "target_options": "--target-options",
    "shared": "--shared",
    "trust_cache_dir": "--trust-cache-dir",
    "direct_writes": "--direct-writes",
}
_NOT_SETTINGS = frozenset({"self", "target_protocol", "fs", "kwargs"})


@dataclass
class Settings:
    """The resolved settings every subcommand works with.

    Attributes
    ----------
    cache_dirs, ram_limit, disk_limit, chunk_size, metadata_ttl, target_options
        The parsed values of those keywords.
    trust_cache_dir
        Whether a cache dir another user owns or others can write is used.
    config
        Every cache keyword, parsed and checked by
        :meth:`~cachefs.config.CacheConfig.from_kwargs`: the fields above
        are its values, so the command and the filesystem read a setting
        alike.
    values
        The effective value of every keyword, as its source gave it.
    sources
        Where each value came from (``"default"``, ``"command line"``,
        ``"env FSSPEC_CACHEFS_CHUNK_SIZE"``, ...).
    """

    cache_dirs: list[Path]
    ram_limit: int
    disk_limit: int
    chunk_size: int
    metadata_ttl: float | None
    target_options: dict[str, Any]
    config: CacheConfig
    trust_cache_dir: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def fs_kwargs(self) -> dict[str, Any]:
        """Return the keywords that build a filesystem with these settings."""
        dirs = [str(d) for d in self.cache_dirs]
        kwargs: dict[str, Any] = {
            "cache_dir": dirs[0] if len(dirs) == 1 else dirs,
            "ram_limit": self.ram_limit,
            "disk_limit": self.disk_limit,
            "chunk_size": self.chunk_size,
            "metadata_ttl": self.metadata_ttl,
        }
        if self.values.get("shared"):
            kwargs["shared"] = self.values["shared"]
        if self.trust_cache_dir:
            kwargs["trust_cache_dir"] = True
        if self.config.direct_writes is not None:
            kwargs["direct_writes"] = self.config.direct_writes
        return kwargs


def keyword_defaults() -> dict[str, Any]:
    """Return the keyword defaults of :class:`CacheFileSystem`, in order."""
    sig = inspect.signature(CacheFileSystem.__init__)
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if name not in _NOT_SETTINGS and p.kind is not p.VAR_KEYWORD
    }


def _label(name: str, source: str) -> str:
    if source == "command line":
        return CLI_OPTIONS[name]
    if source == "default":
        return name
    return f"{name} (from {source})"


def _parse_options(value: Any, label: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{label} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{label} must be a JSON object, got {value!r}")
    return value


def resolve_settings(cli: dict[str, Any]) -> Settings:
    """Resolve every keyword from defaults, fsspec config and ``cli``.

    Parameters
    ----------
    cli
        Values given on the command line, keyed by keyword name (``None`` or
        absent when not given); ``metadata_ttl`` and sizes as typed.

    Raises
    ------
    TypeError, ValueError
        If a value does not parse; the message names the option, or the
        keyword and the config source it came from.
    """
    values = keyword_defaults()
    sources = dict.fromkeys(values, "default")
    live, live_sources = fsspec_config_sources()
    for name in sorted(live):
        # A mistyped key would otherwise be listed as a setting and ignored.
        if name not in values and name not in FSSPEC_KEYWORDS | TARGET_KEYWORDS:
            raise unknown_keyword(name, values, source=live_sources[name])
    values.update(live)
    sources.update(live_sources)
    for name, value in cli.items():
        if value is not None:
            values[name] = value
            sources[name] = "command line"

    def label(name: str) -> str:
        return _label(name, sources.get(name, "default"))

    given = {n: values[n] for n in CacheConfig.KEYWORDS if n in values}
    # One parser for every spelling ("none", "1GiB", "true"...), the one the
    # filesystem uses, so the command never accepts what a job refuses.
    config = CacheConfig.from_kwargs(**given, labels={n: label(n) for n in given})
    if sources["cache_dir"] == "default":
        values["cache_dir"] = str(config.cache_dirs[0])
    return Settings(
        cache_dirs=list(config.cache_dirs),
        ram_limit=config.ram_limit,
        disk_limit=config.disk_limit,
        chunk_size=config.chunk_size,
        metadata_ttl=config.metadata_ttl,
        target_options=_parse_options(
            values.get("target_options"), label("target_options")
        ),
        trust_cache_dir=config.trust_cache_dir,
        config=config,
        values=values,
        sources=sources,
    )


def url_protocol(urls: Sequence[str]) -> str:
    """Return the one protocol of ``urls`` (``"file"`` for plain paths).

    Raises
    ------
    ValueError
        For a URL fsspec cannot serve, a chained URL, or URLs of several
        protocols.
    """
    found: dict[str, str] = {}
    for url in urls:
        text = url.removeprefix("cachefs::")
        if not text.strip():
            raise ValueError(f"bad URL {url!r}: empty")
        if "::" in text:
            raise ValueError(f"bad URL {url!r}: chained URLs are not supported")
        proto = fsspec.core.split_protocol(text)[0] or "file"
        try:
            cls = fsspec.get_filesystem_class(proto)
        except ValueError:
            raise ValueError(f"bad URL {url!r}: unknown protocol {proto!r}") from None
        except ImportError as exc:
            raise ValueError(f"URL {url!r} needs a package: {exc}") from None
        first = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
        found.setdefault(first, proto)
    if len(found) > 1:
        raise ValueError(
            "URLs must all use one protocol, got " + " and ".join(sorted(found))
        )
    return next(iter(found.values()))


def make_fs(settings: Settings, protocol: str, **overrides: Any) -> CacheFileSystem:
    """Build a fresh :class:`CacheFileSystem` over ``protocol``.

    Keywords the command does not set (``policy``, ``max_requests``, ...)
    come from fsspec's configuration, which the class applies itself.
    """
    kwargs = settings.fs_kwargs()
    kwargs.update(overrides)
    try:
        return CacheFileSystem(
            target_protocol=protocol,
            target_options=dict(settings.target_options) or None,
            skip_instance_cache=True,
            **kwargs,
        )
    except OSError as exc:
        name = os.fspath(exc.filename) if exc.filename is not None else None
        dirs = kwargs["cache_dir"]
        roots = [dirs] if isinstance(dirs, str) else list(dirs)
        if name is not None and any(
            name == r or name.startswith(r.rstrip("/") + "/") or r.startswith(name)
            for r in roots
        ):
            raise OSError(
                f"cache dir {name!r} is not usable: {exc.strerror or exc}"
            ) from exc
        raise


def cmd_config(
    settings: Settings, args: Any, out: TextIO, log: Callable[[str], None]
) -> int:
    """``cachefs config``: every keyword's effective value and its source."""
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
