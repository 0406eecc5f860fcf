"""Which samples each rank and worker reads in an epoch.

The rules, for ``W`` ranks and ``N`` samples in all:

1. **Shards belong to ranks**: rank ``r`` owns every ``W``-th shard from
   ``r`` (:meth:`World.rank_share`, the split ``cachefs warm --rank`` uses),
   the same shards in every epoch, so a node's cache holds its own ranks'
   shards and nothing else. Each epoch shuffles the order of a rank's shards.
2. **Every rank yields the same count** ``n`` (:meth:`World.rank_samples`):
   a rank with more than ``n`` samples keeps the first ``n`` of its epoch
   order and gives up the rest; ranks with fewer take what they lack from
   those given up, in rank order. With ``drop_last`` the ``N % W`` samples
   nobody takes are not delivered; without it the missing ones are taken
   again from the start of the ranks' orders (rank 0 first).
3. **Workers split their rank's list** into contiguous parts whose sizes
   depend only on ``n`` (:meth:`World.worker_range`), so every rank makes the
   same number of batches.

Everything here is a pure function of the sample counts and the epoch's
orders, so every process computes every rank's part alike.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

__all__ = ["Span", "cut", "length", "rank_plan"]

#: ``(shard, first, stop)``: samples ``[first, stop)`` of one shard.
Span = tuple[int, int, int]


def length(spans: Sequence[Span]) -> int:
    """Return the number of samples in ``spans``."""
    return sum(b - a for _, a, b in spans)


def cut(spans: Sequence[Span], lo: int, hi: int) -> list[Span]:
    """Return positions ``[lo, hi)`` of the samples of ``spans``, as spans.

    Positions at or past the end wrap around to the start. Touching pieces
    of one shard are joined.
    """
    if hi <= lo:
        return []
    spans = [s for s in spans if s[2] > s[1]]
    starts = list(accumulate((b - a for _, a, b in spans), initial=0))
    total = starts[-1]
    if total == 0:
        raise ValueError("cannot take samples from an empty sequence")
    out: list[Span] = []
    pos = lo
    while pos < hi:
        p = pos % total
        k = bisect_right(starts, p) - 1
        shard, a, b = spans[k]
        first = a + p - starts[k]
        take = min(b - first, hi - pos)
        if out and out[-1][0] == shard and out[-1][2] == first:
            out[-1] = (shard, out[-1][1], first + take)
        else:
            out.append((shard, first, first + take))
        pos += take
    return out


def rank_plan(
    sequences: Sequence[Sequence[Span]], per_rank: int, rank: int
) -> list[Span]:
    """Return the ``per_rank`` samples rank ``rank`` reads, in order.

    Parameters
    ----------
    sequences
        For each rank, its own samples in this epoch's order.
    per_rank
        Samples every rank yields (see :meth:`World.rank_samples`).
    rank
        The rank asked about.
    """
    counts = [length(s) for s in sequences]
    own = cut(sequences[rank], 0, min(counts[rank], per_rank))
    need = per_rank - counts[rank]
    if need <= 0:
        return own
    pool = [
        span
        for r, seq in enumerate(sequences)
        if counts[r] > per_rank
        for span in cut(seq, per_rank, counts[r])
    ]
    short = per_rank * len(sequences) - sum(counts)
    if short > 0:  # padding: repeat samples from the start of the orders
        pool += cut([span for seq in sequences for span in seq], 0, short)
    offset = sum(max(0, per_rank - c) for c in counts[:rank])
    return own + cut(pool, offset, offset + need)
