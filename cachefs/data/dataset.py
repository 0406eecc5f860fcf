"""``ShardDataset``: shards through the cache, split over ranks and workers.

Each rank owns a fixed share of the shards (so a node's cache only ever holds
its own ranks' shards) and reads them in a new order each epoch, drawn from
``(seed, epoch)``; ranks trade a few samples so that all yield the same
count, and each rank's list is split between its DataLoader workers
(:mod:`cachefs.data.partition` states the rules, :class:`World` does the
arithmetic). Because a consumer knows its part before it reads a byte, it
hands the byte ranges to :meth:`cachefs.CacheFileSystem.prefetch` when its
iteration starts, and the cache fetches the next shards while the current one
is consumed.
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import posixpath
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import get_spawning_popen
from typing import Any, Literal

import fsspec
from braceexpand import braceexpand
from fsspec.asyn import sync
from fsspec.spec import AbstractFileSystem
from fsspec.utils import get_protocol

from cachefs.data.index import IndexStore, ShardIndex
from cachefs.data.partition import Span, cut, rank_plan
from cachefs.data.shards import Sample, ShardReader
from cachefs.data.world import World, freeze_inherited
from cachefs.filesystem import CacheFileSystem
from cachefs.prefetch import PrefetchHandle

__all__ = ["ShardDataset", "collate_views", "expand_urls", "to_bytes"]

_Base: Any
try:  # torch is optional: without it the dataset is a plain iterable
    from torch.utils.data import IterableDataset as _Base
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _Base = object


def collate_views(batch: Sequence[memoryview], **_: Any) -> list[bytes]:
    """Collate a batch of memoryviews (sample payloads) as a list of ``bytes``.

    torch's ``default_collate`` takes a memoryview for a sequence of ints
    and fails on samples of different sizes ("each element in list of batch
    should be of equal size"); this is the collation it gets for them
    instead, so ``DataLoader(ShardDataset(...), batch_size=32)`` works with
    no ``collate_fn``: one copy per payload, which also lets the batch leave
    a worker. Pass a ``collate_fn`` of your own to decode without that copy.
    """
    return [bytes(view) for view in batch]


def _register_collate() -> None:
    """Teach torch's default collation memoryviews (see :func:`collate_views`)."""
    try:
        from torch.utils.data._utils.collate import default_collate_fn_map
    except ImportError:  # no torch, or a torch without the map
        return
    default_collate_fn_map.setdefault(memoryview, collate_views)


_register_collate()

_GLOB_CHARS = re.compile(r"[*?\[]")
_INDEX_THREADS = 16

Decode = Callable[[Sample], Any] | Literal["bytes"] | None


def to_bytes(sample: Sample) -> Sample:
    """Return ``sample`` with every memoryview copied into ``bytes``.

    Samples must be picklable to leave a DataLoader worker; memoryviews are
    not. ``decode="bytes"`` applies this to every sample.
    """
    return {
        k: v.tobytes() if isinstance(v, memoryview) else v for k, v in sample.items()
    }


def _braces(pattern: str) -> list[str]:
    """Expand braces as bash and webdataset do (:mod:`braceexpand`).

    Lists (``{a,b}``), nested lists (``{0000,{0001,0002}}``), ranges with
    their zero padding (``{000..015}``), steps (``{0..10..2}``) and
    descending ranges (``{9..0}``); a backslash makes a brace literal.
    """
    try:
        return list(braceexpand(pattern))
    except ValueError as exc:  # braceexpand.UnbalancedBracesError
        raise ValueError(f"urls={pattern!r} has unbalanced braces") from exc


def _is_glob(url: str) -> bool:
    target = url.split("::")[-1]
    if get_protocol(target) in ("http", "https"):
        # '?' starts a query and '[' an IPv6 host: only '*' globs a URL.
        return "*" in target
    return _GLOB_CHARS.search(target) is not None


def expand_urls(urls: str | Sequence[str], fs: AbstractFileSystem) -> list[str]:
    """Turn a URL, a brace pattern, a glob or a list of URLs into shard URLs.

    A string is brace-expanded as bash does (``shard-{0000..0099}.tar``,
    ``{a,b}``, nested lists, ``{0..10..2}`` steps) and
    each glob (``*``, ``?``, ``[``; only ``*`` in an http(s) URL) is matched
    with ``fs.glob`` (sorted). A list is taken as it is.

    Raises
    ------
    FileNotFoundError
        When a glob matches nothing.
    ValueError
        When the braces are unbalanced.
    """
    if isinstance(urls, str):
        out: list[str] = []
        for pattern in _braces(urls):
            if _is_glob(pattern):
                found = sorted(fs.glob(pattern))
                if not found:
                    raise FileNotFoundError(f"no shards match {pattern!r}")
                out.extend(found)
            else:
                out.append(pattern)
        return out
    if not isinstance(urls, Sequence) or not all(isinstance(u, str) for u in urls):
        raise TypeError("urls must be a str or a list of str")
    return list(urls)


def _default_fs(url: str) -> AbstractFileSystem:
    """Cache the URL's own protocol with default settings (or its chain)."""
    if url.startswith(("cachefs::", "cachefs://")):
        fs: AbstractFileSystem = fsspec.core.url_to_fs(url)[0]
        return fs
    return fsspec.filesystem("cachefs", target_protocol=get_protocol(url))


def _index_store(fs: AbstractFileSystem) -> IndexStore | None:
    if isinstance(fs, CacheFileSystem) and fs.disk_limit and fs.cache_dirs:
        try:
            return IndexStore(fs.cache_dirs[0] / "index")
        except OSError:
            return None
    return None


def _load_client(fs: AbstractFileSystem) -> None:
    """Build the cache target's client here, before DataLoader workers fork.

    An S3 client's models (botocore's JSON) then come with the fork: each
    worker's first request, in every epoch, skips 0.07 s of parsing them
    (see :func:`cachefs.bridge.renewed`). Only targets with a
    ``session`` (s3fs) are built; nothing is sent. A failure is left to
    the first read, which reports it.
    """
    target = getattr(fs, "fs", None)
    set_session = getattr(target, "set_session", None)
    if (
        not isinstance(fs, CacheFileSystem)
        or fs.asynchronous
        or not hasattr(target, "session")
        or not inspect.iscoroutinefunction(set_session)
    ):
        return
    try:
        sync(fs.loop, set_session, timeout=30)
    except Exception:
        return


def _buffer_shuffle(
    samples: Iterator[Sample], size: int, rng: random.Random
) -> Iterator[Sample]:
    """Shuffle a stream with a buffer of ``size`` samples."""
    buffer: list[Sample] = []
    try:
        for sample in samples:
            if len(buffer) < size:
                buffer.append(sample)
                continue
            i = rng.randrange(size)
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer
    finally:
        if hasattr(samples, "close"):
            samples.close()


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class ShardDataset(_Base):  # type: ignore[misc]
    """Samples of tar or raw shards, read through the cache, split over consumers.

    A :class:`torch.utils.data.IterableDataset` when torch is installed, a
    plain iterable otherwise. Every sample of an epoch is delivered exactly
    once across all ranks and DataLoader workers, and every rank gets the
    same number of samples (see ``drop_last``).

    Parameters
    ----------
    urls
        Shard URLs: a list, or one string that may hold brace ranges
        (``shard-{0000..0099}.tar``) and globs (``*.tar``).
    fs
        The filesystem to read through: a :class:`cachefs.CacheFileSystem`
        (zero-copy reads, prefetch) or any fsspec filesystem (one copy per
        read, no prefetch). ``None`` caches the URLs' own protocol with
        default settings (a ``cachefs::`` URL chain is honoured).
    format
        ``"tar"`` (WebDataset-style) or ``"raw"``.
    record_size
        For ``"raw"``: bytes per record (one sample each); ``None`` makes
        each whole shard one sample.
    shuffle
        Draw a new order of each rank's shards for each epoch from
        ``(seed, epoch, rank)``; ``False`` keeps the listed order.
    seed
        Seed of the shard order and of the shuffle buffer. The same seed
        gives the same orders on every run and every process.
    shuffle_buffer
        Also shuffle samples across a buffer of this many samples in each
        consumer (``0``: no buffer). The buffer holds views, not copies.
    decode
        ``None`` yields samples as they are (memoryviews); ``"bytes"``
        copies each view into ``bytes`` (needed to pass samples out of
        DataLoader workers without a collate function that copies); a
        callable gets each sample dict and returns what is yielded.
    prefetch
        At the start of each epoch, hand this consumer's byte ranges, in
        order, to ``fs.prefetch``; the handle is cancelled when iteration
        ends, also early.
    rank, world_size
        This process's distributed rank and the number of ranks; found by
        :meth:`World.detect` (``torch.distributed``, then ``RANK`` /
        ``WORLD_SIZE``) when ``None``. Fixed when the dataset is built.
    drop_last
        ``True``: each rank yields ``total // world_size`` samples and
        ``total % world_size`` samples of the epoch are not delivered (the
        tails of the ranks' orders nobody needed). ``False``: each rank
        yields ``ceil(total / world_size)`` samples; the missing ones are
        repeats of the first samples of the ranks' orders.
    sample_counts
        Samples per shard (a list in ``urls`` order, or a mapping from URL),
        when known (say from a manifest written with the shards): nothing is
        read up front. Without it, raw shards are counted from their sizes
        and tar shards are indexed by one pass over their headers, in
        parallel; a tar index is kept in the cache directory under the
        shard's version, so a later run skips the pass.

    Notes
    -----
    Call :meth:`set_epoch` before each epoch, as with a
    ``DistributedSampler``; DataLoader workers, persistent or not, fork or
    spawn, see the new epoch (it lives in shared memory).

    Rank ``r`` owns the shards ``urls[r::world_size]`` in every epoch, so
    the ranks of a node read, and cache, the same shards each epoch; a rank
    with more samples than its count gives the excess to ranks with fewer.
    A worker's part is contiguous in its rank's list, and the parts' sizes
    depend only on that count: every rank makes the same number of batches.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        fs: AbstractFileSystem | None = None,
        *,
        format: str = "tar",
        record_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 0,
        decode: Decode = None,
        prefetch: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
        sample_counts: Sequence[int] | Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self._reader = ShardReader(format, record_size)
        self.shuffle = _check_bool(shuffle, "shuffle")
        self.seed = _check_int(seed, "seed", -(2**63))
        self.shuffle_buffer = _check_int(shuffle_buffer, "shuffle_buffer", 0)
        if decode is not None and decode != "bytes" and not callable(decode):
            raise TypeError(
                f"decode must be None, 'bytes' or a callable, got {decode!r}"
            )
        self.decode = decode
        self.prefetch = _check_bool(prefetch, "prefetch")
        self.drop_last = _check_bool(drop_last, "drop_last")
        world = World.detect(rank, world_size)
        self.rank, self.world_size = world.rank, world.world_size
        if not urls:
            raise ValueError("urls must name at least one shard")
        if fs is None:
            fs = _default_fs(urls if isinstance(urls, str) else urls[0])
        if not isinstance(fs, AbstractFileSystem):
            raise TypeError(f"fs must be an fsspec filesystem, got {type(fs).__name__}")
        self.fs = fs
        self.urls = expand_urls(urls, fs)
        if not self.urls:
            raise ValueError("urls must name at least one shard")
        self._indexes = self._index(sample_counts)
        _load_client(fs)
        self._counts = [ix.samples for ix in self._indexes]
        #: Samples in all shards together.
        self.total_samples = sum(self._counts)
        self._epoch = 0
        self._built_in = os.getpid()
        # The epoch lives in shared memory so that DataLoader workers (which
        # hold copies of this object, persistent ones across epochs) see
        # set_epoch calls made in the main process.
        self._epoch_cell: Any = multiprocessing.RawValue("q", 0)

    # -- index ---------------------------------------------------------------

    def _index(
        self, sample_counts: Sequence[int] | Mapping[str, int] | None
    ) -> list[ShardIndex]:
        if sample_counts is not None:
            if isinstance(sample_counts, Mapping):
                missing = [u for u in self.urls if u not in sample_counts]
                if missing:
                    raise ValueError(f"sample_counts has no count for {missing[0]!r}")
                counts = [sample_counts[u] for u in self.urls]
            else:
                counts = list(sample_counts)
                if len(counts) != len(self.urls):
                    raise ValueError(
                        f"sample_counts has {len(counts)} entries for "
                        f"{len(self.urls)} shards"
                    )
            for c in counts:
                _check_int(c, "sample_counts entries", 0)
            return [ShardIndex(c) for c in counts]
        store = _index_store(self.fs)
        reader, fs = self._reader, self.fs
        workers = min(_INDEX_THREADS, len(self.urls))
        with ThreadPoolExecutor(workers, thread_name_prefix="cachefs-index") as pool:
            indexes = list(pool.map(lambda u: reader.index(fs, u, store), self.urls))
        if isinstance(fs, CacheFileSystem):
            # Let the reads' disk writes finish now: DataLoader workers fork
            # next, and a child must not inherit a chunk lock held mid-write.
            fs.wait_idle()
        return indexes

    @property
    def sample_counts(self) -> list[int]:
        """Samples per shard, in ``urls`` order."""
        return list(self._counts)

    # -- epochs and partition ------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads."""
        cell = self._epoch_cell
        return int(cell.value) if cell is not None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration read epoch ``epoch`` (its own shard order)."""
        self._epoch = _check_int(epoch, "epoch", 0)
        if self._epoch_cell is not None:
            self._epoch_cell.value = epoch

    @property
    def samples_per_rank(self) -> int:
        """Samples each rank yields per epoch (the same for every rank)."""
        world = World(self.rank, self.world_size)
        return world.rank_samples(self.total_samples, drop_last=self.drop_last)

    def __len__(self) -> int:
        """Return the samples this rank yields per epoch, over all its workers."""
        return self.samples_per_rank

    def _sequences(self, epoch: int) -> list[list[Span]]:
        """Every rank's own shards, in this epoch's order, as spans."""
        shards = range(len(self.urls))
        out = []
        for r in range(self.world_size):
            own = World(r, self.world_size).rank_share(shards)
            if self.shuffle:
                rng = random.Random(f"cachefs.shards:{self.seed}:{epoch}:{r}")
                rng.shuffle(own)
            out.append([(s, 0, self._counts[s]) for s in own])
        return out

    def plan(
        self, epoch: int | None = None, world: World | None = None
    ) -> list[tuple[str, int, int]]:
        """Return what one consumer reads in an epoch, in order.

        Parameters
        ----------
        epoch
            The epoch (default: :attr:`epoch`).
        world
            The consumer (default: this rank, worker 0 of 1). Its
            ``world_size`` must be the dataset's.

        Returns
        -------
        list of (url, first, stop)
            Shard URL and the range of its samples, in reading order.
        """
        epoch = self.epoch if epoch is None else epoch
        world = World(self.rank, self.world_size) if world is None else world
        return [(self.urls[s], a, b) for s, a, b in self._spans(epoch, world)]

    def _spans(self, epoch: int, world: World) -> list[Span]:
        if world.world_size != self.world_size:
            raise ValueError(
                f"world has world_size={world.world_size}, "
                f"the dataset {self.world_size}"
            )
        n = self.samples_per_rank
        ranked = rank_plan(self._sequences(epoch), n, world.rank)
        lo, hi = world.worker_range(n)
        return cut(ranked, lo, hi)

    # -- iteration -----------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        freeze_inherited(self._built_in)
        world = World.detect(self.rank, self.world_size)
        epoch = self.epoch
        spans = self._spans(epoch, world)
        fs = self._filesystem()
        handle, marks = self._start_prefetch(fs, spans)
        samples: Iterator[Sample] = self._samples(fs, spans, handle, marks)
        try:
            if self.shuffle_buffer > 1:
                rng = random.Random(
                    f"cachefs.buffer:{self.seed}:{epoch}:{world.consumer}"
                )
                samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
            decode = to_bytes if self.decode == "bytes" else self.decode
            if decode is None:
                yield from samples
            else:
                assert callable(decode)
                for sample in samples:
                    yield decode(sample)
        finally:
            close = getattr(samples, "close", None)
            if close is not None:
                close()
            if handle is not None:
                handle.cancel()

    def _samples(
        self,
        fs: Any,
        spans: list[Span],
        handle: PrefetchHandle | None,
        marks: list[int],
    ) -> Iterator[Sample]:
        store = self._offsets_store(fs)
        for j, (shard, first, stop) in enumerate(spans):
            if handle is not None:
                # The prefetch stops fetching what this reader has reached:
                # behind a reader, it would fetch chunks again that the
                # reader read and no tier kept.
                handle.reached(marks[j])
            yield from self._reader.read(
                fs,
                self.urls[shard],
                self._indexes[shard],
                first,
                stop,
                store,
                functools.partial(self._learned, shard),
            )

    def _learned(self, shard: int, index: ShardIndex) -> None:
        if index.samples == self._indexes[shard].samples:
            self._indexes[shard] = index

    def _offsets_store(self, fs: Any) -> IndexStore | None:
        """Where tar sample offsets learned while reading are kept.

        Only for tar shards of which just the counts were given: a part of
        a shard that starts mid-shard (where two consumers split it) needs
        the offsets, or it reads every header — every chunk — before it.
        """
        if self._reader.format != "tar" or all(
            ix.bounds is not None for ix in self._indexes
        ):
            return None
        return _index_store(fs)

    def _known_index(self, fs: Any, shard: int, first: int, stop: int) -> ShardIndex:
        """Return the shard's index, with offsets where a reader learned them."""
        index = self._indexes[shard]
        partial = first > 0 or stop < index.samples
        if index.bounds is not None or not partial:
            return index
        store = self._offsets_store(fs)
        if store is None or not isinstance(fs, CacheFileSystem):
            return index
        # No I/O: the version as this cache (any process) last saw it.
        resolver = fs.resolver
        version = resolver.known(resolver.target_path(self.urls[shard]))
        known = None if version is None else store.get(version, "tar")
        if known is None or known.samples != index.samples:
            return index
        self._indexes[shard] = known
        return known

    def _start_prefetch(
        self, fs: Any, spans: list[Span]
    ) -> tuple[PrefetchHandle | None, list[int]]:
        """Start the prefetch of ``spans``.

        Returns the handle and, per span, the index of the last prefetch
        item at or before it.
        """
        start = getattr(fs, "prefetch", None)
        if not self.prefetch or not spans or start is None:
            return None, []
        items: list[tuple[str, int, int | None]] = []
        marks: list[int] = []
        for s, a, b in spans:
            index = self._known_index(fs, s, a, b)
            if index.bounds is None and b < index.samples:
                # Where this part ends is unknown: prefetching the whole
                # shard would fetch the rest, which another consumer reads.
                # The file's own readahead follows the reader instead.
                marks.append(len(items) - 1)
                continue
            marks.append(len(items))
            items.append((self.urls[s], *self._reader.byte_range(index, a, b)))
        if not items:
            return None, []
        try:
            handle: PrefetchHandle = start(items)
        except ValueError:  # the filesystem has prefetch off (prefetch_limit=0)
            return None, []
        return handle, marks

    def _filesystem(self) -> Any:
        fs = self.fs
        pid = getattr(fs, "_pid", None)
        if pid is None or pid == os.getpid() or isinstance(fs, CacheFileSystem):
            return fs  # cachefs renews its loop and sessions after a fork
        # fsspec's other async filesystems refuse to run in a forked child
        # (DataLoader workers fork): build this process's own instance.
        fs = type(fs)(*fs.storage_args, **fs.storage_options)
        self.fs = fs
        return fs

    # -- pickling (spawned DataLoader workers) ---------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if state.get("_epoch_cell") is not None and get_spawning_popen() is None:
            # Shared memory travels only to a process being started; any
            # other pickle carries the epoch as a plain number.
            state["_epoch"] = self.epoch
            state["_epoch_cell"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        name = posixpath.basename(self.urls[0])
        return (
            f"ShardDataset({len(self.urls)} {self._reader.format} shards from "
            f"{name!r}, {self.total_samples} samples, rank {self.rank} of "
            f"{self.world_size})"
        )
