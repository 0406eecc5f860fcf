"""The settings of a cache as one frozen value, validated in one place.

:class:`CacheConfig` holds every setting of :class:`~cachefs.CacheFileSystem`
that is not the target itself, parsed: sizes in bytes, durations in seconds,
counts, flags, the eviction policy, the chunk codec and the shared tier's
location. :meth:`CacheConfig.from_kwargs` is the one place they are checked,
whatever their source (keywords, fsspec's ``FSSPEC_CACHEFS_<KWARG>`` strings,
``.ini`` files, the ``cachefs`` command line): a bad value fails at once with
a message that names the parameter. The parts of the cache see slices of it
(:attr:`CacheConfig.fetch`, :attr:`CacheConfig.staging`), not the whole.

Use it standalone::

    config = CacheConfig.from_kwargs(ram_limit="2GiB", metadata_ttl="none")
    config.ram_limit  # 2147483648
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import fsspec.config
from fsspec.core import split_protocol

from cachefs.chunks import parse_count, parse_flag, parse_seconds, parse_size
from cachefs.policy import EvictionPolicy, make_policy

__all__ = [
    "FSSPEC_KEYWORDS",
    "TARGET_KEYWORDS",
    "CacheConfig",
    "FetchConfig",
    "SharedLocation",
    "StagingConfig",
    "default_cache_dir",
    "fsspec_config_sources",
    "split_keywords",
    "unknown_keyword",
]

#: Keywords fsspec itself gives every filesystem (``AbstractFileSystem``,
#: ``AsyncFileSystem``, its instance cache and URL chaining).
FSSPEC_KEYWORDS = frozenset(
    {
        "asynchronous",
        "loop",
        "batch_size",
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "fo",
    }
)
#: Keywords that choose the target rather than configure the cache.
TARGET_KEYWORDS = frozenset({"target_protocol", "target_options", "fs"})
_ENV_PREFIX = "FSSPEC_CACHEFS_"
# An environment variable left in a path: $NAME or ${NAME}.
_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")

_CODECS = {"zstd": {"id": "zstd", "level": 1}, "lz4": {"id": "lz4"}}


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/cachefs`` (``~/.cache/cachefs`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return Path(base) / "cachefs"


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """The settings of the origin fetcher.

    Attributes
    ----------
    max_requests
        Concurrent origin requests at most.
    max_inflight
        Bytes of origin requests in flight at most.
    retries
        Times a transient fault is retried.
    timeout
        Seconds one origin request may take; ``None`` for no limit.
    """

    max_requests: int
    max_inflight: int
    retries: int
    timeout: float | None


@dataclass(frozen=True, slots=True)
class StagingConfig:
    """The settings of the staging area (chunks fetched ahead of a reader).

    Attributes
    ----------
    limit
        Bytes staged or reserved at most; ``0`` turns prefetching off.
    hold
        Seconds a staged chunk waits for its reader before its budget may be
        reclaimed.
    """

    limit: int
    hold: float


@dataclass(frozen=True, slots=True)
class SharedLocation:
    """Where the shared tier lives: a protocol, a root and its options.

    Attributes
    ----------
    protocol
        The fsspec protocol (``"file"``, ``"s3"``, ...).
    root
        The directory or prefix, as given (the filesystem strips it).
    options
        Keywords of the shared tier's filesystem.
    spec
        The ``shared`` value as given, for messages.
    """

    protocol: str
    root: str
    options: Mapping[str, Any] = field(default_factory=dict)
    spec: Any = None


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Every setting of a cache, parsed; build it with :meth:`from_kwargs`.

    Attributes
    ----------
    cache_dirs
        Directories of the disk tier, absolute.
    ram_limit, disk_limit
        Byte budgets of the RAM tier (per process) and the disk tier (per
        node, split over ``cache_dirs``); ``0`` turns a tier off.
    chunk_size
        Bytes per chunk.
    metadata_ttl
        Seconds a file's size and version are trusted; ``None``: forever.
    policy
        The eviction policy's name or a policy instance (see
        :meth:`make_policy`).
    max_requests, max_inflight, retries, request_timeout
        Caps and patience of origin requests (see :attr:`fetch`).
    max_coalesce
        Largest single ranged request made by joining adjacent chunks.
    readahead
        Largest readahead window of a sequential reader; ``0`` turns it off.
    prefetch_limit, prefetch_hold
        Budget and hold time of the staging area (see :attr:`staging`).
    compression
        The numcodecs codec of disk chunks, or ``None``.
    shared
        Where the cluster-wide tier lives, or ``None``.
    shared_lease
        Seconds a node's lease on a chunk it fetches for the shared tier holds.
    trust_cache_dir
        Whether a cache directory another user owns, or others can write, is
        used.
    direct_writes
        Whether the disk tier writes chunks with ``O_DIRECT`` (bypassing the
        page cache); ``None``: decided per directory
        (:func:`cachefs.tiers.direct.choose`).
    """

    #: The keywords :meth:`from_kwargs` takes (those of ``CacheFileSystem``
    #: less the target and fsspec's own).
    KEYWORDS: ClassVar[frozenset[str]] = frozenset(
        {
            "cache_dir",
            "ram_limit",
            "disk_limit",
            "chunk_size",
            "metadata_ttl",
            "policy",
            "max_requests",
            "max_inflight",
            "max_coalesce",
            "retries",
            "request_timeout",
            "readahead",
            "prefetch_limit",
            "prefetch_hold",
            "compression",
            "shared",
            "shared_lease",
            "trust_cache_dir",
            "direct_writes",
        }
    )

    cache_dirs: tuple[Path, ...]
    ram_limit: int
    disk_limit: int
    chunk_size: int
    metadata_ttl: float | None
    policy: str | EvictionPolicy
    max_requests: int
    max_inflight: int
    max_coalesce: int
    retries: int
    request_timeout: float | None
    readahead: int
    prefetch_limit: int
    prefetch_hold: float
    compression: Any
    shared: SharedLocation | None
    shared_lease: float
    trust_cache_dir: bool
    direct_writes: bool | None = None

    @classmethod
    def from_kwargs(
        cls,
        *,
        cache_dir: str
        | os.PathLike[str]
        | Sequence[str | os.PathLike[str]]
        | None = None,
        ram_limit: int | str = "1GiB",
        disk_limit: int | str = "32GiB",
        chunk_size: int | str = "4MiB",
        metadata_ttl: float | str | None = 60.0,
        policy: str | EvictionPolicy = "adaptive",
        max_requests: int | str = 16,
        max_inflight: int | str = "256MiB",
        max_coalesce: int | str = "16MiB",
        retries: int | str = 4,
        request_timeout: float | str | None = 60.0,
        readahead: int | str = "64MiB",
        prefetch_limit: int | str = "256MiB",
        prefetch_hold: float | str = 30.0,
        compression: str | dict[str, Any] | Any | None = None,
        shared: str | dict[str, Any] | None = None,
        shared_lease: float | str = 30.0,
        trust_cache_dir: bool | str = False,
        direct_writes: bool | str | None = "auto",
        labels: Mapping[str, str] | None = None,
    ) -> CacheConfig:
        """Parse and check every setting; the defaults are the keywords'.

        Parameters
        ----------
        cache_dir, ram_limit, ..., trust_cache_dir
            As the keywords of :class:`~cachefs.CacheFileSystem`; sizes take
            ints and strings such as ``"512MiB"``, durations and counts
            numbers or strings of them, flags bools or boolean words.
        labels
            What to call a setting in an error message, by keyword (the
            ``cachefs`` command names its options: ``{"ram_limit":
            "--ram-limit"}``); a keyword not in it is named as itself.

        Raises
        ------
        TypeError, ValueError
            For a value of the wrong type or out of range; the message names
            the parameter.
        """
        names = dict(labels or {})

        def name(keyword: str) -> str:
            return names.get(keyword, keyword)

        sizes = {
            "chunk_size": parse_size(chunk_size, name("chunk_size"), allow_zero=False),
            "ram_limit": parse_size(ram_limit, name("ram_limit")),
            "disk_limit": parse_size(disk_limit, name("disk_limit")),
        }
        ttl = parse_seconds(metadata_ttl, name("metadata_ttl"), allow_none=True)
        tries = parse_count(retries, name("retries"), minimum=0)
        timeout = parse_seconds(
            request_timeout, name("request_timeout"), allow_none=True
        )
        dirs = _cache_dirs(cache_dir, name("cache_dir"))
        make_policy(policy)  # checks the name; each tier gets its own instance
        codec = _make_codec(compression, name("compression"))
        trust = parse_flag(trust_cache_dir, name("trust_cache_dir"))
        direct = _auto_flag(direct_writes, name("direct_writes"))
        requests = parse_count(max_requests, name("max_requests"))
        inflight = parse_size(max_inflight, name("max_inflight"), allow_zero=False)
        ahead = parse_size(readahead, name("readahead"))
        limit = parse_size(prefetch_limit, name("prefetch_limit"))
        hold = parse_seconds(prefetch_hold, name("prefetch_hold"), allow_none=False)
        coalesce = parse_size(max_coalesce, name("max_coalesce"), allow_zero=False)
        lease = parse_seconds(shared_lease, name("shared_lease"), allow_none=False)
        assert hold is not None and lease is not None  # allow_none=False
        return cls(
            cache_dirs=dirs,
            metadata_ttl=ttl,
            policy=policy,
            max_requests=requests,
            max_inflight=inflight,
            max_coalesce=coalesce,
            retries=tries,
            request_timeout=timeout,
            readahead=ahead,
            prefetch_limit=limit,
            prefetch_hold=hold,
            compression=codec,
            shared=_shared_location(shared, name("shared")),
            shared_lease=lease,
            trust_cache_dir=trust,
            direct_writes=direct,
            **sizes,
        )

    # -- slices --------------------------------------------------------------

    @property
    def fetch(self) -> FetchConfig:
        """The settings the origin fetcher needs."""
        return FetchConfig(
            self.max_requests, self.max_inflight, self.retries, self.request_timeout
        )

    @property
    def staging(self) -> StagingConfig | None:
        """The staging area's settings; ``None`` when prefetching is off."""
        if not self.prefetch_limit:
            return None
        return StagingConfig(self.prefetch_limit, self.prefetch_hold)

    @property
    def disk_share(self) -> int:
        """Byte budget of each cache directory (the disk budget split evenly)."""
        return self.disk_limit // len(self.cache_dirs)

    @property
    def first_window(self) -> int:
        """Bytes a sequential reader's first request covers (one chunk or more)."""
        return max(self.chunk_size, min(self.readahead, self.max_coalesce))

    def make_policy(self) -> EvictionPolicy:
        """Return a policy instance for one tier (a new one per name)."""
        return make_policy(self.policy)


