"""Origin errors mapped to builtin exceptions, at one boundary.

The fetcher calls :func:`classify` on whatever the target raised. The table
below decides which builtin the reader sees and whether a retry may help;
nothing here looks at an error message's text.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

__all__ = [
    "ErrorClass",
    "OriginResponseError",
    "ShortReadError",
    "StaleVersionError",
    "classify",
    "is_absent",
    "status_class",
]


class ShortReadError(ConnectionError):
    """The origin returned fewer bytes than the range asked for."""


class OriginResponseError(OSError):
    """The origin answered something other than what was asked.

    A range that starts or ends elsewhere, a body in an encoding that was not
    asked for, a response with no usable size: its bytes are never served nor
    cached, and asking again would get the same answer.
    """


class StaleVersionError(OSError):
    """The origin file changed: its bytes no longer match the version read.

    Raised instead of ever mixing two versions' bytes in one read.
    """


@dataclass(frozen=True, slots=True)
class ErrorClass:
    """How to surface one origin failure.

    Attributes
    ----------
    builtin
        The builtin exception type the reader gets.
    transient
        Whether retrying the same request may succeed.
    """

    builtin: type[OSError]
    transient: bool


# HTTP statuses (aiohttp's ClientResponseError, as raised by fsspec's http).
_STATUS: dict[int, ErrorClass] = {
    401: ErrorClass(PermissionError, False),
    403: ErrorClass(PermissionError, False),
    404: ErrorClass(FileNotFoundError, False),
    408: ErrorClass(TimeoutError, True),
    429: ErrorClass(ConnectionError, True),
}
_SERVER_ERROR = ErrorClass(ConnectionError, True)
_CLIENT_ERROR = ErrorClass(OSError, False)

# Exception types, most specific first.
_TYPES: tuple[tuple[type[BaseException], ErrorClass], ...] = (
    (StaleVersionError, ErrorClass(StaleVersionError, False)),
    (OriginResponseError, ErrorClass(OriginResponseError, False)),
    (FileNotFoundError, ErrorClass(FileNotFoundError, False)),
    (PermissionError, ErrorClass(PermissionError, False)),
    (IsADirectoryError, ErrorClass(IsADirectoryError, False)),
    (TimeoutError, ErrorClass(TimeoutError, True)),
    (asyncio.TimeoutError, ErrorClass(TimeoutError, True)),
    (aiohttp.ServerTimeoutError, ErrorClass(TimeoutError, True)),
    (aiohttp.ClientPayloadError, ErrorClass(ConnectionError, True)),
    (aiohttp.ClientConnectionError, ErrorClass(ConnectionError, True)),
    (ConnectionError, ErrorClass(ConnectionError, True)),
    (OSError, ErrorClass(OSError, False)),
)


def status_class(status: int) -> ErrorClass:
    """Return how an HTTP error status is surfaced and retried."""
    if status in _STATUS:
        return _STATUS[status]
    return _SERVER_ERROR if status >= 500 else _CLIENT_ERROR


def classify(exc: BaseException) -> ErrorClass:
    """Return how the origin failure ``exc`` is surfaced and retried."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return status_class(exc.status)
    for kind, outcome in _TYPES:
        if isinstance(exc, kind):
            return outcome
    return _CLIENT_ERROR


def is_absent(exc: BaseException) -> bool:
    """Whether ``exc`` says the origin has no such file (not that it is down).

    fsspec's http raises ``FileNotFoundError`` for an unreachable host too,
    with the connection error as its cause: only a ``FileNotFoundError``
    whose causes are all "not found" answers (none, a 404 or 410, another
    ``FileNotFoundError``) is a miss worth remembering.
    """
    if not isinstance(exc, FileNotFoundError):
        return False
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, aiohttp.ClientResponseError):
            return cause.status in (404, 410)
        if not isinstance(cause, FileNotFoundError) and isinstance(
            cause, OSError | aiohttp.ClientError | asyncio.TimeoutError
        ):
            return False
        cause = cause.__cause__ or cause.__context__
    return True
