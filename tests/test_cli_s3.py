"""Every ``cachefs`` subcommand against S3 (moto's server on loopback).

Each runs the installed command in its own process, with the endpoint and
credentials given as ``--target-options``, the way a user points it at S3.
``bench`` used to fail here: its baseline pass called s3fs's ``cat_file``
with the range as positional arguments, which s3fs reads as a version id.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.test_cli import CACHEFS

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ("tests.s3_server",)

MiB = 2**20
# Sizes that straddle the chunk size (1 MiB) and the s3fs block size; the old
# bench failed one way over 4 MiB and another way under it.
SIZES = {"big.bin": 5 * MiB + 123, "small.bin": 700 * 1024 + 5}


@pytest.fixture
def s3_data(s3_server: S3Server, s3_bucket: str) -> dict[str, bytes]:
    client = s3_server.client()
    files = {}
    for name, size in SIZES.items():
        data = bytes((i * 7 + len(name)) % 251 for i in range(size))
        client.put_object(Bucket=s3_bucket, Key=f"data/{name}", Body=data)
        files[f"s3://{s3_bucket}/data/{name}"] = data
    return files


@pytest.fixture
def cli(env: dict[str, str], tmp_path: Path, s3_server: S3Server) -> Any:
    options = json.dumps(s3_server.target_options)
    common = ["--cache-dir", str(tmp_path / "cache"), "--chunk-size", "1MiB"]

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        command, *rest = args
        proc = subprocess.run(
            [*CACHEFS, command, *common, "--target-options", options, *rest],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr
            assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    return run


def test_bench_on_s3(cli: Any, s3_data: dict[str, bytes], s3_bucket: str) -> None:
    proc = cli("bench", "--json", "--ram-limit", "1GiB", f"s3://{s3_bucket}/data/")
    doc = json.loads(proc.stdout)
    total = sum(len(v) for v in s3_data.values())
    assert doc["bytes"] == total
    assert list(doc["passes"]) == ["fsspec", "cold", "warm", "hot"]
    for result in doc["passes"].values():
        assert result["bytes"] == total
    # Warm and hot passes come from the cache, not from S3.
    assert doc["passes"]["warm"]["origin_bytes"] == 0
    assert doc["passes"]["hot"]["origin_bytes"] == 0
    # 5.7 MiB fit a 1 GiB RAM tier: no note that the data exceeds it.
    assert doc["passes"]["hot"]["note"] == ""


def test_warm_stats_ls_verify_evict_clear_on_s3(
    cli: Any, s3_data: dict[str, bytes], s3_bucket: str
) -> None:
    big = f"s3://{s3_bucket}/data/big.bin"
    total = sum(len(v) for v in s3_data.values())
    chunks = 6 + 1  # 5 MiB + 123 bytes, 700 KiB + 5 bytes; 1 MiB chunks
    cli("warm", f"s3://{s3_bucket}/data/")

    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["files"]["known"] == stats["files"]["full"] == 2
    assert stats["files"]["cached_bytes"] == total
    assert stats["disk"]["chunks"] == chunks

    listed = cli("ls", "--json").stdout
    assert f"{s3_bucket}/data/big.bin" in listed
    assert f"{s3_bucket}/data/small.bin" in listed

    verified = json.loads(cli("verify", "--json").stdout)
    assert verified["checked"] == chunks and verified["damaged"] == []

    cli("evict", big)
    listed = cli("ls", "--json").stdout
    assert f"{s3_bucket}/data/big.bin" not in listed
    assert f"{s3_bucket}/data/small.bin" in listed

    cleared = json.loads(cli("clear", "--json").stdout)
    assert cleared["chunks"] == 1
    assert f"{s3_bucket}/data/small.bin" not in cli("ls", "--json").stdout


def test_config_on_s3(cli: Any) -> None:
    proc = cli("config", "--json")
    doc = json.loads(proc.stdout)
    assert doc["chunk_size"] == {"value": "1MiB", "source": "command line"}
