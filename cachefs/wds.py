"""webdataset reads ``cachefs::`` URLs once cachefs is imported.

webdataset opens shards with its own ``gopen``, which picks a handler by URL
scheme and knows nothing of fsspec chains: ``cachefs::https://…`` is an
unknown scheme (an error, or, under ``handler=warn_and_continue``, a shard
silently skipped). Importing cachefs registers :func:`gopen_cachefs` for the
``cachefs`` scheme in ``webdataset.gopen.gopen_schemes`` — at once if
webdataset is already imported, else the moment it is (an import hook), so
cachefs never imports webdataset itself. DataLoader workers get it either
way: forked ones inherit it, spawned ones re-run the script's imports.

The file is opened with :func:`fsspec.open`, so the cache is configured the
fsspec way (``FSSPEC_CACHEFS_*`` variables, ``~/.config/fsspec``) and every
shard of a process goes through one cache instance.

webdataset splits a URL *string* on ``::`` (its syntax for several shard
lists), so ``WebDataset("cachefs::https://host/a.tar")`` would become a
local file ``cachefs`` and an uncached ``https`` shard, fetched again every
epoch. The same hook wraps ``webdataset.shardlists.expand_urls`` so that such
a string fails at once with a :class:`ValueError` that says to pass a list.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import IO, Any

import fsspec

__all__ = ["gopen_cachefs", "install", "register"]

_MODULE = "webdataset.gopen"
_SHARDLISTS = "webdataset.shardlists"


def gopen_cachefs(
    url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any
) -> IO[bytes]:
    """Open a ``cachefs::`` URL for webdataset (its ``gopen`` handler signature).

    Raises
    ------
    ValueError
        For a mode other than ``"rb"``: cachefs caches reads.
    """
    if mode != "rb":
        raise ValueError(
            f"cachefs URLs open for reading only (mode='rb'), got {mode!r}"
        )
    handle: IO[bytes] = fsspec.open(url, mode).open()
    return handle


def register(gopen: ModuleType) -> None:
    """Add :func:`gopen_cachefs` to a ``webdataset.gopen`` module's schemes.

    Also guards ``webdataset.shardlists.expand_urls`` against a single
    ``cachefs::`` string (see the module's docstring).
    """
    schemes = getattr(gopen, "gopen_schemes", None)
    if isinstance(schemes, dict):
        schemes.setdefault("cachefs", gopen_cachefs)
    shardlists = sys.modules.get(_SHARDLISTS)
    if shardlists is None:
        with contextlib.suppress(ImportError):
            shardlists = importlib.import_module(_SHARDLISTS)
    if shardlists is not None:
        guard_expand_urls(shardlists)


def guard_expand_urls(shardlists: ModuleType) -> None:
    """Make ``shardlists.expand_urls`` refuse one ``cachefs::`` string."""
    expand = getattr(shardlists, "expand_urls", None)
    if expand is None or getattr(expand, "_cachefs_guard", False):
        return

    def expand_urls(urls: Any) -> Any:
        if isinstance(urls, str) and "cachefs::" in urls:
            raise ValueError(
                f"webdataset splits a URL string on '::', so {urls!r} would be "
                "read as a local file 'cachefs' plus an uncached shard; pass "
                f"a list instead: WebDataset([{urls!r}])"
            )
        return expand(urls)

    expand_urls._cachefs_guard = True  # type: ignore[attr-defined]
    expand_urls.__doc__ = expand.__doc__
    shardlists.__dict__["expand_urls"] = expand_urls


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Registers the handler right after ``webdataset.gopen`` is executed."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            register(module)

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if webdataset is imported, else when it is (idempotent)."""
    module = sys.modules.get(_MODULE)
    if module is not None:
        register(module)
        return
    if not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
