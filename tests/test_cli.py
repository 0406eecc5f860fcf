"""The ``cachefs`` command, run as the installed console script."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cachefs import CacheFileSystem
from cachefs import cli as cli_module
from cachefs.cli.format import Progress
from cachefs.data.world import World
from cachefs.testing import HTTPOrigin, make_shards

MiB = 2**20


def _command() -> list[str]:
    script = Path(sys.executable).with_name("cachefs")
    if script.exists():
        return [str(script)]
    found = shutil.which("cachefs")
    return [found] if found else [sys.executable, "-m", "cachefs.cli"]


CACHEFS = _command()


def run(
    env: dict[str, str], *args: str, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CACHEFS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


def cache_args(cache_dir: Path) -> list[str]:
    return ["--cache-dir", str(cache_dir), "--chunk-size", "1MiB"]


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- warm ---------------------------------------------------------------------


def test_warm_then_serve_with_origin_gone(
    env: dict[str, str],
    origin: HTTPOrigin,
    shard_files: dict[str, bytes],
    cache_dir: Path,
) -> None:
    proc = run(env, "warm", origin.url + "/shards/", *cache_args(cache_dir), "--json")
    summary = as_json(proc)
    size = sum(len(b) for b in shard_files.values())
    assert summary["complete"] is True
    assert summary["files"] == len(shard_files)
    assert summary["bytes"] == size
    assert summary["origin_bytes"] == size == origin.stats.bytes_sent
    assert summary["cached_before"] == 0
    assert summary["paths"] == sorted(origin.url_for(p) for p in shard_files)
    # stderr is a pipe, not a terminal: plain lines, the last one complete.
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("warm ")]
    assert progress and "100.0%" in progress[-1] and "\r" not in proc.stderr

    urls = {origin.url_for(p): data for p, data in shard_files.items()}
    origin.stop()
    listing = as_json(run(env, "ls", *cache_args(cache_dir), "--json"))
    assert {e["url"] for e in listing} == set(summary["paths"])
    assert all(e["fraction"] == 1.0 for e in listing)
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=str(cache_dir),
        chunk_size="1MiB",
        metadata_ttl=None,
        skip_instance_cache=True,
    )
    for url, data in urls.items():
        assert fs.cat_file(url) == data


def test_warm_is_resumable(
    env: dict[str, str],
    origin: HTTPOrigin,
    shard_files: dict[str, bytes],
    cache_dir: Path,
) -> None:
    url = origin.url + "/shards/"
    assert run(env, "warm", url, *cache_args(cache_dir), "-q").returncode == 0
    origin.reset_stats()
    again = as_json(run(env, "warm", url, *cache_args(cache_dir), "--json"))
    assert origin.stats.bytes_sent == 0
    assert again["origin_bytes"] == 0
    assert again["cached_before"] == again["bytes"]

    # Evict one file: the next warm fetches exactly that file again.
    name = sorted(shard_files)[1]
    evicted = as_json(
        run(env, "evict", origin.url_for(name), *cache_args(cache_dir), "--json")
    )
    assert evicted["files"] == [origin.url_for(name)]
    origin.reset_stats()
    third = as_json(run(env, "warm", url, *cache_args(cache_dir), "--json"))
    assert origin.stats.bytes_by_path == {name: len(shard_files[name])}
    assert third["origin_bytes"] == len(shard_files[name])
    assert third["complete"] is True


@pytest.fixture
def part_origin() -> Iterator[tuple[HTTPOrigin, dict[str, bytes]]]:
    files = make_shards(7, 150_000, seed=3, prefix="part/")
    files.update(make_shards(2, 5_000, seed=4, prefix="part/sub/"))
    with HTTPOrigin(files=files) as server:
        yield server, files


def test_partitioned_warm_covers_each_file_once(
    env: dict[str, str],
    part_origin: tuple[HTTPOrigin, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    origin, files = part_origin
    world = 3
    procs = [
        subprocess.Popen(
            [
                *CACHEFS,
                "warm",
                origin.url + "/part/",
                "--recursive",
                *cache_args(tmp_path / f"node{rank}"),
                "--rank",
                str(rank),
                "--world-size",
                str(world),
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    shares: list[set[str]] = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert (summary["rank"], summary["world_size"]) == (rank, world)
        listed = as_json(
            run(env, "ls", *cache_args(tmp_path / f"node{rank}"), "--json")
        )
        assert {e["url"] for e in listed} == set(summary["paths"])
        assert all(e["fraction"] == 1.0 for e in listed)
        shares.append(set(summary["paths"]))
    everything = sorted(origin.url_for(p) for p in files)
    assert set().union(*shares) == set(everything)
    assert sum(len(s) for s in shares) == len(everything)  # pairwise disjoint
    for rank, share in enumerate(shares):
        assert share == set(World(rank=rank, world_size=world).rank_share(everything))
    # Each file crossed the network exactly once, for exactly one rank.
    assert origin.stats.bytes_by_path == {p: len(b) for p, b in files.items()}


def test_warm_local_files_and_glob(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "deep").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a" * 3000)
    (data / "b.txt").write_bytes(b"b" * 10)
    (data / "deep" / "c.bin").write_bytes(b"c" * 2 * MiB)
    cache = tmp_path / "cache"
    shallow = as_json(run(env, "warm", str(data), *cache_args(cache), "--json"))
    assert shallow["paths"] == [str(data / "a.bin"), str(data / "b.txt")]
    glob = as_json(
        run(env, "warm", f"file://{data}/**/*.bin", *cache_args(cache), "--json")
    )
    assert glob["paths"] == [str(data / "a.bin"), str(data / "deep" / "c.bin")]
    assert glob["origin_bytes"] == 2 * MiB  # a.bin was cached already
    listed = as_json(run(env, "ls", str(data / "deep"), *cache_args(cache), "--json"))
    assert [e["path"] for e in listed] == [str(data / "deep" / "c.bin")]


# -- user mistakes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["warm", "foo://bucket/x"], "foo://bucket/x"),
        (["warm", "{url}/shards/", "--chunk-size", "12 parsecs"], "--chunk-size"),
        (["warm", "{url}/shards/", "--ram-limit", "-1"], "--ram-limit"),
        (["warm", "{url}/shards/", "--target-options", "{bad"], "--target-options"),
        (["warm", "{url}/shards/", "--target-options", "[1]"], "--target-options"),
        (["warm", "{url}/shards/", "--metadata-ttl", "soon"], "--metadata-ttl"),
        (["warm", "{url}/shards/", "--rank", "3", "--world-size", "3"], "rank"),
        (["warm", "{url}/no/such/dir/"], "{url}/no/such/dir/"),
        (["warm", "{url}/shards/shard-9999.bin"], "shard-9999.bin"),
        (["warm", "{url}/shards/", "--jobs", "0"], "--jobs"),
        (["ls", "--chunk-size", "0"], "--chunk-size"),
        (["bench", "{url}/shards/", "--block-size", "lots"], "--block-size"),
    ],
)
def test_user_mistake_is_one_line(
    env: dict[str, str],
    origin: HTTPOrigin,
    cache_dir: Path,
    args: list[str],
    names: str,
) -> None:
    argv = [a.replace("{url}", origin.url) for a in args]
    proc = run(env, *argv, "--cache-dir", str(cache_dir))
    line = one_error_line(proc)
    assert names.replace("{url}", origin.url) in line
    assert proc.returncode in (1, 2)


@pytest.mark.parametrize("command", ["warm", "stats", "ls", "verify", "evict"])
def test_unusable_cache_dir_is_one_line(
    env: dict[str, str], origin: HTTPOrigin, tmp_path: Path, command: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    bad = blocker / "cache"
    urls = [origin.url + "/shards/"] if command in ("warm", "evict") else []
    proc = run(env, command, *urls, "--cache-dir", str(bad))
    line = one_error_line(proc)
    assert str(bad) in line or str(blocker) in line
    assert proc.returncode == 1


def test_verbose_shows_the_traceback(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = run(env, "stats", "-v", "--cache-dir", str(blocker / "c"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr


# -- inspection, JSON ------------------------------------------------------------


def test_json_outputs_parse_with_documented_keys(
    env: dict[str, str],
    origin: HTTPOrigin,
    shard_files: dict[str, bytes],
    cache_dir: Path,
) -> None:
    url = origin.url + "/shards/"
    c = cache_args(cache_dir)
    assert run(env, "warm", url, *c, "-q").returncode == 0

    stats = as_json(run(env, "stats", *c, "--json"))
    size = sum(len(b) for b in shard_files.values())
    assert stats["chunk_size"] == MiB
    assert stats["files"]["known"] == stats["files"]["full"] == len(shard_files)
    assert stats["files"]["cached_bytes"] == stats["files"]["size"] == size
    assert stats["disk"]["chunks"] == 4 * len(shard_files)
    assert stats["disk"]["dirs"][0]["path"] == str(cache_dir)
    assert stats["other_chunks"] == {"chunks": 0, "bytes": 0}
    assert set(stats["ram"]) == {"limit", "per_process"}

    listing = as_json(run(env, "ls", url + "shard-000[01].bin", *c, "--json"))
    assert len(listing) == 2
    assert set(listing[0]) == {
        "url", "protocol", "path", "token", "size", "chunks",
        "cached_chunks", "cached_bytes", "fraction", "last_access", "fetched",
    }  # fmt: skip
    assert listing[0]["last_access"] is not None

    verify = as_json(run(env, "verify", *c, "--json"))
    assert verify == {
        "checked": 4 * len(shard_files),
        "bytes": verify["bytes"],
        "damaged": [],
        "ok": True,
    }
    config = as_json(run(env, "config", *c, "--json"))
    assert config["chunk_size"] == {"value": "1MiB", "source": "command line"}

    bench = as_json(run(env, "bench", url, *c, "--json"))
    assert set(bench["passes"]) == {"fsspec", "cold", "warm", "hot"}
    assert bench["passes"]["cold"]["origin_bytes"] == size
    assert bench["passes"]["warm"]["origin_bytes"] == 0
    assert bench["passes"]["hot"]["origin_bytes"] == 0
    assert all(p["bytes"] == size for p in bench["passes"].values())
    assert list(cache_dir.glob("bench-*")) == []  # its scratch cache is gone

    cleared = as_json(run(env, "clear", *c, "--json"))
    assert cleared["chunks"] == 4 * len(shard_files)
    assert cleared["records"] == len(shard_files)
    assert as_json(run(env, "ls", *c, "--json")) == []


def test_human_outputs(
    env: dict[str, str], origin: HTTPOrigin, cache_dir: Path
) -> None:
    c = cache_args(cache_dir)
    warm = run(env, "warm", origin.url + "/shards/", *c)
    assert warm.returncode == 0 and warm.stdout.startswith("warmed 4 files")
    stats = run(env, "stats", *c)
    assert "4 fully cached" in stats.stdout and stats.returncode == 0
    ls = run(env, "ls", *c)
    assert ls.stdout.count("100%") == 4
    bench = run(env, "bench", origin.url + "/shards/shard-0000.bin", *c)
    assert bench.returncode == 0
    assert [ln.split()[0] for ln in bench.stdout.splitlines()] == [
        "pass", "fsspec", "cold", "warm", "hot",
    ]  # fmt: skip


def test_config_sources(env: dict[str, str], tmp_path: Path) -> None:
    conf_dir = Path(env["FSSPEC_CONFIG_DIR"])
    conf_dir.mkdir()
    (conf_dir / "conf.json").write_text(json.dumps({"cachefs": {"retries": 2}}))
    env = {
        **env,
        "FSSPEC_CACHEFS_CHUNK_SIZE": "2MiB",
        "FSSPEC_CACHEFS_METADATA_TTL": "null",
    }
    config = as_json(run(env, "config", "--ram-limit", "0", "--json"))
    assert config["chunk_size"] == {
        "value": "2MiB",
        "source": "env FSSPEC_CACHEFS_CHUNK_SIZE",
    }
    assert config["metadata_ttl"]["value"] is None
    assert config["ram_limit"] == {"value": "0", "source": "command line"}
    assert config["retries"]["value"] == 2
    assert config["retries"]["source"].startswith("fsspec config file")
    assert config["disk_limit"]["source"] == "default"
    assert config["cache_dir"]["value"] == str(Path(env["XDG_CACHE_HOME"]) / "cachefs")
    stats = as_json(run(env, "stats", "--json"))
    assert stats["chunk_size"] == 2 * MiB
    bad = run({**env, "FSSPEC_CACHEFS_CHUNK_SIZE": "huge"}, "stats")
    assert "FSSPEC_CACHEFS_CHUNK_SIZE" in one_error_line(bad)


# -- verify, evict ----------------------------------------------------------------


def test_verify_finds_and_repairs_damage(
    env: dict[str, str],
    origin: HTTPOrigin,
    shard_files: dict[str, bytes],
    cache_dir: Path,
) -> None:
    c = cache_args(cache_dir)
    assert run(env, "warm", origin.url + "/shards/", *c, "-q").returncode == 0
    victim = sorted((cache_dir / "chunks").glob("*/*"))[0]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    found = run(env, "verify", *c)
    assert found.returncode == 1
    assert str(victim) in found.stderr and "1 damaged" in found.stdout
    # It names what the chunk holds: the origin file and the byte range.
    fs = CacheFileSystem(
        target_protocol="http",
        cache_dir=str(cache_dir),
        chunk_size="1MiB",
        skip_instance_cache=True,
    )
    keys = []
    for name in shard_files:
        version = fs.metadata.get("http", origin.url_for(name))
        assert version is not None
        keys += [version.key(MiB, i) for i in range(version.chunk_count(MiB))]
    (owner,) = [k for k in keys if victim.name == k.digest]
    url = owner.version.path
    assert f"bytes {owner.start}-{owner.stop - 1} of {url}" in found.stderr
    repaired = as_json(run(env, "verify", *c, "--repair", "--json"))
    assert repaired["ok"] is True
    assert repaired["damaged"][0]["path"] == str(victim)
    assert repaired["damaged"][0]["chunk_of"] == {
        "url": url,
        "start": owner.start,
        "stop": owner.stop,
    }
    assert not victim.exists()
    assert run(env, "verify", *c).returncode == 0
    # The cache notices the hole; a warm refills just that chunk.
    stats = as_json(run(env, "stats", *c, "--json"))
    assert stats["files"]["partial"] == 1
    origin.reset_stats()
    again = as_json(run(env, "warm", origin.url + "/shards/", *c, "--json"))
    assert 0 < again["origin_bytes"] <= MiB and again["complete"]


_READER = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    from cachefs import CacheFileSystem

    cache_dir, stop, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    rounds = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # A new object each round: no chunk stays mapped from the last one.
        fs = CacheFileSystem(
            target_protocol="http", cache_dir=cache_dir, chunk_size="1MiB",
            ram_limit=0, skip_instance_cache=True,
        )
        for url, digest in expected.items():
            got = hashlib.blake2b(fs.cat_file(url)).hexdigest()
            if got != digest:
                print("MISMATCH", url, flush=True)
                sys.exit(1)
        rounds += 1
        if os.path.exists(stop) and rounds >= 3:
            break
    print(rounds, flush=True)
    """
)