def _cache_dirs(
    cache_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    name: str,
) -> tuple[Path, ...]:
    if cache_dir is None:
        return (default_cache_dir(),)
    if isinstance(cache_dir, str | os.PathLike):
        items: list[Any] = [cache_dir]
    elif isinstance(cache_dir, Sequence):
        items = list(cache_dir)
    else:
        raise TypeError(
            f"{name} must be a path or a list of paths, got {type(cache_dir).__name__}"
        )
    if not items:
        raise ValueError(f"{name} must name at least one directory")
    for item in items:
        if not isinstance(item, str | os.PathLike) or not os.fspath(item):
            raise TypeError(f"{name} entries must be paths, got {item!r}")
    dirs = tuple(_one_dir(os.fspath(item), name) for item in items)
    # Two entries naming one directory would be two tiers over one usage
    # counter, each with half the budget: refused rather than guessed at.
    seen: dict[str, str] = {}
    for item, path in zip(items, dirs, strict=True):
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(
                f"{name} lists the directory {real!r} twice ({seen[real]!r} and "
                f"{os.fspath(item)!r}); list each directory once"
            )
        seen[real] = os.fspath(item)
    return dirs


def _one_dir(text: str, name: str) -> Path:
    """Expand ``~`` and environment variables; refuse one left unexpanded.

    fsspec's JSON and ``.ini`` files and ``FSSPEC_CACHEFS_CACHE_DIR`` hand
    the value over as written: ``$HOME/cachefs`` would otherwise become a
    directory named ``$HOME`` under the working directory.
    """
    expanded = os.path.expandvars(os.path.expanduser(text))
    left = _VARIABLE.search(expanded)
    if left is not None:
        raise ValueError(
            f"{name}={text!r} names the environment variable {left.group(0)}, "
            "which is not set; set it or write the path out"
        )
    # normpath folds "d/", "d/." and "d/../d" to one spelling of d.
    return Path(os.path.normpath(os.path.abspath(expanded)))


