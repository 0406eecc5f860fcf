"""One parser for durations and counts, whatever the source of a value.

fsspec turns ``FSSPEC_CACHEFS_<KWARG>`` and ``.ini`` config values into
keywords as strings; ``cachefs config`` and ``CacheFileSystem()`` must read
them the same way. The subprocess tests run a real interpreter with the
variables set, as a user's shell would.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cachefs.chunks import parse_count, parse_seconds
from tests.test_cli import CACHEFS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0, 0.0),
        (60, 60.0),
        (0.25, 0.25),
        ("60", 60.0),
        (" 1.5 ", 1.5),
        ("1e3", 1000.0),
        (None, None),
        ("none", None),
        ("None", None),
        ("NULL", None),
        ("", None),
        ("never", None),
        ("inf", None),
    ],
)
def test_parse_seconds_accepts(value, want):
    assert parse_seconds(value, "metadata_ttl", allow_none=True) == want


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (-1, ValueError),
        ("-0.5", ValueError),
        ("soon", ValueError),
        ("60s", ValueError),
        (math.nan, ValueError),
        ("nan", ValueError),
        (True, TypeError),
        ([60], TypeError),
    ],
)
def test_parse_seconds_refuses_and_names_the_parameter(value, exc):
    with pytest.raises(exc, match="request_timeout"):
        parse_seconds(value, "request_timeout", allow_none=True)


@pytest.mark.parametrize("value", [None, "none", ""])
def test_parse_seconds_without_none(value):
    with pytest.raises((TypeError, ValueError), match="prefetch_hold"):
        parse_seconds(value, "prefetch_hold", allow_none=False)
    assert parse_seconds("2", "prefetch_hold", allow_none=False) == 2.0


def test_parse_count():
    assert parse_count(8, "max_requests") == 8
    assert parse_count(" 8 ", "max_requests") == 8
    assert parse_count("0", "retries", minimum=0) == 0
    for value, exc in [
        ("0", ValueError),
        ("eight", ValueError),
        ("2.5", ValueError),
        (2.0, TypeError),
        (True, TypeError),
        (None, TypeError),
    ]:
        with pytest.raises(exc, match="max_requests"):
            parse_count(value, "max_requests")


def test_keywords_take_the_strings_the_cli_takes(tmp_path):
    from cachefs import CacheFileSystem

    fs = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(tmp_path / "cache"),
        metadata_ttl="none",
        request_timeout="2.5",
        retries="3",
        max_requests="5",
        prefetch_hold="1",
        skip_instance_cache=True,
    )
    try:
        assert fs.metadata_ttl is None
        assert fs.fetcher.timeout == 2.5
        assert fs.fetcher.retries == 3
        assert fs.fetcher.max_requests == 5
    finally:
        fs.close()


CHILD = r"""
import json, sys
import fsspec
fs = fsspec.filesystem(
    "cachefs", target_protocol="file", cache_dir=sys.argv[1],
    skip_instance_cache=True,
)
print(json.dumps({
    "metadata_ttl": fs.metadata_ttl,
    "request_timeout": fs.fetcher.timeout,
    "retries": fs.fetcher.retries,
    "max_requests": fs.fetcher.max_requests,
}))
fs.close()
"""


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC")}
    env["FSSPEC_CONFIG_DIR"] = str(tmp_path / "fsspec-config")
    env["PYTHONPATH"] = str(REPO)
    (tmp_path / "fsspec-config").mkdir()
    return env


def _child(env: dict[str, str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(cache_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_env_variables_build_the_filesystem(clean_env, tmp_path):
    clean_env.update(
        FSSPEC_CACHEFS_METADATA_TTL="none",
        FSSPEC_CACHEFS_REQUEST_TIMEOUT="7.5",
        FSSPEC_CACHEFS_RETRIES="2",
        FSSPEC_CACHEFS_MAX_REQUESTS="3",
    )
    proc = _child(clean_env, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "metadata_ttl": None,
        "request_timeout": 7.5,
        "retries": 2,
        "max_requests": 3,
    }


def test_ini_config_strings_build_the_filesystem(clean_env, tmp_path):
    # An .ini file hands every value over as a string, whatever fsspec does
    # with environment variables.
    conf = Path(clean_env["FSSPEC_CONFIG_DIR"]) / "cachefs.ini"
    conf.write_text(
        "[cachefs]\nmetadata_ttl = None\nrequest_timeout = 30\n"
        "retries = 1\nmax_requests = 4\n"
    )
    proc = _child(clean_env, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "metadata_ttl": None,
        "request_timeout": 30.0,
        "retries": 1,
        "max_requests": 4,
    }


def test_a_bad_env_value_names_the_parameter(clean_env, tmp_path):
    clean_env["FSSPEC_CACHEFS_METADATA_TTL"] = "soon"
    proc = _child(clean_env, tmp_path / "cache")
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr
    assert "metadata_ttl='soon'" in proc.stderr
    config = subprocess.run(
        [*CACHEFS, "config", "--cache-dir", str(tmp_path / "cache")],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert config.returncode == 2, config.stderr
    assert "metadata_ttl" in config.stderr
    assert "'soon'" in config.stderr
    assert "FSSPEC_CACHEFS_METADATA_TTL" in config.stderr


def test_cli_and_filesystem_agree_on_none(clean_env, tmp_path):
    clean_env["FSSPEC_CACHEFS_METADATA_TTL"] = "none"
    config = subprocess.run(
        [*CACHEFS, "config", "--json", "--cache-dir", str(tmp_path / "cache")],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert config.returncode == 0, config.stderr
    entry = json.loads(config.stdout)["metadata_ttl"]
    assert entry["source"] == "env FSSPEC_CACHEFS_METADATA_TTL"
    proc = _child(clean_env, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metadata_ttl"] is None
