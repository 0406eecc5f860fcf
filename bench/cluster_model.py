"""A model of a training cluster's data path, per epoch.

N nodes of G GPUs each read a dataset once per epoch. Each epoch the dataset is
shuffled and split across ranks the way PyTorch's ``DistributedSampler`` does
(a seeded permutation, rank ``r`` takes positions ``r, r + W, r + 2W, ...``), so
a node reads a *different* random ``1/N`` of the dataset every epoch. A read
walks down the tiers: the node's NVMe (disk tier, ``nvme_bytes`` per node),
the cluster-wide shared tier (``shared_bytes``), the origin. A chunk found in
the shared tier is stored on the node's disk; a chunk fetched from the origin
is stored on the node's disk and published to the shared tier, as cachefs
does. Each tier evicts with the cluster's policy: ``"lru"`` or ``"epoch"``
(keep-once-full, :class:`cachefs.policy.EpochPolicy`).

One model, two evaluations:

- :func:`simulate` steps through given shuffles chunk by chunk (exact for
  those orders; the real runs of ``bench/cluster.py`` use the same orders);
- :func:`expected` gives the expectation of the same figures over random
  shuffles in closed form, so a 760-node, exabyte projection takes
  microseconds.

Time per epoch is a bottleneck bound: reads are prefetched and overlap, so an
epoch lasts as long as its busiest resource (a node's NVMe, a node's network
link, the shared tier's aggregate bandwidth, the origin's) needs.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Cluster",
    "EpochFigures",
    "Shards",
    "expected",
    "node_streams",
    "shuffle_order",
    "simulate",
]

# cachefs's disk tier evicts down to this fraction of its budget.
DISK_LOW_WATERMARK = 0.95
POLICIES = ("lru", "epoch")


@dataclass(frozen=True, slots=True)
class Cluster:
    """The machines and the cache settings.

    Attributes
    ----------
    nodes, gpus_per_node
        ``N`` and ``G``; one rank per GPU.
    nvme_bytes
        Disk-tier budget per node (``0``: no disk tier).
    nvme_bw
        Read bandwidth of one node's disk tier, bytes/s.
    nic_bw
        Bandwidth of one node's link to the shared tier and the origin, bytes/s.
    shared_bytes
        Shared-tier capacity (``0``: none; ``math.inf``: unbounded).
    shared_bw
        Aggregate shared-tier bandwidth (reads and publishes), bytes/s.
    origin_bw
        Aggregate origin bandwidth, bytes/s.
    policy
        ``"lru"`` or ``"epoch"``, for the disk and the shared tier.
    record_overhead
        Bytes a stored chunk costs beyond its payload (cachefs's header).
    gpu_demand
        Bytes/s one GPU consumes at most (``math.inf``: report what the data
        path can supply).
    """

    nodes: int
    gpus_per_node: int
    nvme_bytes: float
    nvme_bw: float
    nic_bw: float
    shared_bytes: float
    shared_bw: float
    origin_bw: float
    policy: str = "epoch"
    record_overhead: int = 0
    gpu_demand: float = math.inf

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("nodes and gpus_per_node must be >= 1")

    @property
    def ranks(self) -> int:
        """World size ``N * G``."""
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True, slots=True)
class Shards:
    """A dataset of ``count`` shards of ``shard_bytes``, cached in chunks."""

    count: int
    shard_bytes: int
    chunk_bytes: int

    @property
    def nbytes(self) -> int:
        """Dataset size in bytes."""
        return self.count * self.shard_bytes

    def chunk_sizes(self) -> list[int]:
        """Payload sizes of one shard's chunks."""
        full, rest = divmod(self.shard_bytes, self.chunk_bytes)
        return [self.chunk_bytes] * full + ([rest] if rest else [])


@dataclass(frozen=True, slots=True)
class EpochFigures:
    """What one epoch cost, cluster-wide.

    Byte counts are the bytes read from each tier (payload); ``read_bytes``
    is their sum (the dataset, plus any ``DistributedSampler`` padding).
    """

    epoch: int
    read_bytes: float
    disk_bytes: float
    shared_bytes: float
    origin_bytes: float
    published_bytes: float
    seconds: float
    per_gpu_bw: float
    bottleneck: str

    @property
    def disk_hit(self) -> float:
        """Fraction of the bytes read served by node disks."""
        return self.disk_bytes / self.read_bytes

    @property
    def shared_hit(self) -> float:
        """Fraction of the bytes read served by the shared tier."""
        return self.shared_bytes / self.read_bytes

    @property
    def origin_fraction(self) -> float:
        """Fraction of the bytes read fetched from the origin."""
        return self.origin_bytes / self.read_bytes


# -- the shuffle ---------------------------------------------------------------


def shuffle_order(count: int, seed: int, epoch: int) -> list[int]:
    """Return epoch ``epoch``'s permutation of ``range(count)`` (seeded)."""
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def node_streams(
    order: Sequence[int], nodes: int, gpus_per_node: int
) -> list[list[int]]:
    """Split a permutation across ranks as ``DistributedSampler`` does.

    The order is padded by repeating its head to a multiple of the world size
    ``W``; rank ``r`` takes positions ``r::W`` and node ``n`` hosts ranks
    ``n*G .. n*G+G-1``. Returns each node's shards in the order it reads them
    (its ranks interleaved, step by step).
    """
    world = nodes * gpus_per_node
    padded = list(order)
    padded += padded[: (-len(padded)) % world]
    streams: list[list[int]] = [[] for _ in range(nodes)]
    for position, shard in enumerate(padded):
        streams[(position % world) // gpus_per_node].append(shard)
    return streams


# -- timing ----------------------------------------------------------------------


def _epoch_time(
    cluster: Cluster,
    *,
    node_disk: Sequence[float],
    node_net: Sequence[float],
    shared_load: float,
    origin_bytes: float,
    read_bytes: float,
) -> tuple[float, float, str]:
    """Return (seconds, per-GPU bytes/s, bottleneck) of one epoch."""

    def div(num: float, bw: float) -> float:
        return num / bw if num > 0 else 0.0

    gpus = cluster.ranks
    times = {
        "node NVMe": max(div(b, cluster.nvme_bw) for b in node_disk),
        "node network": max(div(b, cluster.nic_bw) for b in node_net),
        "shared tier": div(shared_load, cluster.shared_bw),
        "origin": div(origin_bytes, cluster.origin_bw),
        "GPU demand": div(read_bytes / gpus, cluster.gpu_demand),
    }
    bottleneck = max(times, key=lambda k: times[k])
    seconds = times[bottleneck]
    per_gpu = read_bytes / gpus / seconds if seconds > 0 else math.inf
    return seconds, per_gpu, bottleneck


# -- simulation ----------------------------------------------------------------


class _Store:
    """One tier's contents under a policy, in payload + overhead bytes."""

    __slots__ = ("capacity", "entries", "low_watermark", "overhead", "policy", "usage")

    def __init__(
        self, capacity: float, policy: str, overhead: int, low_watermark: float
    ) -> None:
        self.capacity = capacity
        self.policy = policy
        self.overhead = overhead
        self.low_watermark = low_watermark
        self.entries: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.usage = 0

    def get(self, key: tuple[int, int]) -> bool:
        if key not in self.entries:
            return False
        if self.policy == "lru":
            self.entries.move_to_end(key)
        return True

    def put(self, key: tuple[int, int], size: int) -> bool:
        """Store ``key``; return whether it was admitted."""
        if key in self.entries:
            return False
        record = size + self.overhead
        if self.policy == "epoch":
            if self.usage + record > self.capacity:
                return False
        elif record > self.capacity:
            return False
        self.entries[key] = record
        self.usage += record
        if self.usage > self.capacity:  # lru: evict oldest to the watermark
            target = self.capacity * self.low_watermark
            while self.usage > target and self.entries:
                _, gone = self.entries.popitem(last=False)
                self.usage -= gone
        return True


def simulate(
    cluster: Cluster,
    shards: Shards,
    epochs: int,
    *,
    seed: int = 0,
    orders: Sequence[Sequence[int]] | None = None,
) -> list[EpochFigures]:
    """Step through ``epochs`` shuffled epochs chunk by chunk.

    Parameters
    ----------
    cluster, shards
        The machines and the dataset.
    epochs
        Number of epochs.
    seed
        Seed of :func:`shuffle_order` when ``orders`` is not given.
    orders
        One permutation of ``range(shards.count)`` per epoch.

    Notes
    -----
    Nodes advance in lock step (position by position of the permutation);
    they interact only through the shared tier. Node disks evict to
    :data:`DISK_LOW_WATERMARK` like cachefs's; the shared tier evicts exactly
    to its capacity.
    """
    if orders is None:
        orders = [shuffle_order(shards.count, seed, e) for e in range(epochs)]
    sizes = shards.chunk_sizes()
    overhead = cluster.record_overhead
    disks = [
        _Store(cluster.nvme_bytes, cluster.policy, overhead, DISK_LOW_WATERMARK)
        for _ in range(cluster.nodes)
    ]
    shared = (
        _Store(cluster.shared_bytes, cluster.policy, overhead, 1.0)
        if cluster.shared_bytes > 0
        else None
    )
    out: list[EpochFigures] = []
    for epoch in range(epochs):
        streams = node_streams(orders[epoch], cluster.nodes, cluster.gpus_per_node)
        node_disk = [0.0] * cluster.nodes
        node_net = [0.0] * cluster.nodes
        shared_hits = origin = published = 0.0
        steps = max(len(s) for s in streams)
        for step in range(steps):
            for node, stream in enumerate(streams):
                if step >= len(stream):
                    continue
                shard = stream[step]
                disk = disks[node]
                for index, size in enumerate(sizes):
                    key = (shard, index)
                    if disk.get(key):
                        node_disk[node] += size
                        continue
                    node_net[node] += size
                    if shared is not None and shared.get(key):
                        shared_hits += size
                    else:
                        origin += size
                        if shared is not None and shared.put(key, size):
                            published += size
                    disk.put(key, size)
        read = sum(node_disk) + sum(node_net)
        seconds, per_gpu, bottleneck = _epoch_time(
            cluster,
            node_disk=node_disk,
            node_net=node_net,
            shared_load=shared_hits + published,
            origin_bytes=origin,
            read_bytes=read,
        )
        out.append(
            EpochFigures(
                epoch=epoch,
                read_bytes=read,
                disk_bytes=sum(node_disk),
                shared_bytes=shared_hits,
                origin_bytes=origin,
                published_bytes=published,
                seconds=seconds,
                per_gpu_bw=per_gpu,
                bottleneck=bottleneck,
            )
        )
    return out


# -- expectation -----------------------------------------------------------------


def _lru_hit(
    read_fraction: float, capacity: float, epochs_before: int, first: float
) -> float:
    """Expected LRU hit rate of a reader of a random ``read_fraction`` of the
    dataset per epoch (``first`` in epoch 0), with ``capacity`` (a fraction of
    the dataset).

    A chunk read now was last read by this reader ``k`` epochs ago with
    probability ``f_k (1 - f)^(k-1)`` at a uniform position ``a`` of that
    epoch; it is still cached if the distinct bytes read since (the tail of
    that epoch, ``k - 1`` whole epochs, the head ``p`` of this one, each a
    random subset) fit in the capacity: ``(1 - a f_k)(1 - f)^(k-1)(1 - p f) >
    1 - capacity``. Averaged over ``a`` numerically and ``p`` exactly.
    """
    f = min(max(read_fraction, 0.0), 1.0)
    if f == 0 or capacity <= 0 or epochs_before < 1:
        return 0.0
    total = 0.0
    steps = 256
    for k in range(1, epochs_before + 1):
        f_k = first if k == epochs_before else f
        weight = f_k * (1 - f) ** (k - 1)
        if weight < 1e-12:
            break
        if capacity >= 1:  # never evicts: a hit iff read before
            total += weight
            continue
        tau = (1 - capacity) / (1 - f) ** (k - 1)
        if tau >= 1:
            break  # k - 1 whole epochs already overflow the capacity
        inside = 0.0
        for i in range(steps):
            x = 1 - (i + 0.5) / steps * f_k
            # need 1 - p f > tau / x  =>  p < (1 - tau / x) / f
            inside += min(1.0, max(0.0, (1 - tau / x) / f))
        total += weight * inside / steps
    return min(total, 1.0)


def expected(
    cluster: Cluster, dataset_bytes: float, chunk_bytes: int, epochs: int
) -> list[EpochFigures]:
    """Expected per-epoch figures over random shuffles, in closed form.

    Assumes every node reads ``1/N`` of the dataset per epoch and that what
    a node's disk holds and what the shared tier holds are independent
    random subsets (exact when either holds all or nothing of the dataset).
    """
    n = cluster.nodes
    d = float(dataset_bytes)
    payload = chunk_bytes / (chunk_bytes + cluster.record_overhead)
    c = cluster.nvme_bytes * payload / d  # node disk, fraction of the dataset
    s = cluster.shared_bytes * payload / d if cluster.shared_bytes > 0 else 0.0
    has_shared = cluster.shared_bytes > 0
    node_read = d / n
    disk_held = shared_held = 0.0  # epoch policy: fractions held
    out: list[EpochFigures] = []
    for epoch in range(epochs):
        if cluster.policy == "epoch":
            h_disk = disk_held
            h_shared = shared_held if has_shared else 0.0
        else:
            eff = c * (1 + DISK_LOW_WATERMARK) / 2
            h_disk = _lru_hit(1 / n, eff, epoch, 1 / n)
            h_shared = _lru_hit(1 - h_disk, s, epoch, 1.0) if has_shared else 0.0
        origin_frac = (1 - h_disk) * (1 - h_shared)
        if cluster.policy == "epoch":
            published_frac = min(s, shared_held + origin_frac) - shared_held
            disk_held = min(c, disk_held + (1 - disk_held) / n)
            shared_held = min(s, shared_held + origin_frac) if has_shared else 0.0
        else:
            published_frac = origin_frac if has_shared else 0.0
        disk_b = h_disk * d
        shared_b = (1 - h_disk) * h_shared * d
        origin_b = origin_frac * d
        seconds, per_gpu, bottleneck = _epoch_time(
            cluster,
            node_disk=[h_disk * node_read],
            node_net=[(1 - h_disk) * node_read],
            shared_load=shared_b + published_frac * d,
            origin_bytes=origin_b,
            read_bytes=d,
        )
        out.append(
            EpochFigures(
                epoch=epoch,
                read_bytes=d,
                disk_bytes=disk_b,
                shared_bytes=shared_b,
                origin_bytes=origin_b,
                published_bytes=published_frac * d,
                seconds=seconds,
                per_gpu_bw=per_gpu,
                bottleneck=bottleneck,
            )
        )
    return out