def _auto_flag(value: Any, name: str) -> bool | None:
    """Return a flag, or ``None`` for ``"auto"`` (and ``None``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        return parse_flag(value, name)
    except ValueError:
        raise ValueError(f"{name} must be 'auto' or a boolean, got {value!r}") from None


def _make_codec(compression: Any, name: str) -> Any:
    """Return a numcodecs codec for the ``compression`` keyword (or None)."""
    if compression is None:
        return None
    import numcodecs  # only a cache that compresses pays for the import
    from numcodecs.abc import Codec

    if isinstance(compression, Codec):
        return compression
    config = _CODECS.get(compression) if isinstance(compression, str) else compression
    if not isinstance(config, dict):
        raise ValueError(
            f"{name}={compression!r} is not a codec; use None, "
            f"{', '.join(repr(n) for n in _CODECS)}, a numcodecs config dict "
            "or a codec object"
        )
    try:
        return numcodecs.get_codec(dict(config))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{name}={compression!r}: {exc}") from exc


def _shared_location(shared: Any, name: str) -> SharedLocation | None:
    """Check ``shared=URL`` or ``shared={...}``; the filesystem builds it."""
    if shared is None:
        return None
    if isinstance(shared, str):
        protocol, root = split_protocol(shared)
        return SharedLocation(protocol or "file", root, {}, shared)
    if isinstance(shared, dict):
        unknown = set(shared) - {"protocol", "root", "options"}
        if unknown or not isinstance(shared.get("root"), str):
            raise ValueError(
                f"{name} must be a URL or a dict with 'protocol', 'root' and "
                f"optional 'options', got {shared!r}"
            )
        protocol = shared.get("protocol", "file")
        if not isinstance(protocol, str):
            raise TypeError(f"{name} protocol must be a str, got {protocol!r}")
        options = dict(shared.get("options") or {})
        return SharedLocation(protocol, shared["root"], options, shared)
    raise TypeError(f"{name} must be a URL or a dict, got {type(shared).__name__}")


# -- keywords ------------------------------------------------------------------


def unknown_keyword(
    name: str, known: Iterable[str], *, source: str | None = None
) -> TypeError:
    """Return the error for a keyword no one takes, naming the closest known one.

    Parameters
    ----------
    name
        The keyword as given.
    known
        The keywords that would have been accepted.
    source
        Where the keyword came from, when not from the caller's own code
        (``"env FSSPEC_CACHEFS_CACHE_DRI"``).
    """
    closest = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.0)
    where = f" (from {source})" if source else ""
    hint = f"; did you mean {closest[0]!r}?" if closest else ""
    return TypeError(
        f"cachefs got an unknown keyword {name!r}{where}{hint} "
        "(keywords of the target filesystem go in target_options)"
    )


def split_keywords(
    extra: Mapping[str, Any], target_protocol: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sort ``CacheFileSystem``'s extra keywords into fsspec's and the target's.

    A keyword that is neither fsspec's own (:data:`FSSPEC_KEYWORDS`) nor a
    named parameter of the target's class (``anon`` of s3, given as
    ``fsspec.open("cachefs::s3://...", anon=True)``) is refused: a mistyped
    setting must not leave the cache on its defaults.

    Returns
    -------
    tuple of dict
        The keywords for fsspec, and those passed on to the target.

    Raises
    ------
    TypeError
        Naming the first unknown keyword, the closest known one and, when
        it came from fsspec's configuration, the variable or file.
    """
    # The target's signature only when a keyword is not fsspec's: reading it
    # cost every plain open 0.1 ms (issue 20).
    others = set(extra) - FSSPEC_KEYWORDS
    accepted = _target_accepts(target_protocol) if others else frozenset()
    own: dict[str, Any] = {}
    passed: dict[str, Any] = {}
    for key in sorted(extra):
        if key in FSSPEC_KEYWORDS:
            own[key] = extra[key]
        elif key in accepted:
            passed[key] = extra[key]
        else:
            known = CacheConfig.KEYWORDS | TARGET_KEYWORDS | FSSPEC_KEYWORDS
            raise unknown_keyword(
                key, known | accepted, source=_config_source(key, extra[key])
            )
    return own, passed


