"""Shard formats: index a shard, then read a range of its samples.

Two formats:

- ``"raw"``: the whole shard is one sample, or, with ``record_size``, the
  shard is a sequence of fixed-size records, one sample each;
- ``"tar"``: a WebDataset-style tar archive (see :mod:`cachefs.data.tar`).

A sample is a dict: ``"__key__"`` (str), ``"__url__"`` (the shard's URL as
listed) and one memoryview per field (``"data"`` for raw shards, the member
names' extensions for tar shards). Over a :class:`cachefs.CacheFileSystem`
each view points into the cached chunk that holds it — no copy — unless the
field spans chunks (then it is copied once). Views stay valid after the
cache evicts their chunk, and are read-only.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any

from cachefs.data.errors import ShardFormatError
from cachefs.data.index import IndexStore, ShardIndex
from cachefs.data.tar import TarReader

__all__ = ["FORMATS", "Sample", "ShardReader"]

#: The shard formats :class:`ShardReader` reads.
FORMATS = ("tar", "raw")

#: A sample: field name -> memoryview, plus ``"__key__"`` and ``"__url__"``.
Sample = dict[str, Any]


class ShardReader:
    """Indexes and reads shards of one format.

    Parameters
    ----------
    format
        ``"tar"`` or ``"raw"``.
    record_size
        For ``"raw"``: bytes per record, or ``None`` for one sample per
        shard. Not allowed with ``"tar"``.
    """

    def __init__(self, format: str = "tar", record_size: int | None = None) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        if record_size is not None:
            if isinstance(record_size, bool) or not isinstance(record_size, int):
                raise TypeError(
                    f"record_size must be an int or None, got {record_size!r}"
                )
            if record_size < 1:
                raise ValueError(f"record_size must be >= 1, got {record_size}")
            if format != "raw":
                raise ValueError("record_size is only used with format='raw'")
        self.format = format
        self.record_size = record_size

    # -- index ---------------------------------------------------------------

    def index(self, fs: Any, url: str, store: IndexStore | None = None) -> ShardIndex:
        """Count the samples of ``url`` (a tar shard: one pass over it).

        Raises
        ------
        ShardFormatError
            When the shard is not of this format.
        """
        if self.format == "raw":
            size = int(fs.size(url))
            rs = self.record_size
            if rs is None:
                return ShardIndex(1)
            if size % rs:
                raise ShardFormatError.at(
                    url,
                    size - size % rs,
                    f"shard size {size} is not a multiple of record_size={rs}",
                )
            return ShardIndex(size // rs)
        with fs.open(url, "rb") as f:
            version = getattr(f, "version", None)
            if store is not None and version is not None:
                known = store.get(version, "tar")
                if known is not None:
                    return known
            reader = TarReader(f, url)
            starts = [offset for offset, _, _ in reader.samples()]
            index = ShardIndex(len(starts), (*starts, reader.stopped_at))
            if store is not None and version is not None:
                store.put(version, "tar", index)
            return index

    def byte_range(
        self, index: ShardIndex, first: int, stop: int
    ) -> tuple[int, int | None]:
        """Return the bytes ``[start, end)`` that samples ``[first, stop)`` need.

        ``end`` is ``None`` for "to the end of the shard": a whole raw
        shard, or a tar shard whose sample offsets are unknown (a reader then
        skips from the start up to ``first``).
        """
        if self.format == "raw":
            rs = self.record_size
            return (0, None) if rs is None else (first * rs, stop * rs)
        if index.bounds is None:
            return 0, None
        return index.bounds[first], index.bounds[stop]

    # -- read ----------------------------------------------------------------

    def read(
        self,
        fs: Any,
        url: str,
        index: ShardIndex,
        first: int,
        stop: int,
        store: IndexStore | None = None,
        learned: Callable[[ShardIndex], None] | None = None,
    ) -> Iterator[Sample]:
        """Yield samples ``[first, stop)`` of ``url``, in shard order.

        For a tar shard whose sample offsets are unknown (``index`` has only
        its count), ``store`` supplies them when a reader in any process
        went through the whole shard before, and a read that goes through
        it now records them there; ``learned`` is handed the full index
        either way. A part that starts mid-shard then seeks to its first
        sample instead of reading every header (and so every chunk) before
        it again.

        Raises
        ------
        ShardFormatError
            When the shard is damaged, or holds another number of samples
            than ``index`` says.
        """
        if not 0 <= first <= stop <= index.samples:
            raise ValueError(
                f"sample range [{first}, {stop}) is outside {url}'s "
                f"{index.samples} samples"
            )
        if stop == first:
            return
        with fs.open(url, "rb") as f:
            if self.format == "raw":
                yield from self._read_raw(f, url, first, stop)
                return
            version = getattr(f, "version", None)
            if store is None or index.bounds is not None or version is None:
                yield from self._read_tar(
                    self._piece(fs, url, f, index, stop), url, index, first, stop
                )
                return
            if first > 0 or stop < index.samples:
                known = store.get(version, "tar")
                if known is not None and known.samples == index.samples:
                    if learned is not None:
                        learned(known)
                    yield from self._read_tar(
                        self._piece(fs, url, f, known, stop), url, known, first, stop
                    )
                    return

            def keep(found: ShardIndex) -> None:
                store.put(version, "tar", found)
                if learned is not None:
                    learned(found)

            yield from self._read_tar(f, url, index, first, stop, keep)

    @staticmethod
    def _piece(fs: Any, url: str, f: Any, index: ShardIndex, stop: int) -> Any:
        """Return what to read samples ``[..., stop)`` of a tar shard from.

        A part that ends inside a shard (another consumer reads the rest) is
        read with ``cat_file`` up to its last byte: the file object's
        readahead would fetch the other consumer's chunks too, which a full
        cache does not keep for it. Anything else reads the file object.
        """
        size = getattr(f, "size", None)
        if (
            index.bounds is None
            or stop >= index.samples
            or getattr(f, "read_view", None) is None
            or not isinstance(size, int)
        ):
            return f
        return _Piece(fs, url, size, index.bounds[stop])

    def _read_raw(self, f: Any, url: str, first: int, stop: int) -> Iterator[Sample]:
        read = getattr(f, "read_view", None)
        name = posixpath.basename(url.rstrip("/"))
        rs = self.record_size
        if rs is None:
            view = read(-1) if read is not None else memoryview(f.read())
            yield {"__key__": name, "__url__": url, "data": view}
            return
        f.seek(first * rs)
        for i in range(first, stop):
            view = read(rs) if read is not None else memoryview(f.read(rs))
            if len(view) != rs:
                raise ShardFormatError.at(
                    url, i * rs + len(view), f"truncated record {i}"
                )
            yield {"__key__": f"{name}/{i}", "__url__": url, "data": view}

    def _read_tar(
        self,
        f: Any,
        url: str,
        index: ShardIndex,
        first: int,
        stop: int,
        indexed: Callable[[ShardIndex], None] | None = None,
    ) -> Iterator[Sample]:
        reader = TarReader(f, url)
        expected = stop - first
        if index.bounds is not None:
            samples = reader.samples(index.bounds[first], index.bounds[stop])
        else:
            # Only the count is known: skip from the start. Reading on to
            # the end of the shard checks the count.
            limit = expected if stop < index.samples else None
            samples = reader.samples(0, skip=first, limit=limit)
        n = 0
        for offset, key, fields in samples:
            if n == expected:
                raise ShardFormatError.at(
                    url, offset, f"more samples than the {index.samples} expected"
                )
            n += 1
            yield {"__key__": key, "__url__": url, **fields}
        if n != expected:
            raise ShardFormatError.at(
                url,
                reader.stopped_at,
                f"found {first + n} samples where {stop} were expected "
                "(the shard changed, or its sample count is wrong)",
            )
        if (
            indexed is not None
            and index.bounds is None
            and stop == index.samples
            and len(reader.starts) == index.samples
        ):
            # Read from the start through to the end: every sample's offset
            # was passed on the way.
            indexed(ShardIndex(index.samples, (*reader.starts, reader.stopped_at)))


class _Piece:
    """A shard's bytes up to ``end``, read with ``fs.cat_file``: no readahead.

    Seekable and readable as a file of ``size`` bytes; nothing at or past
    ``end`` is ever read (a read stops there).
    """

    def __init__(self, fs: Any, url: str, size: int, end: int) -> None:
        self.fs = fs
        self.url = url
        self.size = size
        self._end = min(end, size)
        self._pos = 0

    def seek(self, offset: int, whence: int = 0, /) -> int:
        base = (0, self._pos, self.size)[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        stop = self._end if size < 0 else min(self._pos + size, self._end)
        if stop <= self._pos:
            return b""
        data: bytes = self.fs.cat_file(self.url, self._pos, stop)
        self._pos = stop
        return data
