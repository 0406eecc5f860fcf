"""The read-only file object handed out by ``CacheFileSystem.open(path, "rb")``.

Reads are served in the caller's thread from the tiers; only a miss crosses
into the filesystem's event loop. Three ways to read, by cost:

- :meth:`CachedFile.read_view` returns a memoryview of cached bytes (no copy
  when the range lies inside one chunk);
- :meth:`CachedFile.readinto` copies once, into the caller's buffer;
- :meth:`CachedFile.read` returns ``bytes`` (one copy).
"""

from __future__ import annotations

import asyncio
import io
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from cachefs.bridge import call_sync
from cachefs.chunks import ChunkKey, FileVersion
from cachefs.errors import StaleVersionError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from cachefs.router import ChunkRouter
    from cachefs.versions import VersionResolver

__all__ = ["CachedFile", "FileOwner", "ReadaheadWindow"]

# Chunks a file object keeps in hand at most (beyond those of its open).
_HELD_CHUNKS = 4
# Disk chunks verified in part that a file object remembers at most, by a
# weak reference to their map's block check: a random reader's later reads
# in them skip the tier lookup (each still verifies the blocks it reads,
# once). Weak, so no map (and its descriptor) outlives the tier's hold.
_PARTIAL_CHUNKS = 64


class ReadaheadWindow:
    """An adaptive readahead window for one sequential reader.

    The window starts at ``initial`` bytes, doubles with each sequential
    read up to ``cap``, and collapses to zero on a seek elsewhere (the next
    sequential read starts it again).
    """

    def __init__(self, initial: int, cap: int) -> None:
        self.initial = min(initial, cap)
        self.cap = cap
        self.size = 0
        #: Where the next sequential read starts.
        self.expected = 0

    def advance(self, start: int, stop: int) -> int:
        """Record a read of ``[start, stop)``; return the bytes to read ahead."""
        if start == self.expected:
            self.size = min(max(self.size * 2, self.initial), self.cap)
        else:
            self.size = 0  # a seek: no readahead until reads are sequential
        self.expected = stop
        return self.size


class _Blocks(Protocol):
    """A disk map's block check (:class:`cachefs.tiers.record.BlockCheck`)."""

    payload: memoryview

    def verify(self, lo: int = 0, hi: int | None = None) -> bool:
        """Verify the blocks holding ``[lo, hi)``; whether sound."""
        ...


class FileOwner(Protocol):
    """What a file object needs of the filesystem that opened it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop misses are fetched on."""
        ...

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        """Open ``path`` again (an unpickled file object does)."""
        ...

    def invalidate(self, path: str, recursive: bool = False) -> None:
        """Forget what the cache holds for ``path``."""
        ...


