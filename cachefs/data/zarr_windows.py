"""Random windows (crops) of a large zarr array, prefetched batch by batch.

Training on large arrays (images, volumes, climate fields) reads random
windows of a fixed shape. Each window touches a few of the array's storage
objects (chunks, or shards when the array is sharded); reading windows one by
one leaves the origin idle between them. :class:`ZarrWindows` knows the
windows of the coming batches, computes the storage keys they touch from the
array's chunk grid and chunk key encoding (``c/0/1`` for zarr v3, ``0.1`` for
zarr v2, whatever the metadata says), and hands them to
:meth:`cachefs.CacheFileSystem.prefetch` before zarr reads them, so a batch's
objects arrive in parallel and the next batch's arrive while this one is
consumed.

Usage::

    from cachefs.data.zarr_windows import ZarrWindows

    windows = ZarrWindows(
        "cachefs::s3://bucket/era5.zarr/t2m",
        window_shape=(1, 256, 256),
        n_windows=10_000,
        batch_size=32,
        storage_options={"cachefs": {"cache_dir": "/nvme/cachefs"}},
    )
    for epoch in range(epochs):
        windows.set_epoch(epoch)
        for batch in windows.batches():  # numpy arrays (32, 1, 256, 256)
            ...

Requires ``zarr>=3`` (the ``cachefs[zarr]`` extra).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync
from zarr.storage import FsspecStore, LocalStore

from cachefs.data.world import World
from cachefs.filesystem import CacheFileSystem
from cachefs.prefetch import PrefetchHandle

__all__ = ["ZarrWindows"]

Origin = tuple[int, ...]


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _join(*parts: str) -> str:
    """Join store path, array path and key with single slashes."""
    out = ""
    for part in parts:
        if not part:
            continue
        out = part if not out else out.rstrip("/") + "/" + part.strip("/")
    return out


class ZarrWindows:
    """Random fixed-shape windows of a zarr array, one epoch at a time.

    Parameters
    ----------
    array
        A ``zarr.Array``, or a URL opened read-only with
        ``zarr.open_array(array, storage_options=...)``; a chained URL such
        as ``"cachefs::s3://bucket/data.zarr"`` reads through cachefs.
    window_shape
        Shape of every window; one entry per array dimension, each between
        1 and the array's extent.
    n_windows
        Windows drawn per epoch, over all ranks and DataLoader workers; each
        consumer yields its share (see :class:`cachefs.data.World`).
    batch_size
        Windows per batch: the unit of prefetching and of :meth:`batches`.
    seed
        Seed of the window draw; with the epoch it fixes every window, so all
        consumers draw the same list and take disjoint shares of it.
    fs
        The :class:`~cachefs.CacheFileSystem` to read and prefetch through.
        With a URL, the array is opened on it (pass a URL of its target, or
        a ``cachefs::`` URL). By default, the filesystem of the array's
        store, when that is a ``CacheFileSystem``.
    storage_options
        Options for ``zarr.open_array`` when ``array`` is a URL and ``fs`` is
        not given (for a chained URL: ``{"cachefs": {...}, "s3": {...}}``).
    lookahead
        Batches prefetched ahead of the one being read (``0``: only the
        current batch's keys are prefetched, just before it is read).
    world
        This consumer's place among ranks and workers; detected at each
        iteration by default (so DataLoader workers find their own).

    Notes
    -----
    Without a ``CacheFileSystem`` (an array on a local store, say) windows are
    read all the same, without prefetching. An array given as a
    ``zarr.Array`` together with ``fs`` must live on an ``FsspecStore`` or a
    ``LocalStore`` (whose paths ``fs`` can name). Prefetching a key that has no
    object (a chunk never written, read as the fill value) fails quietly: it
    is logged and recorded on the prefetch handle.
    """

    def __init__(
        self,
        array: Any,
        window_shape: Sequence[int],
        *,
        n_windows: int,
        batch_size: int = 16,
        seed: int = 0,
        fs: CacheFileSystem | None = None,
        storage_options: dict[str, Any] | None = None,
        lookahead: int = 1,
        world: World | None = None,
    ) -> None:
        if fs is not None and not isinstance(fs, CacheFileSystem):
            raise TypeError(f"fs must be a CacheFileSystem, got {type(fs).__name__}")
        if fs is not None and storage_options is not None:
            raise TypeError("give fs or storage_options, not both")
        self.n_windows = _positive_int(n_windows, "n_windows")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.lookahead = _positive_int(lookahead, "lookahead", minimum=0)
        self.seed = _positive_int(seed, "seed", minimum=0)
        if world is not None and not isinstance(world, World):
            raise TypeError(f"world must be a World, got {type(world).__name__}")
        self.world = world
        self.array = self._open(array, fs, storage_options)
        self.window_shape = self._check_window(window_shape)
        store = self.array.store
        if (
            fs is None
            and isinstance(store, FsspecStore)
            and isinstance(store.fs, CacheFileSystem)
        ):
            fs = store.fs
        # Where the array's keys live, as paths of `fs`.
        if isinstance(store, FsspecStore):
            base = store.path
        elif isinstance(store, LocalStore):
            base = str(store.root)
        elif fs is not None:
            raise TypeError(
                "fs= needs an array on an FsspecStore or a LocalStore, "
                f"not on a {type(store).__name__}"
            )
        else:
            base = ""
        self.fs = fs
        # Storage objects are shards when the array is sharded, else chunks.
        self.grid: tuple[int, ...] = tuple(self.array.shards or self.array.chunks)
        self._prefix = _join(base, self.array.path)
        self.epoch = 0

    # -- construction ---------------------------------------------------------

    @staticmethod
    def _open(
        array: Any,
        fs: CacheFileSystem | None,
        storage_options: dict[str, Any] | None,
    ) -> zarr.Array[Any]:
        if isinstance(array, zarr.Array):
            if storage_options is not None:
                raise TypeError("storage_options apply to a URL, not to an Array")
            return array
        if not isinstance(array, str | os.PathLike):
            raise TypeError(
                f"array must be a zarr.Array or a URL, got {type(array).__name__}"
            )
        url = os.fspath(array)
        if fs is not None:
            store = FsspecStore(fs=fs, path=fs._strip_protocol(url), read_only=True)
            return zarr.open_array(store, mode="r")
        return zarr.open_array(url, mode="r", storage_options=storage_options)

    def _check_window(self, window_shape: Sequence[int]) -> tuple[int, ...]:
        shape = self.array.shape
        if isinstance(window_shape, str | bytes) or not isinstance(
            window_shape, Sequence
        ):
            raise TypeError(
                f"window_shape must be a sequence of ints, got {window_shape!r}"
            )
        if len(window_shape) != len(shape):
            raise ValueError(
                f"window_shape={tuple(window_shape)!r} has {len(window_shape)} "
                f"dimensions; the array has {len(shape)} (shape {shape})"
            )
        out = []
        for w, n in zip(window_shape, shape, strict=True):
            if isinstance(w, bool) or not isinstance(w, int | np.integer):
                raise TypeError(f"window_shape entries must be ints, got {w!r}")
            if not 1 <= w <= n:
                raise ValueError(
                    f"window_shape={tuple(window_shape)!r} does not fit the "
                    f"array's shape {shape}: each entry must be in [1, extent]"
                )
            out.append(int(w))
        return tuple(out)

    # -- the windows ----------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Draw the windows of ``epoch`` from now on (call once per epoch)."""
        self.epoch = _positive_int(epoch, "epoch", minimum=0)

    def _world(self) -> World:
        return self.world if self.world is not None else World.detect()

    def all_windows(self, epoch: int | None = None) -> list[Origin]:
        """Return the origins of every window of ``epoch``, all consumers."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        columns = [
            rng.integers(0, n - w + 1, size=self.n_windows)
            for n, w in zip(self.array.shape, self.window_shape, strict=True)
        ]
        return [tuple(int(c) for c in row) for row in zip(*columns, strict=True)]

    def windows(self, epoch: int | None = None) -> list[Origin]:
        """Return the origins of this consumer's windows of ``epoch``."""
        return self._world().share(self.all_windows(epoch))

    def __len__(self) -> int:
        return len(self.windows())

    def selection(self, origin: Origin) -> tuple[slice, ...]:
        """Return the index of the window at ``origin``."""
        return tuple(
            slice(o, o + w) for o, w in zip(origin, self.window_shape, strict=True)
        )

    def chunk_keys(self, origin: Origin) -> list[str]:
        """Return the storage keys (relative to the array) a window touches."""
        ranges = [
            range(o // c, (o + w - 1) // c + 1)
            for o, w, c in zip(origin, self.window_shape, self.grid, strict=True)
        ]
        encode = self.array.metadata.encode_chunk_key
        return [encode(coords) for coords in itertools.product(*ranges)]

    def batch_paths(self, origins: Sequence[Origin]) -> list[str]:
        """Return the store paths of every object ``origins`` touch, once each."""
        keys: dict[str, None] = {}
        for origin in origins:
            keys.update(dict.fromkeys(self.chunk_keys(origin)))
        return [_join(self._prefix, key) for key in keys]

    # -- reading ----------------------------------------------------------------

    def read(self, origin: Origin) -> np.ndarray[Any, Any]:
        """Read one window (through zarr, so decoded with the array's codecs)."""
        return np.asarray(self.array[self.selection(origin)])

    def read_batch(self, origins: Sequence[Origin]) -> list[np.ndarray[Any, Any]]:
        """Read several windows concurrently, on zarr's event loop."""
        array = self.array.async_array

        async def read_all() -> list[Any]:
            return await asyncio.gather(
                *(array.getitem(self.selection(o)) for o in origins)
            )

        found: list[Any] = zarr_sync(read_all())
        return [np.asarray(window) for window in found]

    def prefetch(self, origins: Sequence[Origin]) -> PrefetchHandle | None:
        """Prefetch the storage objects of the windows at ``origins``.

        Iteration does this by itself, batch by batch; call it to warm the
        cache ahead (e.g. the first batches of an epoch). Returns the
        :class:`~cachefs.prefetch.PrefetchHandle` (``None`` without a
        ``CacheFileSystem``); with a synchronous ``fs`` it can be waited on.
        """
        fs = self.fs
        if fs is None or fs.router.staging is None:
            return None
        paths = self.batch_paths(origins)
        if not fs.asynchronous:
            return fs.prefetch(paths)

        # An asynchronous instance lives on zarr's event loop (its store
        # calls it there): start the prefetch task on that loop.
        async def start() -> PrefetchHandle:
            return fs.prefetch(paths)

        handle: PrefetchHandle = zarr_sync(start())
        return handle

    def _cancel(self, handle: PrefetchHandle) -> None:
        if handle.done():
            return
        if self.fs is not None and self.fs.asynchronous:

            async def cancel() -> None:
                handle.cancel()

            zarr_sync(cancel())
        else:
            handle.cancel()

    def _batches(self) -> Iterator[list[np.ndarray[Any, Any]]]:
        origins = self.windows()
        groups = [
            origins[i : i + self.batch_size]
            for i in range(0, len(origins), self.batch_size)
        ]
        handles: list[PrefetchHandle] = []
        issued = 0
        try:
            for i, group in enumerate(groups):
                # Keys of this batch and of `lookahead` batches after it.
                while issued < min(len(groups), i + 1 + self.lookahead):
                    handle = self.prefetch(groups[issued])
                    if handle is not None:
                        handles.append(handle)
                    issued += 1
                yield self.read_batch(group)
        finally:
            # A consumer that stops early leaves nothing running.
            for handle in handles:
                self._cancel(handle)

    def __iter__(self) -> Iterator[np.ndarray[Any, Any]]:
        """Yield this consumer's windows of the current epoch, in order."""
        for batch in self._batches():
            yield from batch

    def batches(self) -> Iterator[np.ndarray[Any, Any]]:
        """Yield this consumer's windows stacked in batches of ``batch_size``.

        Each batch has shape ``(n, *window_shape)``; the last may be shorter.
        """
        for batch in self._batches():
            yield np.stack(batch)
