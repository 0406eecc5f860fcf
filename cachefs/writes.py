"""Write pass-through: a target file whose close invalidates the cache."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["WriteThroughFile"]


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
