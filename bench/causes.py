"""Why a target is unmet: the cause found for each, shown on the results page.

A cause is what was measured or profiled to explain the gap, not a guess; an
unmet target without an entry here is shown as "cause not established".
Keys are ``(scenario, row prefix)``; the first matching entry counts.
"""

from __future__ import annotations

__all__ = ["CAUSES", "cause_of"]

CAUSES: dict[tuple[str, str], str] = {
    ("user_cold_open", "1 cold"): (
        "CPU-bound on 2 cores shared with the origin process: a cold pass "
        "spends 0.4-0.6 s of CPU per 64 MiB (yappi: aiohttp's stream, landing "
        "the socket's pieces in huge-page buffers at 5.9 ms per 4 MiB, disk "
        "writes in two writer threads). A loop of `fsspec.open` exposes one "
        "file at a time, so each file also pays a round trip before its "
        "first byte. Opening with one request per chunk at once was built "
        "and measured no gain (146 against 147-162 MB/s), so it was not kept; "
        "cross-file overlap is what `fs.prefetch` and `ShardDataset` give."
    ),
    ("user_cold_open", "2 vs"): (
        "Sequential opens cannot reach the concurrent ceiling: with a 20 ms "
        "round trip per file the bound is (size / ceiling) / (RTT + size / "
        "ceiling), about 0.47x the quick run's ceiling (8 MiB shards) and "
        "0.51x the full run's (16 MiB), even with every chunk of a file "
        "fetched at once."
    ),
    ("user_cold_loader", "1 cold"): (
        "CPU-bound on 2 cores: the origin process serves about 1 GB/s, and two "
        "DataLoader workers parse tars and pickle samples to the main process; "
        "the ceiling is one process doing only ranged GETs, with no parsing. "
        "Quick runs at commit ac125c5 and before it: 0.26-0.36x (161-284 "
        "MB/s against a ceiling of 626-815 MB/s), one GET per shard, 16 in "
        "all. As in loader_peers, each worker asks for all its shards at "
        "once, so its first sample comes with nearly the last byte and "
        "parsing does not overlap the transfer (measured there, over S3)."
    ),
    ("user_hot_ram", "1 hot"): (
        "Partly established: 0.83-0.88x against a 0.9x target. In a helper "
        "script, 1 MiB `readinto` from the RAM tier took 99-112 us per MiB "
        "and a bare slice copy out of the same chunk views 95-97 us, so "
        "cachefs's own path costs a few us per call; the rest lies between "
        "copying slices of 4 MiB chunk maps (2 MiB-aligned, huge pages "
        "granted) and the reference's np.copyto over one region."
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
        "Partly established. The bench counts the main process's set-up in "
        "epoch 0 (0.39-0.42 s for cachefs: importing cachefs, building the "
        "filesystem and building the S3 client once; 0.008 s for "
        "s3torchconnector). Until commit ac125c5 every forked DataLoader worker "
        "also parsed botocore's S3 models before its first request (0.07 s of "
        "CPU idle, more under load); a probe of this data set put each "
        "worker's CPU for the cold epoch at 0.26-0.40 s before and 0.08-0.17 s "
        "after (alternated runs), and the quick run went 1,318 and 1,886 -> "
        "1,540 and 2,028 samples/s (old and new code alternated, load 3-4; "
        "s3torchconnector 3,308-4,132 in the same runs). Without the set-up, "
        "a probe of the same epoch (same data set, origin and loader, new "
        "code, 7 runs) took 0.21-0.54 s, against s3torchconnector's "
        "0.43-0.62 s in the bench runs: most of the gap left is the set-up "
        "the bench counts (in a separate script, importing cachefs took "
        "0.25 s, aiohttp 0.2 s of "
        "it; building the filesystem 0.14 s; the S3 client 0.22 s). Also: each "
        "worker puts all its shards' first reads in flight at once (one GET "
        "per whole 4 MiB shard), so parsing overlaps the transfer little: the "
        "first sample came 0.28-0.66 s into 0.47-1.03 s epochs with the old "
        "code, 0.06-0.34 s into 0.21-0.54 s with the new, where "
        "s3torchconnector streams one "
        "object per worker sample by sample. Fewer first reads in flight put "
        "the first sample earlier but cut the origin's throughput (one "
        "process prefetching 8 shards: 0.09-0.13 s with 8 connections, 0.13 "
        "s with 4, 0.22-0.27 s with 2: the proxy's per-connection rate), and "
        "the epoch did not improve, so that change was not kept; a reader "
        "that starts on a chunk before it has fully landed would be needed."
    ),
    ("loader_peers", "half: origin"): (
        "Granularity: each shard (3.95 MiB) is one chunk record, the cache is "
        "exactly half the data set in bytes, and every record adds a header, "
        "so only 7 of the 8 shards that make half fit: 9 of 16 are fetched "
        "again each epoch (0.5625 of the data set against 0.50 x 1.1 = 0.55). "
        "One shard is 1/16 of the quick data set; in the full run (32 "
        "shards) the ratio is 0.52, within the bound."
    ),
    ("cold_fill", "1 "): (
        "Not yet the wire's cost, and not steady. At 51b0574 (before issue "
        "20) cachefs fsspec.open cost 4.32 and fs.prefetch 1.89 CPU s/GiB "
        "against 0.80 for the zero-copy receive + write reference. Now "
        "(receive path, batched publishes, reused landing buffers) two full "
        "runs an hour apart on a quiet machine gave medians of 1.33 and 2.27 "
        "for fsspec.open and 1.72 and 2.15 for prefetch, with single passes "
        "from 0.99 to 3.06, while the reference stayed at 0.73-0.93: the "
        "cachefs passes, which publish a new file per 4 MiB chunk under "
        "cache_dir, swing with the page cache's writeback state, the "
        "reference (one file per origin file) does not; its cause is not "
        "yet measured. Profiles of the quick passes put the rest in the "
        "disk tier's new inode per chunk (8% of samples against 1.7% for "
        "the reference), GIL hand-offs between the loop, the reader and the "
        "writer thread (35-60 futex calls per chunk) and per-block CRC32C "
        "(3%). The ShardDataset epoch adds tar parsing and sample delivery "
        "through DataLoader workers, work the reference does not do."
    ),
    ("cluster", "4 nodes"): (
        "The disk tier refreshes a chunk's recency (mtime) at most every 5 s, "
        "so in a short run the measured LRU behaves as FIFO; the model "
        "assumes exact LRU."
    ),
    ("cold_shards", "1 cold"): (
        "cachefs readahead makes one request per shard, as the '1 GET/shard, "
        "20 ms' reference does (285 MB/s in the same kind of run against "
        "167); the gap is client CPU on 2 cores shared with an origin in the "
        "same process (landing buffers, disk writes, the reads): see "
        "user_cold_open. prefetch, which overlaps files, meets both targets."
    ),
    ("consumer_wait", "1 consumer"): (
        "The first shard's first chunk cannot be hidden (one round trip plus "
        "4 MiB), and the origin runs in the bench process, sharing the GIL "
        "and 2 cores with the consumer's compute."
    ),
    ("loader_stall", "epoch"): (
        "The warm wait is mostly the DataLoader's own: worker start and the "
        "hand-off of each batch (about 2 ms, the same with data in memory), "
        "against a 50 ms step. Plain fsspec http, fetching every epoch, "
        "waits 7-9% in the same runs. Back to back on a quiet machine the "
        "code before and after the issue-13 refactor measured 6.2-6.6% and "
        "5.7-6.2%; an earlier run gave 3.6-4.1% (met)."
    ),
    ("dlio", "AU epoch"): (
        "Disk-bound here: with the page cache dropped the full data set "
        "(8.44 GB) comes from this machine's disk (0.2-1.7 GB/s in the mount "
        "bench's runs), and local files themselves reach only 40.6% AU in "
        "epoch 1; the mount reads its chunk files from the same disk through "
        "FUSE (12.3%). In epoch 2 local files come from the page cache "
        "(98.7%) and the warm mount reaches 81.1%: that gap, and the FUSE "
        "share of epoch 1's, are not yet measured. The quick set (4.36 GB) "
        "met both targets."
    ),
    ("mount", "seq 1 MiB re-read"): (
        "Kernel-side: no read request reaches the daemon during a re-read "
        "(its counters: 0 reads, every open with keep_cache), so the gap is "
        "the kernel's FUSE page-cache read path; the reading process spent "
        "0.27 CPU s/GiB re-reading through the mount against 0.13 s/GiB "
        "re-reading the ext4 files in the same run."
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