def _target_accepts(protocol: str | None) -> frozenset[str]:
    """Return the named keywords of ``protocol``'s filesystem class."""
    if not protocol:
        return frozenset()
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError):
        return frozenset()  # building the target names the real problem
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("fsspec.spec") or klass is object:
            break
        init = vars(klass).get("__init__")
        if init is None:
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                names.add(param.name)
    return frozenset(names - {"self"} - FSSPEC_KEYWORDS)


def _config_source(key: str, value: Any) -> str | None:
    """Name where fsspec's configuration set ``key`` to ``value``, if it did."""
    live = fsspec.config.conf.get("cachefs", {})
    if key not in live or live[key] is not value:
        return None
    return fsspec_config_sources()[1].get(key)


def fsspec_config_sources() -> tuple[dict[str, Any], dict[str, str]]:
    """Return fsspec's live ``cachefs`` config and the source of each key.

    A source is ``"env FSSPEC_CACHEFS_<KWARG>"``, ``"env FSSPEC_CACHEFS"``,
    ``"fsspec config file in <dir>"`` or ``"fsspec.config.conf"`` (set in
    code).
    """
    live = dict(fsspec.config.conf.get("cachefs", {}))
    files: dict[str, dict[str, Any]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fsspec.config.set_conf_files(fsspec.config.conf_dir, files)
    except (OSError, ValueError):
        files = {}
    from_files = files.get("cachefs", {})
    whole: dict[str, Any] = {}
    raw = os.environ.get("FSSPEC_CACHEFS")
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            whole = parsed
    single = {
        key[len(_ENV_PREFIX) :].lower(): key
        for key in os.environ
        if key.startswith(_ENV_PREFIX) and len(key) > len(_ENV_PREFIX)
    }
    sources: dict[str, str] = {}
    for name in live:
        if name in single:
            sources[name] = f"env {single[name]}"
        elif name in whole:
            sources[name] = "env FSSPEC_CACHEFS"
        elif name in from_files:
            sources[name] = f"fsspec config file in {fsspec.config.conf_dir}"
        else:
            sources[name] = "fsspec.config.conf"
    return live, sources
