"""The path and listing face of ``CacheFileSystem``: names as the target has them.

Every path call (``glob``, ``find``, ``ls``, ``walk``, ``expand_path``,
``cp``/``get``, ``open_files``) takes paths the way the target does — its
own URLs (``s3://bucket/key``, ``file:///data``), its bare paths
(``bucket/key``), or either behind ``cachefs::`` / ``cachefs://`` — and
returns what the target's own call returns. fsspec's generic ``glob`` and
``expand_path`` compare the results of ``find`` with the stripped pattern,
so an instance's ``_strip_protocol`` strips the target's protocol as well.

Listings (``ls``, ``find``, and which paths are directories) are cached
under the metadata TTL rules, on disk too (:mod:`cachefs.listings`).
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractFileSystem
from fsspec.utils import stringify_path

from cachefs.bridge import on_own_loop
from cachefs.versions import info_mtime

if TYPE_CHECKING:
    from cachefs.fetch import Fetcher
    from cachefs.listings import ListingCache
    from cachefs.versions import VersionResolver

__all__ = ["PREFIXES", "NamespaceFace", "strip_cachefs"]

PREFIXES = ("cachefs::", "cachefs://")
# ``cachefs://<protocol>://...``: the URL names its own target.
_INNER = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def strip_cachefs(path: Any) -> Any:
    """Return ``path`` (or each of a list) without a ``cachefs`` prefix."""
    if isinstance(path, list):
        return [strip_cachefs(p) for p in path]
    path = stringify_path(path)
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _params(kwargs: dict[str, Any]) -> str | None:
    """Return the key part of a listing call's arguments; ``None``: uncached.

    Arguments other than strings, numbers, booleans and ``None`` (a callback,
    ``refresh=True``) make a call that is not cached.
    """
    if kwargs.get("refresh"):
        return None
    for value in kwargs.values():
        if value is not None and not isinstance(value, str | int | float | bool):
            return None
    return json.dumps(kwargs, sort_keys=True, separators=(",", ":"))


class _StripProtocol:
    """``_strip_protocol`` of the class and of each instance.

    On the class (fsspec's URL chaining calls it there) it strips the
    ``cachefs`` prefixes; on an instance, the target's protocol too, so a
    pattern and the target's results have one form.
    """

    def __get__(self, obj: Any, owner: type) -> Callable[[Any], Any]:
        if obj is None or vars(obj).get("fs") is None:
            return strip_cachefs
        target: AbstractFileSystem = obj.fs

        def strip(path: Any) -> Any:
            if isinstance(path, list):
                return [strip(p) for p in path]
            return target._strip_protocol(strip_cachefs(path))

        return strip


class NamespaceFace:
    """Paths, listings and directory facts of a cache over one target.

    A mixin of :class:`~cachefs.filesystem.CacheFileSystem`; it needs the
    attributes that class sets: ``fs``, ``fetcher``, ``resolver``,
    ``listings``, ``target_protocol`` and ``asynchronous``/``loop``.
    """

    fs: AbstractFileSystem
    fetcher: Fetcher
    resolver: VersionResolver
    listings: ListingCache
    target_protocol: str
    asynchronous: bool

    _strip_protocol = _StripProtocol()

    @classmethod
    def _get_kwargs_from_urls(cls, path: str) -> dict[str, Any]:
        # ``cachefs://s3://bucket/key`` (what unstrip_protocol returns) opens
        # with fsspec.open, no target_protocol given.
        match = _INNER.match(str(path).removeprefix("cachefs://"))
        if str(path).startswith("cachefs://") and match:
            return {"target_protocol": match.group(1)}
        return {}

    def _target_path(self, path: str) -> str:
        return str(self.fs._strip_protocol(strip_cachefs(path)))

    def unstrip_protocol(self, name: str) -> str:
        """Return ``cachefs://<target URL>`` for ``name``.

        The one form that both fsspec (``fsspec.open`` learns the target from
        it) and DuckDB (which routes a path to a registered filesystem by the
        ``cachefs://`` prefix) open again.
        """
        return "cachefs://" + str(self.fs.unstrip_protocol(self._target_path(name)))

    # -- listings ------------------------------------------------------------

    @on_own_loop
    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return await self.resolver.info(self._target_path(path))

    @on_own_loop
    async def _isdir(self, path: str) -> bool:
        # The target decides what a directory is (fsspec's http: a page that
        # lists links, whatever its info says); what it decided is recorded,
        # and a file this cache knows is not one: no origin request.
        tpath = self._target_path(path)
        resolver = self.resolver
        if resolver.is_directory(tpath):
            return True
        if resolver.known(tpath) is not None:
            return False
        cached = resolver.infos.get(tpath)
        if cached is not None and cached.get("type") == "directory":
            return True
        if self._listing("ls", tpath) is not None:
            return True  # a listing was cached, of something that is no file
        isdir = bool(await self.fetcher.metadata("isdir", tpath))
        if isdir:
            resolver.note_directory(tpath)
        return isdir

    def _listing(self, kind: str, tpath: str, params: str = "") -> Any:
        return self.listings.get(self.target_protocol, kind, tpath, params)

    @on_own_loop
    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        tpath = self._target_path(path)
        params = _params(kwargs)
        listing = None if params is None else self._listing("ls", tpath, params)
        if listing is None:
            listing = await self.fetcher.metadata("ls", tpath, detail=True, **kwargs)
            if params is not None:
                self.listings.put(self.target_protocol, "ls", tpath, listing, params)
            self._learn(listing)
        if detail:
            return [dict(e) for e in listing]
        return [e["name"] for e in listing]

    def _learn(self, entries: list[dict[str, Any]]) -> None:
        infos = self.resolver.infos
        for entry in entries:
            # http listings carry no sizes: such entries are no info.
            if entry.get("size") is not None or entry.get("type") == "directory":
                infos.put(entry["name"], entry)

    @on_own_loop
    async def _find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        **kwargs: Any,
    ) -> Any:
        detail = bool(kwargs.pop("detail", False))
        tpath = self._target_path(path)
        # glob passes prefix= (the stem before the first wildcard): a key part.
        params = _params({**kwargs, "maxdepth": maxdepth, "withdirs": withdirs})
        entries = None if params is None else self._listing("find", tpath, params)
        if entries is None:
            found = await self.fetcher.metadata(
                "find",
                tpath,
                maxdepth=maxdepth,
                withdirs=withdirs,
                detail=True,
                **kwargs,
            )
            entries = [dict(info, name=name) for name, info in found.items()]
            if params is not None:
                self.listings.put(self.target_protocol, "find", tpath, entries, params)
            self._learn(entries)
        if detail:
            return {e["name"]: e for e in entries}
        return [e["name"] for e in entries]

    def modified(self, path: str) -> datetime.datetime:
        """Return the origin's modification time of ``path`` (UTC).

        Answered from the cached metadata when it is fresh (no request).

        Raises
        ------
        NotImplementedError
            If the origin reports no modification time for ``path``.
        """
        info: dict[str, Any] = self.info(path)  # type: ignore[attr-defined]
        stamp = info_mtime(info)
        if stamp is None:
            raise NotImplementedError(
                f"the {self.target_protocol} origin reports no modification time "
                f"for {path}"
            )
        return datetime.datetime.fromtimestamp(stamp, tz=datetime.UTC)
