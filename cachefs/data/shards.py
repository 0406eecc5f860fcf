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
from collections.abc import Iterator
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
        self, fs: Any, url: str, index: ShardIndex, first: int, stop: int
    ) -> Iterator[Sample]:
        """Yield samples ``[first, stop)`` of ``url``, in shard order.

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
            else:
                yield from self._read_tar(f, url, index, first, stop)

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
        self, f: Any, url: str, index: ShardIndex, first: int, stop: int
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