def test_evict_while_another_process_reads(
    env: dict[str, str],
    origin: HTTPOrigin,
    shard_files: dict[str, bytes],
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    c = cache_args(cache_dir)
    assert run(env, "warm", origin.url + "/shards/", *c, "-q").returncode == 0
    expected = {
        origin.url_for(p): hashlib.blake2b(b).hexdigest()
        for p, b in shard_files.items()
    }
    stop = tmp_path / "stop"
    origin.reset_stats()
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _READER,
            str(cache_dir),
            str(stop),
            json.dumps(expected),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        names = sorted(shard_files)
        for i in range(6):
            target = origin.url_for(names[i % len(names)])
            assert run(env, "evict", target, *c, "-q").returncode == 0
            if i == 3:
                assert run(env, "clear", *c, "-q").returncode == 0
            time.sleep(0.05)
        stop.touch()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.communicate()
    assert reader.returncode == 0, out + err
    assert int(out.split()[-1]) >= 3
    assert "Traceback" not in err
    assert origin.stats.bytes_sent > 0  # the reader fetched evicted chunks again


# -- progress and demo (in process) ------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream = _Terminal()
    progress = Progress(stream, "warm", 10 * MiB)
    progress.update(2 * MiB, 2 * MiB, force=True)
    progress.update(5 * MiB, 5 * MiB, force=True)
    progress.close(10 * MiB, 10 * MiB)
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "ETA" in text and "B/s" in text and "100.0%" in text


def test_progress_elsewhere_prints_lines() -> None:
    stream = io.StringIO()
    progress = Progress(stream, "warm", 4 * MiB, interval=0.0)
    progress.update(MiB, MiB)
    progress.close(4 * MiB, 4 * MiB)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert "25.0%" in lines[0] and "ETA" in lines[0] and "done" in lines[1]


def test_progress_through_a_pty(
    env: dict[str, str], origin: HTTPOrigin, cache_dir: Path
) -> None:
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [*CACHEFS, "warm", origin.url + "/shards/", *cache_args(cache_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=60,
            check=False,
        )
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "\rwarm 100.0%" in shown


def test_demo_runs_the_demo_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}
    fake = types.ModuleType("cachefs.cli.demo")

    def add_arguments(parser: Any) -> None:
        parser.add_argument("--epochs", type=int)

    def run_cli(args: Any) -> int:
        seen["epochs"] = args.epochs
        return 7

    fake.add_arguments = add_arguments  # type: ignore[attr-defined]
    fake.run_cli = run_cli  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cachefs.cli.demo", fake)
    assert cli_module.main(["demo", "--epochs", "2"]) == 7
    assert seen == {"epochs": 2}

    monkeypatch.setitem(sys.modules, "cachefs.cli.demo", None)
    assert cli_module.main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo not available" in err[0]


@pytest.mark.parametrize("command", ["warm", "ls", "stats", "verify"])
def test_unknown_option_names_the_subcommand(env: dict[str, str], command: str) -> None:
    url = ["http://127.0.0.1:9/x"] if command == "warm" else []
    proc = run(env, command, *url, "--no-such-option")
    line = one_error_line(proc)
    assert line.startswith(f"cachefs {command}: error: ")
    assert "--no-such-option" in line


def test_bench_asks_sizes_concurrently_and_reports_each_pass(
    env: dict[str, str], cache_dir: Path
) -> None:
    files = {f"many/f{i:02d}.bin": bytes([i]) * 10_000 for i in range(12)}
    with HTTPOrigin(files=files, latency=0.25) as slow:
        c = cache_args(cache_dir)
        proc = run(env, "bench", slow.url + "/many/", *c, "-j", "1")
        assert proc.returncode == 0, proc.stderr
        # The passes read one block at a time (-j 1): only the sizes, asked
        # together rather than file by file, overlap.
        assert slow.stats.max_concurrent >= 4
    passes = [ln.split()[1] for ln in proc.stderr.splitlines() if " pass: " in ln]
    assert passes == ["fsspec", "cold", "warm", "hot"]


def _rate(text: str) -> float:
    number, unit = text.split()
    scale = {"B/s": 1, "KiB/s": 2**10, "MiB/s": 2**20, "GiB/s": 2**30}[unit]
    return float(number) * scale


def test_warm_progress_and_summary_give_one_rate(
    env: dict[str, str], cache_dir: Path
) -> None:
    files = make_shards(4, 2 * MiB, seed=8, prefix="r/")
    with HTTPOrigin(files=files, latency=0.05) as slow:
        proc = run(
            env, "warm", slow.url + "/r/", *cache_args(cache_dir),
            "--progress-interval", "0.05",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    last = [ln for ln in proc.stderr.splitlines() if ln.startswith("warm ")][-1]
    shown = re.search(r"([\d.]+ \S+/s)\s+done", last)
    summary = re.search(r"\(([\d.]+ \S+/s)\)", proc.stdout)
    assert shown and summary, (proc.stderr, proc.stdout)
    assert _rate(shown.group(1)) == pytest.approx(_rate(summary.group(1)), rel=0.02)


# -- warm: literal names (issue 19, item 11) --------------------------------------

LITERAL_NAMES = ["a[1].bin", "a1.bin", "q?x.bin", "qZx.bin", "s*.bin", "sX.bin"]


def _warmed_names(summary: dict[str, Any]) -> list[str]:
    from urllib.parse import unquote

    return sorted(unquote(p.rsplit("/", 1)[-1]) for p in summary["paths"])


def test_warm_takes_an_existing_name_literally_on_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in LITERAL_NAMES:
        (data / name).write_bytes(name.encode() * 100)
    cache = tmp_path / "cache"
    urls = [str(data / "a[1].bin"), f"file://{data}/q?x.bin", str(data / "s*.bin")]
    summary = as_json(run(env, "warm", *urls, *cache_args(cache), "--json"))
    assert _warmed_names(summary) == ["a[1].bin", "q?x.bin", "s*.bin"]
    assert summary["complete"] and summary["origin_bytes"] == summary["bytes"]
    # A pattern that names no file is still a glob.
    globbed = as_json(
        run(env, "warm", str(data / "q?x*"), *cache_args(cache), "--json")
    )
    assert _warmed_names(globbed) == ["q?x.bin", "qZx.bin"]


def test_warm_takes_an_existing_name_literally_over_http(
    env: dict[str, str], tmp_path: Path
) -> None:
    files = {name: name.encode() * 100 for name in LITERAL_NAMES}
    with HTTPOrigin(files=files) as server:
        # "?" starts an HTTP query: a name holding one is written %3F.
        urls = [
            server.url + "/a[1].bin",
            server.url + "/s*.bin",
            server.url_for("q?x.bin"),
        ]
        cache = tmp_path / "cache"
        summary = as_json(run(env, "warm", *urls, *cache_args(cache), "--json"))
        assert _warmed_names(summary) == ["a[1].bin", "q?x.bin", "s*.bin"]
        assert summary["complete"]
        assert set(server.stats.bytes_by_path) == {"a[1].bin", "q?x.bin", "s*.bin"}
