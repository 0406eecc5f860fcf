"""Chunks of origin files: versions, keys, spans, and parsing of settings.

A file is cut into fixed-size chunks. A chunk is named by a :class:`ChunkKey`
that includes the file's *version*, so a changed origin file gets new keys and
stale chunks simply age out of the cache.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ChunkKey",
    "FileVersion",
    "assemble",
    "clip",
    "parse_count",
    "parse_flag",
    "parse_seconds",
    "parse_size",
    "span_keys",
    "token_fields",
    "version_token",
]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, name: str, *, allow_zero: bool = True) -> int:
    """Parse a byte size given as an int or a string such as ``"512MiB"``.

    Parameters
    ----------
    value
        A non-negative int, or a string of a number and an optional unit
        (``B``, ``kB``, ``MB``, ``GB``, ``TB``, ``KiB``, ``MiB``, ``GiB``,
        ``TiB``; case-insensitive).
    name
        The parameter's name, used in error messages.
    allow_zero
        Whether ``0`` is accepted (it turns a tier off).

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    TypeError
        If ``value`` is neither an int nor a string.
    ValueError
        If ``value`` is negative, unparsable, or zero where not allowed.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(
            f"{name} must be an int or a size string such as '512MiB', "
            f"got {type(value).__name__}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name}={value!r} is not a size; use an int or a string "
                "such as '512MiB' or '2GiB'"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if size == 0 and not allow_zero:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return size


#: Spellings of "no limit" that :func:`parse_seconds` takes for ``None``.
_NO_LIMIT = frozenset({"", "none", "null", "never", "inf", "forever"})


def parse_seconds(value: Any, name: str, *, allow_none: bool) -> float | None:
    """Parse a duration in seconds given as a number or a string.

    The one parser of durations: keywords of
    :class:`~cachefs.CacheFileSystem` and the ``cachefs`` command use it, so
    a value written once (``FSSPEC_CACHEFS_METADATA_TTL=none``, a config
    file, ``--metadata-ttl``) means the same everywhere.

    Parameters
    ----------
    value
        A non-negative int or float, a string of one (``"60"``, ``"0.5"``),
        or, where ``allow_none``, ``None`` or a string meaning no limit:
        ``"none"``, ``"null"``, ``"never"``, ``"inf"``, ``"forever"`` or
        ``""`` (any case).
    name
        The parameter's name, used in error messages.
    allow_none
        Whether ``None`` (no limit) is accepted.

    Returns
    -------
    float or None
        Seconds, or ``None`` for no limit.

    Raises
    ------
    TypeError
        If ``value`` is neither a number nor a string (``bool`` included),
        or is ``None`` where not allowed.
    ValueError
        If ``value`` is negative, NaN, or a string that is not a number
        (nor, where allowed, a spelling of no limit).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NO_LIMIT and allow_none:
            return None
        try:
            value = float(text)
        except ValueError:
            hint = " or 'none'" if allow_none else ""
            raise ValueError(
                f"{name}={value!r} is not a number of seconds{hint}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if value != value:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return float(value)


def parse_count(value: Any, name: str, *, minimum: int = 1) -> int:
    """Parse a count given as an int or a string of digits (``"8"``).

    fsspec hands ``FSSPEC_CACHEFS_<KWARG>`` values and ``.ini`` config
    values over as strings (recent releases JSON-decode environment values
    first, so ``"8"`` arrives as ``8``, but a file or an older fsspec still
    gives ``"8"``).

    Parameters
    ----------
    value
        An int, or a string of an int.
    name
        The parameter's name, used in error messages.
    minimum
        The smallest value accepted.

    Raises
    ------
    TypeError
        If ``value`` is neither an int nor a string (``bool`` included).
    ValueError
        If ``value`` is a string that is not an int, or is below ``minimum``.
    """
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def parse_flag(value: Any, name: str) -> bool:
    """Return ``value`` as a bool (``True``, ``"yes"``, ``1``, ...).

    Parameters
    ----------
    value
        A bool, ``0`` or ``1``, or a boolean word (``"true"``/``"false"``,
        ``"yes"``/``"no"``, ``"on"``/``"off"``, ``"1"``/``"0"``, ``""``;
        any case), as fsspec's config hands it over.
    name
        The parameter's name, used in error messages.

    Raises
    ------
    ValueError
        If ``value`` is not a boolean or a boolean word; names ``name``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
    raise ValueError(f"{name}={value!r} is not a boolean (true or false)")


_TOKEN_FIELDS = ("ETag", "etag", "e_tag", "ETAG", "VersionId", "generation", "md5")
_MTIME_FIELDS = ("mtime", "LastModified", "last_modified", "Last-Modified", "created")


def version_token(info: dict[str, Any]) -> str:
    """Derive a version token from a target's ``info()`` dict.

    An ETag (or another content identity the target reports) wins; otherwise
    the token is built from size and modification time.

    Parameters
    ----------
    info
        What the target filesystem's ``info`` returned for the file.

    Returns
    -------
    str
        A string that changes whenever the file's content changes.
    """
    for name in _TOKEN_FIELDS:
        value = info.get(name)
        if value:
            return f"{name}:{str(value).strip()}"
    size = info.get("size")
    for name in _MTIME_FIELDS:
        value = info.get(name)
        if value is not None and value != "":
            # Datetimes and floats both stringify stably.
            return f"size:{size}:mtime:{value}"
    return f"size:{size}"


def token_fields(token: str) -> dict[str, str]:
    """Return the ``info()`` fields that :func:`version_token` made ``token`` of.

    An info dict built from a stored version (no origin request) carries
    these, so ``version_token`` of it gives the same token as the origin's
    own ``info()`` did, and code that keys chunks by it finds them.
    """
    name, sep, value = token.partition(":")
    if sep and name in _TOKEN_FIELDS:
        return {name: value}
    if name == "size":
        _, sep, mtime = value.partition(":mtime:")
        if sep:
            return {"mtime": mtime}
    return {}


@dataclass(frozen=True, slots=True, eq=False)
class FileVersion:
    """One version of one origin file.

    Parameters
    ----------
    protocol
        The target filesystem's protocol, e.g. ``"http"`` or ``"s3"``.
    path
        The file's path as the target filesystem names it.
    size
        The file's size in bytes.
    token
        The version token (see :func:`version_token`).
    """

    protocol: str
    path: str
    size: int
    token: str

    def __eq__(self, other: object) -> bool:
        if self is other:  # the common case on the hot path
            return True
        if type(other) is not FileVersion:
            return NotImplemented
        return (
            self.path == other.path
            and self.token == other.token
            and self.size == other.size
            and self.protocol == other.protocol
        )

    def __hash__(self) -> int:
        return hash((self.protocol, self.path, self.size, self.token))

    def key(self, chunk_size: int, index: int) -> ChunkKey:
        """Return the key of chunk ``index`` of this version."""
        return ChunkKey(self, chunk_size, index)

    def chunk_count(self, chunk_size: int) -> int:
        """Return the number of chunks this file has at ``chunk_size``."""
        return -(-self.size // chunk_size)


class ChunkKey:
    """The name of one chunk of one version of one file.

    Keys are immutable, hashable values. :attr:`digest`, computed once when
    the key is made, names the chunk on disk (so no origin name ever becomes
    a path) and is what the tiers index by: a string's hash is cached, which
    keeps the hot lookup in C.

    Parameters
    ----------
    version
        The file version the chunk belongs to.
    chunk_size
        The chunk size the file is cut by.
    index
        The chunk's position in the file.
    """

    __slots__ = ("chunk_size", "digest", "index", "version")

    version: FileVersion
    chunk_size: int
    index: int
    digest: str

    def __init__(self, version: FileVersion, chunk_size: int, index: int) -> None:
        text = "\0".join(
            (version.protocol, version.path, version.token, str(chunk_size), str(index))
        )
        setattr_ = object.__setattr__
        setattr_(self, "version", version)
        setattr_(self, "chunk_size", chunk_size)
        setattr_(self, "index", index)
        setattr_(
            self, "digest", hashlib.blake2b(text.encode(), digest_size=20).hexdigest()
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ChunkKey is immutable (tried to set {name})")

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not ChunkKey:
            return NotImplemented
        return self.digest == other.digest

    def __repr__(self) -> str:
        return (
            f"ChunkKey(version={self.version!r}, chunk_size={self.chunk_size}, "
            f"index={self.index})"
        )

    def __reduce__(self) -> tuple[type[ChunkKey], tuple[FileVersion, int, int]]:
        return ChunkKey, (self.version, self.chunk_size, self.index)

    @property
    def start(self) -> int:
        """Offset of the chunk's first byte in the file."""
        return self.index * self.chunk_size

    @property
    def stop(self) -> int:
        """Offset one past the chunk's last byte in the file."""
        return min(self.start + self.chunk_size, self.version.size)

    @property
    def length(self) -> int:
        """Number of bytes in the chunk (the last chunk may be short)."""
        return self.stop - self.start


# -- spans: byte ranges of a file as chunks ------------------------------------


def clip(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """Return ``[start, end)`` of a file of ``size`` bytes as offsets in it.

    ``None`` means the file's start or end; a negative value counts from the
    end (as fsspec's ``cat_file``); the result lies within ``[0, size]``.
    """
    start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
    end = size if end is None else (max(size + end, 0) if end < 0 else end)
    return min(start, size), min(end, size)


def span_keys(
    version: FileVersion, chunk_size: int, start: int, stop: int
) -> list[ChunkKey]:
    """Return the keys of the chunks that hold bytes ``[start, stop)``.

    ``stop`` must be greater than ``start``.
    """
    cs = chunk_size
    return [ChunkKey(version, cs, i) for i in range(start // cs, (stop - 1) // cs + 1)]


def assemble(
    keys: Sequence[ChunkKey], views: Sequence[memoryview], start: int, stop: int
) -> bytes:
    """Return bytes ``[start, stop)`` of chunks ``keys`` as one ``bytes``.

    ``views`` are the chunks' bytes; this is the one copy a ``cat`` makes.
    """
    if stop <= start:
        return b""
    parts = [
        view[max(start, k.start) - k.start : min(stop, k.stop) - k.start]
        for k, view in zip(keys, views, strict=True)
    ]
    return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
