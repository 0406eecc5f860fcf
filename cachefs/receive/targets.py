"""Which origin requests the direct client sends, and with which fields.

The direct client (:mod:`cachefs.receive.ranged`) reproduces a request of
fsspec's ``HTTPFileSystem`` only when it can do so faithfully: the URL is
``http`` or ``https`` without credentials in it, and the target's options
are among those it understands — ``headers``, ``auth`` (an
``aiohttp.BasicAuth``), ``ssl`` and ``timeout``, in the request options or
in ``client_kwargs``. Anything else (a custom ``get_client``, cookies,
proxies through ``trust_env``, another auth object) returns ``None``: those
reads keep going through aiohttp, as before.

TLS: ``ssl`` may be an :class:`ssl.SSLContext` (used as given), ``False``
(no certificate check, as aiohttp reads it) or absent/``True`` (the
default context: the system's trust store, which honours ``SSL_CERT_FILE``
and ``SSL_CERT_DIR``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from cachefs._version import __version__
from cachefs.receive.pool import Endpoint
from cachefs.receive.ranged import DirectGet

__all__ = ["http_get", "tls_context"]

_UNDERSTOOD = frozenset({"headers", "auth", "ssl", "timeout"})
_AGENT = f"cachefs/{__version__}"
_CONTEXTS: dict[bool, ssl.SSLContext] = {}


def tls_context(option: Any) -> ssl.SSLContext | None:
    """Return the SSL context that aiohttp's ``ssl=`` option means.

    ``None`` if the option is one this client does not reproduce.
    """
    if isinstance(option, ssl.SSLContext):
        return option
    if option is None or option is True or option is False:
        verify = option is not False
        if verify not in _CONTEXTS:
            ctx = ssl.create_default_context()
            if not verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            _CONTEXTS[verify] = ctx
        return _CONTEXTS[verify]
    return None


def _fields(options: Mapping[str, Any], into: dict[str, tuple[str, str]]) -> bool:
    """Add the header fields ``options`` asks for; ``False`` if not all known."""
    if not set(options) <= _UNDERSTOOD:
        return False
    headers = options.get("headers") or {}
    if not isinstance(headers, Mapping):
        return False
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return False
        into[name.lower()] = (name, value)
    auth = options.get("auth")
    if auth is not None:
        import aiohttp

        if type(auth) is not aiohttp.BasicAuth:
            return False
        into.setdefault("authorization", ("Authorization", auth.encode()))
    return True


def http_get(target: Any, url: str) -> DirectGet | None:
    """Return the direct GET of ``url`` for fsspec HTTP ``target``, or ``None``.

    ``None`` means: read it with fsspec's own client.
    """
    from fsspec.implementations.http import HTTPFileSystem, get_client

    if not isinstance(target, HTTPFileSystem) or target.get_client is not get_client:
        return None
    parsed = target.encode_url(url)
    scheme = parsed.scheme
    if scheme not in ("http", "https") or parsed.user or not parsed.raw_host:
        return None
    fields: dict[str, tuple[str, str]] = {}
    client, request = target.client_kwargs, target.kwargs
    if not (_fields(client, fields) and _fields(request, fields)):
        return None
    tls = None
    if scheme == "https":
        tls = tls_context(request.get("ssl", client.get("ssl")))
        if tls is None:
            return None
    host = parsed.raw_host
    authority = f"[{host}]" if ":" in host else host
    if not parsed.is_default_port():
        authority += f":{parsed.port}"
    first = [("Host", authority)]
    first += [] if "user-agent" in fields else [("User-Agent", _AGENT)]
    first += [] if "accept" in fields else [("Accept", "*/*")]
    rest = tuple(v for k, v in fields.items() if k != "host")
    port = parsed.port or (443 if scheme == "https" else 80)
    return DirectGet(
        Endpoint(host, port, tls),
        parsed.raw_path_qs or "/",
        tuple(first) + rest,
        url,
    )