class CachedFile(io.RawIOBase):
    """A seekable, read-only binary file backed by the chunk cache.

    Parameters
    ----------
    fs
        The filesystem that opened it: the loop misses cross into, and how
        to open the file again (pickling) or forget a changed one.
    version
        The version of the file being read; over HTTP, a fetch that finds
        the origin changed raises ``StaleVersionError`` rather than mixing
        versions.
    pinned
        Chunks already in hand (read while opening), kept for this file
        whether or not a tier admitted them.
    resolver
        Versions and what reads taught (how far an open reads first).
    router
        The tiers and fills chunks come from.
    """

    mode = "rb"

    def __init__(
        self,
        fs: FileOwner,
        version: FileVersion,
        pinned: dict[ChunkKey, memoryview] | None = None,
        *,
        resolver: VersionResolver,
        router: ChunkRouter,
    ) -> None:
        super().__init__()
        self.fs = fs
        self.version = version
        self.path = version.path
        self.size = version.size
        self.chunk_size = resolver.chunk_size
        self._resolver = resolver
        self._router = router
        self._pos = 0
        self._keys: dict[int, ChunkKey] = {}
        #: Chunks in hand, by index: those read while opening, and the ones
        #: the read is in. Kept until the read moves past them whatever the
        #: tiers admit, so small reads never fetch a chunk twice.
        self._held: dict[int, memoryview] = {}
        #: Disk chunks verified in part, by index: their maps' block checks.
        self._partial: dict[int, weakref.ref[_Blocks]] = {}
        #: Chunks of the open's first request, added as they arrive (on the
        #: loop's thread); taken into ``_held`` when the read reaches them.
        self._arriving = pinned if pinned is not None else {}
        self._window: ReadaheadWindow | None = None
        readahead = resolver.config.readahead
        if readahead and router.staging is not None:
            self._window = ReadaheadWindow(self.chunk_size, readahead)
        self._ra_frontier = -1
        self._ra_issued: list[ChunkKey] = []

    # -- io.RawIOBase --------------------------------------------------------

    @property
    def name(self) -> str:
        """The file's path on the target filesystem."""
        return self.path

    def readable(self) -> bool:  # noqa: D102
        return True

    def seekable(self) -> bool:  # noqa: D102
        return True

    def writable(self) -> bool:  # noqa: D102
        return False

    def tell(self) -> int:  # noqa: D102
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to ``offset`` relative to ``whence``; return the new position."""
        if self.closed:
            self._check_open()
        if whence == 0:  # io.SEEK_SET, spelled out: random readers seek often
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence!r}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos} in {self.path}")
        self._pos = pos
        return pos

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all remaining when negative or None)."""
        if self.closed:
            self._check_open()
        pos = self._pos
        stop = self.size
        if size is not None and 0 <= size < stop - pos:
            stop = pos + size
        if stop <= pos:
            self._check_open()
            return b""
        window = self._window
        if window is not None:
            # _note_read inlined: a random reader's reads are this method's
            # whole cost (first 1000 reads of a fresh process, issue 20).
            if pos == window.expected or window.size:
                self._read_ahead(pos, stop)
            else:
                window.expected = stop
        cs = self.chunk_size
        index = pos // cs
        base = index * cs
        if stop - base <= cs:  # the common case: inside one chunk
            lo, hi = pos - base, stop - base
            view = self._held.get(index)
            if view is None:
                # _chunk's way to a disk chunk verified in part, inlined;
                # _chunk itself for anything else (and a failed check).
                ref = self._partial.get(index)
                blocks = None if ref is None else ref()
                if blocks is not None and blocks.verify(lo, hi):
                    view = blocks.payload
                else:
                    view = self._chunk(index, lo, hi)
            self._pos = stop
            return view[lo:hi].tobytes()
        # One copy: the chunks' slices straight into the new bytes.
        data = b"".join(self._pieces(pos, stop))
        self._pos = stop
        return data

    def readall(self) -> bytes:  # noqa: D102
        return self.read(-1)

    def readinto(self, buffer: Buffer) -> int:
        """Copy up to ``len(buffer)`` bytes into ``buffer``; return the count."""
        self._check_open()
        out = memoryview(buffer).cast("B")
        pos = self._pos
        stop = min(pos + out.nbytes, self.size)
        if stop <= pos:
            self._check_open()
            return 0
        if self._window is not None:
            self._note_read(pos, stop)
        cs = self.chunk_size
        index = pos // cs
        if stop <= (index + 1) * cs:  # inside one chunk: one slice, one copy
            base = index * cs
            lo, hi = pos - base, stop - base
            out[: stop - pos] = self._chunk(index, lo, hi)[lo:hi]
        else:
            self._copy_range(pos, stop, out)
        self._pos = stop
        return stop - pos

    def read_view(self, size: int = -1) -> memoryview:
        """Read up to ``size`` bytes as a read-only memoryview.

        Inside one chunk the view points into the cache itself: no copy.
        A range that spans chunks is copied once into a new buffer.
        """
        self._check_open()
        pos = self._pos
        stop = self.size if size < 0 else min(pos + size, self.size)
        if stop <= pos:
            self._check_open()
            return memoryview(b"")
        if self._window is not None:
            self._note_read(pos, stop)
        cs = self.chunk_size
        index = pos // cs
        if stop <= (index + 1) * cs:
            base = index * cs
            lo, hi = pos - base, stop - base
            view = self._chunk(index, lo, hi)[lo:hi]
        else:
            out = bytearray(stop - pos)
            self._copy_range(pos, stop, memoryview(out))
            view = memoryview(out).toreadonly()
        self._pos = stop
        return view

    def close(self) -> None:
        """Close the file and cancel its pending readahead.

        Further reads raise ``ValueError``.
        """
        window = self._window
        if window is not None and not self.closed:
            # Files read front to back make the next open read further ahead.
            sequential = window.size > 0 and window.expected > self.chunk_size
            self._resolver.note_access(sequential)
        if self._ra_issued and self._router.loop is not None and not self.closed:
            keys, self._ra_issued = self._ra_issued, []
            loop = self._router.loop
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._router.abandon, keys)
        self._keys.clear()
        self._held.clear()
        self._partial.clear()
        self._arriving = {}
        super().close()

    def info(self) -> dict[str, Any]:
        """Return the size and version this file object reads."""
        return {
            "name": self.path,
            "size": self.size,
            "type": "file",
            "version": self.version.token,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return _reopen, (self.fs, self.path, self._pos)

    # -- chunk access --------------------------------------------------------

    def _note_read(self, start: int, stop: int) -> None:
        """Feed a read to the readahead window."""
        window = self._window
        assert window is not None
        if start == window.expected or window.size:
            self._read_ahead(start, stop)
        else:  # random access: just remember where this read ended
            window.expected = stop

    def _read_ahead(self, start: int, stop: int) -> None:
        """Grow or reset the window and schedule chunks beyond ``stop``."""
        window = self._window
        assert window is not None
        cs = self.chunk_size
        ahead = window.advance(start, stop)
        if not ahead:
            self._ra_frontier = (stop - 1) // cs
            return
        last = min(stop + ahead, self.size)
        if last <= stop:
            return
        last_index = (last - 1) // cs
        if last_index <= self._ra_frontier:
            return
        first_index = max(stop // cs, self._ra_frontier + 1)
        self._ra_frontier = last_index
        # Checked here, in the reader's thread: a warm file never wakes the
        # event loop for readahead.
        # A chunk on disk but not yet mapped in this process (a fresh worker
        # over a warm cache) counts as held: a stat here costs far less than
        # waking the loop to find it there.
        held, in_hand, arriving = self._router.holds, self._held, self._arriving
        keys = [
            key
            for key in (self._key(i) for i in range(first_index, last_index + 1))
            if not (
                key.index in in_hand or key in arriving or held(key, probe_disk=True)
            )
        ]
        if keys:
            self._ra_issued.extend(keys)
            self._router.readahead_soon(keys)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.path}")

    def _key(self, index: int) -> ChunkKey:
        key = self._keys.get(index)
        if key is None:
            key = self._keys[index] = ChunkKey(self.version, self.chunk_size, index)
        return key

    def _chunk(self, index: int, lo: int, hi: int) -> memoryview:
        """Return chunk ``index``'s view; read only ``[lo, hi)`` of it.

        A chunk mapped from disk may be verified over those bytes only
        (:meth:`ChunkRouter.get_span`): it is kept in hand once whole.
        """
        view = self._held.get(index)
        if view is not None:
            return view
        ref = self._partial.get(index)
        if ref is not None:
            blocks = ref()
            if blocks is not None and blocks.verify(lo, hi):
                return blocks.payload
            # Unmapped or whole since (the tier let go of its check), or
            # damaged (the tier drops the chunk below): ask the tier.
            del self._partial[index]
        key = self._keys.get(index) or self._key(index)
        found = self._router.get_span(key, lo, hi)
        if found is not None and not found[1]:
            self._keep_partial(key, found[0])
            return found[0]
        view = found[0] if found else self._arriving.pop(key, None)
        if view is None:
            if self.closed:
                raise ValueError(f"I/O operation on closed file {self.path}")
            view = self._fetch([key], {})[0]
        self._hold(index, view)
        return view

    def _keep_partial(self, key: ChunkKey, view: memoryview) -> None:
        """Remember a disk chunk verified in part by its map's block check."""
        disk = self._router.disk
        blocks_of = (
            getattr(disk.tier_for(key), "blocks_of", None) if disk is not None else None
        )
        blocks = blocks_of(key) if blocks_of is not None else None
        if blocks is None or blocks.payload is not view:
            return  # another tier's view, or remapped meanwhile: ask each time
        partial = self._partial
        partial[key.index] = weakref.ref(blocks)
        if len(partial) > _PARTIAL_CHUNKS:
            del partial[next(iter(partial))]  # the first kept goes first

    def _hold(self, index: int, view: memoryview) -> None:
        """Keep chunk ``index`` in hand; let go of those the read has passed."""
        self._partial.pop(index, None)
        held = self._held
        held[index] = view
        if len(held) > _HELD_CHUNKS:
            # The previous chunk stays (a record that straddles the boundary
            # is read across both); the farthest from the read goes first.
            del held[max(held, key=lambda i: abs(i - index))]

    def _fetch(
        self, keys: list[ChunkKey], known: dict[ChunkKey, memoryview]
    ) -> list[memoryview]:
        """Return the chunks for ``keys`` (``known``: those already in hand)."""
        try:
            views: list[memoryview] = call_sync(
                self.fs.loop, self._router.get_chunks, keys, known
            )
        except StaleVersionError:
            # This file object keeps reading its version (and failing); the
            # cache forgets it, so the next open — in any process sharing
            # the cache — learns the new one.
            self.fs.invalidate(self.path)
            raise
        return views

    def _copy_range(self, start: int, stop: int, out: memoryview) -> None:
        """Copy file bytes ``[start, stop)`` into ``out`` (one loop crossing)."""
        written = 0
        for piece in self._pieces(start, stop):
            out[written : written + len(piece)] = piece
            written += len(piece)

    def _pieces(self, start: int, stop: int) -> list[memoryview]:
        """Return the chunk slices that hold ``[start, stop)`` (one loop crossing)."""
        self._check_open()
        cs = self.chunk_size
        first, last = start // cs, (stop - 1) // cs
        keys = [self._key(i) for i in range(first, last + 1)]
        held, cached, arriving = self._held, self._router.get_cached, self._arriving
        views = [held.get(k.index) or cached(k) or arriving.pop(k, None) for k in keys]
        if any(v is None for v in views):
            known = {k: v for k, v in zip(keys, views, strict=True) if v is not None}
            views = self._fetch(keys, known)  # type: ignore[assignment]
        for key, view in zip(keys[-2:], views[-2:], strict=True):
            assert view is not None
            self._hold(key.index, view)
        pieces = []
        for key, view in zip(keys, views, strict=True):
            assert view is not None
            lo = max(start, key.start) - key.start
            hi = min(stop, key.stop) - key.start
            pieces.append(view[lo:hi])
        return pieces


def _reopen(fs: FileOwner, path: str, pos: int) -> CachedFile:
    f = fs.open(path, "rb")
    assert isinstance(f, CachedFile)
    f.seek(pos)
    return f
