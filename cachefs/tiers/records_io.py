"""Small checksummed JSON records, one a file, in a directory the cache owns.

The version records (:mod:`cachefs.metadata`) and the listing records
(:mod:`cachefs.listings`) share this form and these file rules:

- a record is canonical JSON (sorted keys, no NaN) with a ``crc32c`` field
  over the rest (:func:`seal`, :func:`load_json`, :func:`check_crc`);
- the directory is opened owner-only and never through a symlink
  (:class:`RecordDir`);
- a record is written to a temporary name and renamed into place, so a
  reader sees a whole record or none (:func:`write_record`);
- a record is opened without following symlinks and read only if it is a
  regular file of ours (or trusted) no larger than its limit
  (:func:`read_record`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import crc32c

from cachefs.tiers.dirs import NOFOLLOW, open_dir

__all__ = [
    "RecordDir",
    "bad_time",
    "canonical",
    "check_crc",
    "load_json",
    "read_record",
    "seal",
    "write_record",
]

log = logging.getLogger(__name__)

# A record stamped further ahead than this would never expire: damage.
_FUTURE_SLACK = 86400.0


def canonical(body: dict[str, Any]) -> bytes:
    """Return the canonical JSON bytes of ``body`` (what the CRC32C covers)."""
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode()


def seal(body: dict[str, Any]) -> bytes:
    """Add the ``crc32c`` field to ``body`` and return its stored form."""
    body["crc32c"] = crc32c.crc32c(canonical(body))
    return canonical(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"holds {name}")


def load_json(raw: bytes, limit: int) -> Any:
    """Parse a stored record of at most ``limit`` bytes.

    Raises
    ------
    ValueError
        If it is too large or not JSON (NaN and infinities count as not
        JSON); the message says how.
    """
    if len(raw) > limit:
        raise ValueError("is too large")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("is not JSON") from None
    except ValueError as exc:
        raise ValueError(f"is not JSON ({exc})") from None


def check_crc(body: dict[str, Any]) -> None:
    """Remove ``body``'s ``crc32c`` field and verify it against the rest.

    Raises
    ------
    ValueError
        If the field is missing or does not match.
    """
    crc = body.pop("crc32c", None)
    if type(crc) is not int or crc32c.crc32c(canonical(body)) != crc:
        raise ValueError("failed its CRC32C check")


def bad_time(stamp: Any) -> bool:
    """Return whether ``stamp`` is not a plausible time since the epoch."""
    return (
        type(stamp) not in (int, float)
        or not math.isfinite(stamp)
        or not 0 <= stamp <= time.time() + _FUTURE_SLACK
    )


class RecordDir:
    """The directory of one kind of record, opened per use.

    Parameters
    ----------
    root
        The directory (made owner-only by the cache that owns it).
    what
        What its records are, for the one warning logged when the
        directory cannot be used (``"version records"``).
    """

    def __init__(self, root: Path, what: str) -> None:
        self.root = root
        self.what = what
        self._unusable_logged = False

    @contextlib.contextmanager
    def open(self) -> Iterator[int | None]:
        """Open the directory, never through a symlink; ``None`` if unusable.

        The records are an optimisation: an unusable directory is logged
        once and the caller goes on without it.
        """
        try:
            dfd = open_dir(self.root)
        except OSError as exc:
            if not self._unusable_logged:
                self._unusable_logged = True
                log.warning(
                    "cachefs: %s in %s are not used: %s",
                    self.what,
                    self.root,
                    exc.strerror or exc,
                )
            yield None
            return
        try:
            yield dfd
        finally:
            os.close(dfd)


def write_record(dfd: int, name: str, data: bytes, *, tmp_prefix: str = "") -> None:
    """Write ``data`` as record ``name`` in ``dfd``, whole or not at all.

    Written to a fresh temporary name (``tmp_prefix`` + ``name`` + a unique
    tail) and renamed into place. A failure leaves nothing behind and is
    not raised: a record is an optimisation, never worth failing a call for.
    """
    tmp = f"{tmp_prefix}{name}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
        fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)


def read_record(
    dfd: int, name: str, *, limit: int, trust: bool
) -> tuple[str, bytes] | None:
    """Read record ``name`` in ``dfd``, never through a symlink.

    Returns
    -------
    tuple of (str, bytes) or None
        ``None`` if there is no such record; else why the file is unusable
        (``""`` when it is usable) and its bytes (at most ``limit + 1``;
        none when it is unusable). Unusable: it cannot be opened, is not a
        regular file, is another user's (unless ``trust``) or is larger
        than ``limit``.
    """
    try:
        fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be opened ({exc.strerror})", b""
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file", b""
        if st.st_uid != os.geteuid() and not trust:
            return f"is owned by uid {st.st_uid}, not by you", b""
        if st.st_size > limit:
            return "is too large", b""
        return "", fh.read(limit + 1)
