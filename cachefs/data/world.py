"""Rank and worker arithmetic in one small value object.

Distributed training splits a dataset first by rank (one process per GPU,
possibly on many nodes), then by DataLoader worker inside each rank. Every
consumer of that split — the datasets, ``cachefs warm --rank/--world-size`` —
uses :class:`World`, so a node warms exactly the shards its ranks will read.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["World", "freeze_inherited"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class World:
    """Where this process sits among ranks and DataLoader workers.

    Parameters
    ----------
    rank, world_size
        This process's distributed rank and the number of ranks.
    worker, num_workers
        This DataLoader worker's id and the number of workers per rank
        (``0`` and ``1`` outside a DataLoader).
    """

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "worker", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        if not 0 <= self.worker < self.num_workers:
            raise ValueError(
                f"worker must be in [0, {self.num_workers}), got {self.worker}"
            )

    @classmethod
    def detect(cls, rank: int | None = None, world_size: int | None = None) -> World:
        """Find rank and worker from the environment, arguments first.

        Rank and world size come from the arguments, else from an initialised
        ``torch.distributed``, else from the ``RANK``/``WORLD_SIZE``
        environment variables, else ``0``/``1``. The worker comes from
        ``torch.utils.data.get_worker_info()`` when torch is installed.
        """
        if rank is None or world_size is None:
            found = _torch_rank() or _env_rank()
            if found is not None:
                rank = found[0] if rank is None else rank
                world_size = found[1] if world_size is None else world_size
        worker, num_workers = _torch_worker() or (0, 1)
        return cls(
            rank=0 if rank is None else rank,
            world_size=1 if world_size is None else world_size,
            worker=worker,
            num_workers=num_workers,
        )

    @property
    def consumers(self) -> int:
        """Total number of consumers: ranks times workers."""
        return self.world_size * self.num_workers

    @property
    def consumer(self) -> int:
        """Index of this consumer among all consumers (rank-major)."""
        return self.rank * self.num_workers + self.worker

    def rank_share(self, items: Sequence[T]) -> list[T]:
        """Return this rank's items: every ``world_size``-th, from ``rank``."""
        return list(items[self.rank :: self.world_size])

    def worker_share(self, items: Sequence[T]) -> list[T]:
        """Return this worker's part of a rank's items."""
        return list(items[self.worker :: self.num_workers])

    def share(self, items: Sequence[T]) -> list[T]:
        """Return this consumer's items (rank share, then worker share)."""
        return self.worker_share(self.rank_share(items))

    def rank_samples(self, total: int, *, drop_last: bool = True) -> int:
        """Return how many samples every rank yields from ``total`` per epoch.

        Every rank gets the same count, or distributed training hangs on
        the rank with more batches: ``total // world_size`` with
        ``drop_last`` (``total % world_size`` samples are left out), else
        ``ceil(total / world_size)`` (some samples are delivered twice).
        """
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total must be an int >= 0, got {total!r}")
        if drop_last:
            return total // self.world_size
        return -(-total // self.world_size)

    def worker_range(self, count: int) -> tuple[int, int]:
        """Return this worker's part ``[start, stop)`` of ``count`` rank items.

        The parts are contiguous and differ in size by one at most. Their
        sizes depend only on ``count`` and ``num_workers``, so ranks with the
        same count split it alike, and a DataLoader that batches inside each
        worker makes the same number of batches on every rank.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        k = self.num_workers
        return count * self.worker // k, count * (self.worker + 1) // k


def _env_rank() -> tuple[int, int] | None:
    rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or size is None:
        return None
    try:
        return int(rank), int(size)
    except ValueError as exc:
        raise ValueError(
            f"RANK={rank!r} and WORLD_SIZE={size!r} must be integers"
        ) from exc


def _torch_rank() -> tuple[int, int] | None:
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def _torch_worker() -> tuple[int, int] | None:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return None
    info = get_worker_info()
    if info is None:
        return None
    return info.id, info.num_workers


#: The process whose inherited objects :func:`freeze_inherited` froze last.
_frozen_in: int | None = None


def freeze_inherited(built_in: int) -> None:
    """Keep a forked consumer's cyclic GC off the objects it inherited.

    A DataLoader worker forked from a process that imported torch inherits
    hundreds of thousands of objects, and the first full collection in the
    worker (due soon after the fork: the parent's import garbage counts
    toward it) walks them all, writing to each object's header and so
    copying every page of the parent's heap: 0.14 s of CPU per worker per
    epoch (``loader_peers``, S3), more than the worker spent receiving its
    32 MiB. :func:`gc.freeze` moves them to the permanent generation (no
    walk, constant time), so the worker's collections see only what it
    allocates itself. The cost: a reference cycle among the inherited
    objects is not collected in the worker (reference counting still frees
    everything else); it was in memory at the fork anyway.

    Parameters
    ----------
    built_in
        The process the dataset was built in: it is never touched, nor is
        a process that froze already.
    """
    global _frozen_in
    pid = os.getpid()
    if pid in (built_in, _frozen_in):
        return
    _frozen_in = pid
    gc.freeze()
