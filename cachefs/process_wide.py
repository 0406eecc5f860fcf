"""Cache a protocol for the whole process, for libraries that build URLs.

Some libraries cannot be handed a ``cachefs::`` URL: Hugging Face
``datasets`` rebuilds chained URLs in ``data_files`` wrongly, polars rejects
them. :func:`cache_protocols` (opt-in) replaces fsspec's class for a protocol
in fsspec's registry with a cache over the original class, so every
``fsspec.filesystem("https")``, ``fsspec.open("s3://…")`` and
``url_to_fs("https://…")`` in the process reads through cachefs::

    from cachefs.process_wide import cache_protocols
    cache_protocols("http", "https", cache_dir="/nvme/cachefs")

Paths keep the target's form (``bucket/key`` for s3, the whole URL for
http), so code that compares or rebuilds URLs sees what it would without
the cache. :func:`uncache_protocols` puts the original classes back.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

from cachefs.filesystem import CacheFileSystem

__all__ = ["cache_protocols", "cached_protocols", "uncache_protocols"]

# The original class of a wrapped protocol stays reachable under this prefix,
# so the cache builds its target through fsspec without finding itself.
_ORIGIN = "cachefs-origin-"
# Keywords that configure the cache's face, not the target's.
_CACHE_FACE = ("asynchronous", "loop", "skip_instance_cache")

_lock = threading.Lock()
_originals: dict[str, type[AbstractFileSystem]] = {}


class ProcessWideCache(CacheFileSystem):
    """Base of the classes :func:`cache_protocols` registers.

    Built with the target's own keywords (``anon=True``, ``endpoint_url=…``),
    as fsspec builds the class it finds for a protocol; the cache options
    are the ones given to :func:`cache_protocols`.
    """

    origin: ClassVar[type[AbstractFileSystem]]
    origin_protocol: ClassVar[str]
    cache_options: ClassVar[dict[str, Any]]

    def __init__(self, *args: Any, **target_options: Any) -> None:
        face = {k: target_options.pop(k) for k in _CACHE_FACE if k in target_options}
        if args:
            raise TypeError(
                f"{self.origin_protocol!r} is cached process-wide: pass its options "
                "by keyword"
            )
        super().__init__(
            target_protocol=_ORIGIN + self.origin_protocol,
            target_options=target_options,
            **self.cache_options,
            **face,
        )

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        stripped = CacheFileSystem._strip_protocol(path)
        if isinstance(stripped, list):
            return [cls.origin._strip_protocol(p) for p in stripped]
        return cls.origin._strip_protocol(stripped)

    def unstrip_protocol(self, name: str) -> str:
        """Return the target's URL for ``name`` (no ``cachefs::`` prefix)."""
        return str(self.fs.unstrip_protocol(self._target_path(name)))


def cache_protocols(*protocols: str, **cache_options: Any) -> None:
    """Read every ``protocols`` URL in this process through one cache.

    Parameters
    ----------
    *protocols
        fsspec protocol names, e.g. ``"http"``, ``"https"``, ``"s3"``.
    **cache_options
        :class:`~cachefs.CacheFileSystem` keywords (``cache_dir``,
        ``disk_limit``, ``chunk_size``, ...), not ``target_protocol``,
        ``target_options`` or ``fs``. Calling again for a protocol replaces
        its options.

    Raises
    ------
    ValueError
        For no protocol, a protocol fsspec does not know, ``cachefs`` itself,
        or a keyword that names the target.
    """
    if not protocols:
        raise ValueError("cache_protocols needs at least one protocol, e.g. 'https'")
    for key in ("target_protocol", "target_options", "fs"):
        if key in cache_options:
            raise ValueError(
                f"cache_protocols: {key}= is not an option here; the protocol "
                "is the target, its options come from each URL's caller"
            )
    with _lock:
        for protocol in protocols:
            if protocol == "cachefs" or protocol.startswith(_ORIGIN):
                raise ValueError(f"cache_protocols: cannot cache {protocol!r}")
            original = _originals.get(protocol)
            if original is None:
                try:
                    original = fsspec.get_filesystem_class(protocol)
                except (ValueError, ImportError) as exc:
                    raise ValueError(f"cache_protocols: {protocol!r}: {exc}") from exc
            fsspec.register_implementation(_ORIGIN + protocol, original, clobber=True)
            wrapper = type(
                f"ProcessWideCache_{protocol}",
                (ProcessWideCache,),
                {
                    "protocol": original.protocol,
                    "origin": original,
                    "origin_protocol": protocol,
                    "cache_options": dict(cache_options),
                    "__module__": __name__,
                },
            )
            fsspec.register_implementation(protocol, wrapper, clobber=True)
            _originals[protocol] = original


def uncache_protocols(*protocols: str) -> None:
    """Give ``protocols`` (all cached ones by default) their own classes back."""
    with _lock:
        for protocol in protocols or tuple(_originals):
            original = _originals.pop(protocol, None)
            if original is not None:
                fsspec.register_implementation(protocol, original, clobber=True)


def cached_protocols() -> list[str]:
    """Return the protocols :func:`cache_protocols` wraps now."""
    with _lock:
        return sorted(_originals)
