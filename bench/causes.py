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
        "Measured this round: worker fork and start take 0.035 s, the "
        "transfer about as long as the ceiling (0.14 s), and a warm epoch "
        "over the same 4,096 samples with 2 workers already takes 0.11-0.25 "
        "s, so 0.7x (about 0.2 s) needs sample parsing to overlap the "
        "transfer almost entirely. Quick runs: 0.26-0.36x at ac125c5, "
        "0.38-0.54x after the worker gc.freeze, 0.42x on the fifth round's "
        "page, 0.65x on the sixth's (the VM's free page reporting paused), "
        "and 0.48x, 0.68x and 0.70x in three more sixth-round runs (epochs "
        "of 0.24-0.57 s): around the target, with the machine's noise."
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
        "Each 16 KiB block a first read touches is checked once (XXH3, record "
        "format 5): 1000 random reads touch 938 blocks (14.7 MiB), and "
        "hashing a block whose pages are not in the CPU's caches costs "
        "1.45-2.0 us against 1.25 us to copy it, about 1.8-1.9 ms of the "
        "pass; each chunk's first map adds about 60 us (8 here). Phase by "
        "phase (new process, 11 alternated runs, medians): open 1.49 ms "
        "(simplecache 1.37), other 999 reads 3.20 ms (2.06); at 768bf96 "
        "2.20 and 3.61. A background whole-chunk check was tried and not "
        "kept (0.2-0.3 ms saved, 32 MiB hashed on top). Kept: no byte is "
        "served unchecked."
    ),
    ("loader_peers", "big: samples/s, epoch 0"): (
        "Set-up, not the fill: epoch 0 counts the main process's set-up, and "
        "cachefs's is building the S3 client (s3fs/botocore: its service "
        "models parsed, 0.11-0.19 s in a quiet process) before the "
        "DataLoader workers fork, so that each worker's first request in "
        "every later epoch skips that work (the warm epochs' targets are "
        "met). Sixth round, free page reporting paused: the quick run's "
        "cold epoch took 0.447 s, 0.187 of it set-up, against "
        "s3torchconnector's 0.463 (1.04x; 1.78x without the set-up); a full "
        "run (32 shards of 8 MiB) 1.488 s, 0.294 set-up, against 1.444 "
        "(0.97x; 1.21x without it). s3torchconnector builds its client in "
        "the workers, in native code. Earlier quick runs: 1.36x, 1.12x and "
        "1.18x after the worker gc.freeze."
    ),
    ("loader_peers", "half: origin"): (
        "Granularity: each shard (3.95 MiB) is one chunk record, the cache is "
        "exactly half the data set in bytes, and every record adds a header, "
        "so only 7 of the 8 shards that make half fit: 9 of 16 are fetched "
        "again each epoch (0.5625 of the data set against 0.50 x 1.1 = 0.55). "
        "One shard is 1/16 of the quick data set; in the full run (32 "
        "shards) the ratio is 0.52, within the bound."
    ),
    ("user_warm_fresh", "1 warm"): (
        "The reference moved: on this round's machine a local readinto of "
        "warm page cache runs at 22-25 GB/s (8.3 GB/s on the last round's "
        "page), while cachefs went from 6.15 to 6.9-9.5 GB/s with XXH3 "
        "checks (format 5). Same machine state, alternated: 6.55 GB/s at "
        "0ffde27 and 6.86 now (0.27x and 0.30x local). What is left is a "
        "new process mapping each chunk (page faults on first touch of the "
        "map) and checking it once, against the kernel's copy out of the "
        "page cache."
    ),
    ("hot_path", "3 seq"): (
        "Not a change of cachefs's: alternated on one machine state, quick "
        "runs gave 0.76x and 0.70x local readinto at 0ffde27 against 0.67x "
        "and 0.58x now, and an in-process loop over the same warm disk "
        "chunks, alternated 5 times, 18.3-28.1 GB/s now against "
        "19.6-29.0 at 0ffde27; both sides copy out of the same maps. The "
        "local reference here runs at 40-50 GB/s (26 GB/s on the last "
        "round's page, where this row was met)."
    ),
    ("mount", "seq 1 MiB first"): (
        "The local reference moved (4.7-5.3 GB/s here, about 2 GB/s on the "
        "last round's page, where this row was met at 0.38x). Alternated on "
        "one machine state: mount first read 0.23x and 0.19x at 0ffde27, "
        "0.19x and 0.21x now (0.80-1.16 GB/s both)."
    ),
    ("cold_fill", "1 "): (
        "Read the machine's free_page_reporting first: where the bench could "
        "not pause the VM's free page reporting, a pass that overlaps a "
        "report pays a host fault per page it allocates, and the rows "
        "writing through the page cache turn bimodal by the clock (fifth "
        "round: a buffered cachefs pass 1.05-1.27 CPU s/GiB or 1.6-3.7, the "
        "reference 0.69-0.87 but 1.30 and 3.03 in two passes); paused, the "
        "sixth round's full run met 16 of 16. What cachefs adds to the "
        "reference's work: the two XXH3 passes at store time (0.13 s/GiB: "
        "39 ms of 16 KiB block checks and 26 ms of whole-payload check per "
        "512 MiB), the reader's copy into its readinto buffer (about 0.1), "
        "the interpreter and file operations. The direct rows' MB/s (one "
        "Python process) is bounded by the device's O_DIRECT write rate "
        "here (1.14-1.26 GB/s for 4 MiB files from 1-4 threads alike), "
        "while the reference's buffered writes never reach the device within "
        "its pass (about 517 MB still dirty at its end)."
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
