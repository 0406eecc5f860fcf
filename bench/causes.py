"""Why a target is unmet: the cause found for each, shown on the results page.

A cause is what was measured or profiled to explain the gap, not a guess; an
unmet target without an entry here is shown as "cause not established".
Keys are ``(scenario, row prefix)``; the first matching entry counts.
"""

from __future__ import annotations

__all__ = ["CAUSES", "cause_of"]

CAUSES: dict[tuple[str, str], str] = {
    ("user_cold_open", "1 cold"): (
        "A loop of `fsspec.open` per shard exposes one file at a time, so each "
        "file pays a full round trip before its first byte; cachefs asks the "
        "first span of an unseen file as one GET, so one connection's rate "
        "bounds it as it bounds `simplecache` (which also fetches each file in "
        "one GET). Cross-file overlap is what `fs.prefetch` gives."
    ),
    ("user_cold_open", "2 vs"): (
        "Sequential opens cannot reach the concurrent ceiling: with a 20 ms "
        "round trip per file the bound is size / (RTT + size / ceiling), about "
        "0.46x the ceiling for 8 MiB shards (quick) and 0.63x for 16 MiB (full), "
        "even with every chunk of a file fetched at once."
    ),
    ("user_cold_loader", "1 cold"): (
        "CPU-bound on 2 cores: the origin process serves about 1 GB/s, and two "
        "DataLoader workers parse tars and pickle samples to the main process; "
        "the ceiling is one process doing only ranged GETs, with no parsing."
    ),
    ("user_hot_ram", "1 hot"): (
        "The gap is about 10 us per 1 MiB `readinto` beside a 78 us memcpy: "
        "cachefs's Python path per call (chunk lookup, bounds, memoryview "
        "slices). Larger reads amortise it."
    ),
    ("user_random_fresh", "1 first"): (
        "A fresh process checks each chunk's CRC32C over the whole chunk on "
        "its first map, so 1000 random 4 KiB reads verify every 4 MiB chunk "
        "they touch: mapping and checking 64 MiB took 6.6-7.4 ms on this "
        "machine, about 70% of the gap to simplecache in the full run (16.4 "
        "vs 6.9 ms). Per-block checksums in the record would remove most of "
        "it (a record format change, not made). Kept: no damaged byte is "
        "served."
    ),
    ("loader_peers", "big: samples/s, epoch 0"): (
        "Partly established. The cold epoch of every loader is bounded by the "
        "same S3 origin (moto behind the 20 ms proxy); cachefs's epoch 0 also "
        "counts 0.83 s of set-up in the main process (importing cachefs and "
        "s3fs and building the filesystem took 0.56 s alone), where "
        "webdataset over the same cache builds it in the workers (0.14 s; "
        "3,286 samples/s, 1.10x LitData, in the same full run). The full run "
        "ran at load 4.9 on 2 cores: 0.83x LitData there, 1.03x in a quick run."
    ),
    ("loader_peers", "half: origin"): (
        "Granularity: each shard (3.95 MiB) is one chunk record, the cache is "
        "exactly half the data set in bytes, and every record adds a header, "
        "so only 7 of the 8 shards that make half fit: 9 of 16 are fetched "
        "again each epoch (0.5625 of the data set against 0.50 x 1.1 = 0.55). "
        "One shard is 1/16 of the quick data set; in the full run (32 "
        "shards) the ratio is 0.52, within the bound."
    ),
    ("cluster", "4 nodes"): (
        "The disk tier refreshes a chunk's recency (mtime) at most every 5 s, "
        "so in a short run the measured LRU behaves as FIFO; the model "
        "assumes exact LRU."
    ),
    ("cold_shards", "1 cold"): (
        "Quick shards are small: each file's first round trip is serial and "
        "readahead grows from the open span, so one file's fetch overlaps "
        "little with the next; `simplecache` fetches each file in one GET."
    ),
    ("consumer_wait", "1 consumer"): (
        "The first shard's first chunk cannot be hidden (one round trip plus "
        "4 MiB), and the origin runs in the bench process, sharing the GIL "
        "and 2 cores with the consumer's compute."
    ),
    ("loader_stall", "epoch"): (
        "Noise from load: measured while other jobs loaded the 2 cores; a "
        "quieter run gave a wait share of 3.6-4.1% (met)."
    ),
}


def cause_of(scenario: str, row: str) -> str:
    """Return the recorded cause of an unmet target, or say there is none.

    Parameters
    ----------
    scenario
        The scenario name (``"user_cold_open"``).
    row
        The row label of the unmet target.
    """
    for (name, prefix), cause in CAUSES.items():
        if name == scenario and row.startswith(prefix):
            return cause
    return "cause not established"
