"""The one error of the shard readers."""

from __future__ import annotations

__all__ = ["ShardFormatError"]


class ShardFormatError(ValueError):
    """A shard's bytes do not have the format it was read as.

    The message names the shard's URL and the byte offset of the problem;
    both are also attributes (``None`` when the error was rebuilt from its
    message alone, as a DataLoader does for an error raised in a worker).

    Parameters
    ----------
    message
        The whole message.
    url
        The shard's URL.
    offset
        Byte offset in the shard where the problem was found.
    """

    def __init__(
        self, message: str, *, url: str | None = None, offset: int | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        self.offset = offset

    @classmethod
    def at(cls, url: str, offset: int, reason: str) -> ShardFormatError:
        """Build the error for ``reason`` found at ``offset`` of ``url``."""
        return cls(f"{url}: {reason} (at offset {offset})", url=url, offset=offset)

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (str(self), self.url, self.offset)


def _rebuild(message: str, url: str | None, offset: int | None) -> ShardFormatError:
    return ShardFormatError(message, url=url, offset=offset)
