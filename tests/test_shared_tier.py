"""The shared tier: two "nodes" (separate processes, separate disk tiers)
sharing a directory. Origin traffic is measured at the origin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin, make_shards

pytest_plugins = ("tests.s3_server",)

MiB = 2**20
REPO = Path(__file__).resolve().parents[1]

NODE = """
import hashlib, json, sys
import fsspec
from cachefs import CacheFileSystem
urls, cache_dir, shared, lease = json.loads(sys.argv[1])
fs = CacheFileSystem(target_protocol="http", cache_dir=cache_dir, shared=shared,
                     chunk_size="256kB", shared_lease=lease, skip_instance_cache=True)
digests = {}
for url in urls:
    digests[url] = hashlib.sha256(fs.cat_file(url)).hexdigest()
fs.wait_idle()
print(json.dumps({"digests": digests, "stats": fs.cache_stats()}))
"""


def run_node(
    urls: list[str], cache_dir: Path, shared: str | dict, lease: float = 30.0
) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", NODE, json.dumps([urls, str(cache_dir), shared, lease])],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    return json.loads(out.stdout)


@pytest.fixture
def dataset() -> dict[str, bytes]:
    return make_shards(6, MiB + 4321, seed=17, prefix="ds/")


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_second_node_reads_from_the_shared_tier(dataset, tmp_path):
    shared = f"file://{tmp_path / 'shared'}"
    total = sum(len(v) for v in dataset.values())
    with HTTPOrigin(files=dataset) as origin:
        urls = [origin.url_for(n) for n in sorted(dataset)]
        a = run_node(urls, tmp_path / "node-a", shared)
        assert origin.stats.bytes_sent == total  # node A: the dataset, once
        assert a["stats"]["shared"]["puts"] > 0
        origin.reset_stats()
        b = run_node(urls, tmp_path / "node-b", shared)
        assert origin.stats.bytes_sent == 0  # node B: nothing from the origin
        assert b["stats"]["shared"]["hit_bytes"] == total
        want = {origin.url_for(n): sha(d) for n, d in dataset.items()}
    assert a["digests"] == want and b["digests"] == want


def test_damaged_shared_chunk_is_not_served(dataset, tmp_path):
    shared_dir = tmp_path / "shared"
    with HTTPOrigin(files=dataset) as origin:
        urls = [origin.url_for(n) for n in sorted(dataset)]
        run_node(urls, tmp_path / "node-a", f"file://{shared_dir}")
        records = sorted(p for p in (shared_dir / "chunks").rglob("*") if p.is_file())
        victims = records[:3]
        for i, path in enumerate(victims):
            raw = bytearray(path.read_bytes())
            if i == 0:
                raw[-1] ^= 0x01  # a flipped bit in the payload
            elif i == 1:
                raw = raw[: len(raw) // 2]  # a partial record
            else:
                raw[:4] = b"XXXX"  # a broken header
            path.write_bytes(bytes(raw))
        origin.reset_stats()
        b = run_node(urls, tmp_path / "node-b", f"file://{shared_dir}")
        want = {origin.url_for(n): sha(d) for n, d in dataset.items()}
    assert b["stats"]["shared"]["checksum_failures"] == 3
    assert 0 < origin.stats.bytes_sent <= 3 * 256_000
    assert b["digests"] == want


def test_node_killed_mid_publish_leaves_nothing_taken_for_good(dataset, tmp_path):
    shared = f"file://{tmp_path / 'shared'}"
    with HTTPOrigin(files=dataset, bandwidth=4 * MiB) as origin:
        urls = [origin.url_for(n) for n in sorted(dataset)]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                NODE,
                json.dumps([urls, str(tmp_path / "a"), shared, 1.0]),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # mid-dataset: fetching and publishing
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        origin.bandwidth = None
        # The dead node's chunk leases (1 s) delay B by about that, no more.
        b = run_node(urls, tmp_path / "b", shared, lease=1.0)
        want = {origin.url_for(n): sha(d) for n, d in dataset.items()}
    assert b["stats"]["shared"]["checksum_failures"] == 0
    assert b["digests"] == want


def test_shared_option_shapes_and_errors(tmp_path):
    fs = CacheFileSystem(
        target_protocol="memory",
        cache_dir=str(tmp_path / "c"),
        shared={"protocol": "file", "root": str(tmp_path / "s")},
        skip_instance_cache=True,
    )
    fs.pipe_file("/x.bin", b"hello" * 1000)
    assert fs.cat_file("/x.bin") == b"hello" * 1000
    fs.wait_idle()
    assert fs.cache_stats()["shared"]["puts"] == 1
    with pytest.raises(ValueError, match="shared"):
        CacheFileSystem(
            target_protocol="memory", shared={"root": 3}, skip_instance_cache=True
        )
    with pytest.raises(TypeError, match="shared must be a URL or a dict"):
        CacheFileSystem(target_protocol="memory", shared=42, skip_instance_cache=True)


def test_cli_warms_the_shared_tier_once_for_all_nodes(dataset, tmp_path):
    shared = f"file://{tmp_path / 'shared'}"
    total = sum(len(v) for v in dataset.values())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC")}
    env["FSSPEC_CONFIG_DIR"] = str(tmp_path / "no-config")
    with HTTPOrigin(files=dataset) as origin:
        base = origin.url_for("ds/")
        warm = subprocess.run(
            [sys.executable, "-m", "cachefs.cli", "warm", base, "--to", "shared",
             "--shared", shared, "--cache-dir", str(tmp_path / "warmer"),
             "--chunk-size", "256kB", "--json"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert warm.returncode == 0, warm.stderr
        assert json.loads(warm.stdout)["files"] == len(dataset)
        assert origin.stats.bytes_sent == total
        warmer_chunks = tmp_path / "warmer" / "chunks"
        assert not [p for p in warmer_chunks.rglob("*") if p.is_file()]  # not local
        origin.reset_stats()
        urls = [origin.url_for(n) for n in sorted(dataset)]
        node = run_node(urls, tmp_path / "node", shared)
        assert origin.stats.bytes_sent == 0
        assert node["stats"]["shared"]["hit_bytes"] == total
        again = subprocess.run(
            [sys.executable, "-m", "cachefs.cli", "warm", base, "--to", "shared",
             "--shared", shared, "--cache-dir", str(tmp_path / "warmer"),
             "--chunk-size", "256kB", "--json"],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert origin.stats.bytes_sent == 0  # resumable: nothing fetched again
    missing = subprocess.run(
        [sys.executable, "-m", "cachefs.cli", "warm", base, "--to", "shared",
         "--cache-dir", str(tmp_path / "w2")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert missing.returncode != 0
    assert "needs a shared tier" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_two_nodes_share_an_s3_bucket(dataset, tmp_path, s3_server, s3_bucket):
    """The shared tier on an S3-compatible store (moto's server on loopback)."""
    shared = {
        "protocol": "s3",
        "root": f"{s3_bucket}/cache",
        "options": s3_server.target_options,
    }
    total = sum(len(v) for v in dataset.values())
    client = s3_server.client()
    with HTTPOrigin(files=dataset) as origin:
        urls = [origin.url_for(n) for n in sorted(dataset)]
        want = {origin.url_for(n): sha(d) for n, d in dataset.items()}
        a = run_node(urls, tmp_path / "node-a", shared)
        assert origin.stats.bytes_sent == total
        assert a["stats"]["shared"]["puts"] == a["stats"]["router"]["fills"]
        origin.reset_stats()
        b = run_node(urls, tmp_path / "node-b", shared)
        assert origin.stats.bytes_sent == 0
        assert b["stats"]["shared"]["hit_bytes"] == total
        # One published object damaged in the bucket: detected, not served.
        listing = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
        keys = sorted(o["Key"] for o in listing)
        assert keys and all(k.startswith("cache/chunks/") for k in keys)
        body = bytearray(
            client.get_object(Bucket=s3_bucket, Key=keys[0])["Body"].read()
        )
        body[-1] ^= 0xFF
        client.put_object(Bucket=s3_bucket, Key=keys[0], Body=bytes(body))
        origin.reset_stats()
        c = run_node(urls, tmp_path / "node-c", shared)
        assert c["stats"]["shared"]["checksum_failures"] == 1
        assert 0 < origin.stats.bytes_sent <= 256_000
    assert a["digests"] == want and b["digests"] == want and c["digests"] == want


def test_rank_partitioned_warm_fills_the_shared_tier_once(dataset, tmp_path):
    """``warm --rank/--world-size --to shared`` on three "nodes" at once: the
    dataset comes from the origin once; a second job's nodes (empty disks)
    then read all of it with no origin bytes."""
    shared = f"file://{tmp_path / 'shared'}"
    total = sum(len(v) for v in dataset.values())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC")}
    env["FSSPEC_CONFIG_DIR"] = str(tmp_path / "no-config")
    world = 3
    with HTTPOrigin(files=dataset, latency=0.02) as origin:
        base = origin.url_for("ds/")
        warms = []
        for rank in range(world):
            argv = [sys.executable, "-m", "cachefs.cli", "warm", base,
                    "--to", "shared", "--shared", shared,
                    "--cache-dir", str(tmp_path / f"warm-{rank}"),
                    "--chunk-size", "256kB", "--rank", str(rank),
                    "--world-size", str(world), "--json"]  # fmt: skip
            warms.append(
                subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                    cwd=REPO,
                )
            )
        reports = []
        for proc in warms:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            reports.append(json.loads(out))
        paths = [p for r in reports for p in r["paths"]]
        assert sorted(paths) == sorted(set(paths)) and len(paths) == len(dataset)
        assert all(r["paths"] for r in reports)  # every rank warmed a share
        assert origin.stats.bytes_sent == total  # once, cluster-wide
        assert sum(r["origin_bytes"] for r in reports) == total
        origin.reset_stats()
        urls = [origin.url_for(n) for n in sorted(dataset)]
        want = {origin.url_for(n): sha(d) for n, d in dataset.items()}
        for node in ("job2-a", "job2-b"):  # the second job's start
            got = run_node(urls, tmp_path / node, shared)
            assert got["digests"] == want
            assert got["stats"]["shared"]["hit_bytes"] == total
        assert origin.stats.bytes_sent == 0
