"""Write pass-through: writes go to the target, then the cache forgets.

:class:`WriteThroughFile` is a target file whose close invalidates the cache;
:class:`WritePassThrough` holds the fsspec write methods of the filesystem.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback

from cachefs.bridge import on_own_loop

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from cachefs.fetch import Fetcher
    from cachefs.listings import ListingCache

__all__ = ["WritePassThrough", "WriteThroughFile"]


class WriteThroughFile(io.RawIOBase):
    """Wraps a file opened for writing on the target.

    Writes go straight to the target's file; closing it commits there and
    then calls ``on_close`` so the cache forgets the old content.

    Parameters
    ----------
    inner
        The target filesystem's file object.
    on_close
        Called once, after the inner file is closed (also on failure).
    """

    def __init__(self, inner: Any, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close
        self.mode = getattr(inner, "mode", "wb")
        self.path = getattr(inner, "path", getattr(inner, "name", ""))

    @property
    def name(self) -> str:
        """The file's path on the target."""
        return str(self.path)

    def writable(self) -> bool:  # noqa: D102
        return True

    def write(self, data: Buffer) -> int:
        """Write ``data`` to the target file; return the bytes written."""
        written = self._inner.write(data)
        return memoryview(data).nbytes if written is None else int(written)

    def flush(self) -> None:  # noqa: D102
        # IOBase.close() flushes after the inner file is already closed.
        if not self.closed and not getattr(self._inner, "closed", False):
            self._inner.flush()

    def tell(self) -> int:  # noqa: D102
        return int(self._inner.tell())

    def close(self) -> None:
        """Close (commit) the target file, then invalidate the cache."""
        if self.closed:
            return
        try:
            self._inner.close()
        finally:
            super().close()
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback()

    def discard(self) -> None:
        """Abandon the write where the target supports it, then close."""
        if hasattr(self._inner, "discard"):
            self._inner.discard()
        self.close()


class WritePassThrough:
    """The write methods of the fsspec face: pass through, then invalidate.

    Mixed into :class:`~cachefs.CacheFileSystem` ahead of fsspec's classes;
    each call goes to the target through the fetcher (so it is bounded and
    its errors mapped), and the cache then forgets the paths it touched.
    """

    if TYPE_CHECKING:  # provided by the filesystem this is mixed into
        fs: Any
        fetcher: Fetcher
        listings: ListingCache
        asynchronous: bool

        @property
        def loop(self) -> asyncio.AbstractEventLoop: ...  # noqa: D102

        def _target_path(self, path: str) -> str: ...

        def _strip_protocol(self, path: Any) -> Any: ...

        def invalidate(self, path: str, recursive: bool = False) -> None: ...  # noqa: D102

    @on_own_loop
    async def _pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        tpath = self._target_path(path)
        try:
            await self.fetcher.call("pipe_file", tpath, value, **kwargs)
        finally:
            self.invalidate(tpath)

    @on_own_loop
    async def _put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        **kwargs: Any,
    ) -> None:
        tpath = self._target_path(rpath)
        try:
            await self.fetcher.call(
                "put_file", lpath, tpath, callback=callback, **kwargs
            )
        finally:
            self.invalidate(tpath)

    @on_own_loop
    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        tpath = self._target_path(path2)
        try:
            await self.fetcher.call(
                "cp_file", self._target_path(path1), tpath, **kwargs
            )
        finally:
            self.invalidate(tpath)

    @on_own_loop
    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        tpath = self._target_path(path)
        try:
            await self.fetcher.call("rm_file", tpath, **kwargs)
        finally:
            self.invalidate(tpath)

    @on_own_loop
    async def _rm(
        self,
        path: str | list[str],
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        paths = path if isinstance(path, list) else [path]
        tpaths = [self._target_path(p) for p in paths]
        try:
            await self.fetcher.call(
                "rm", tpaths, recursive=recursive, maxdepth=maxdepth
            )
        finally:
            for tpath in tpaths:
                self.invalidate(tpath, recursive=True)

    @on_own_loop
    async def _mkdir(
        self, path: str, create_parents: bool = True, **kwargs: Any
    ) -> None:
        self.listings.clear()
        await self.fetcher.call(
            "mkdir", self._target_path(path), create_parents=create_parents, **kwargs
        )

    @on_own_loop
    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.listings.clear()
        await self.fetcher.call("makedirs", self._target_path(path), exist_ok=exist_ok)

    @on_own_loop
    async def _rmdir(self, path: str) -> None:
        self.invalidate(path, recursive=True)
        await self.fetcher.call("rmdir", self._target_path(path))

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any
    ) -> None:
        """Move on the target, then invalidate both sides."""
        try:
            self.fs.mv(
                self._strip_protocol(path1),
                self._strip_protocol(path2),
                recursive=recursive,
                **kwargs,
            )
        finally:
            for p in (path1, path2):
                for one in p if isinstance(p, list) else [p]:
                    self.invalidate(one, recursive=True)
