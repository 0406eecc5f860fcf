"""A mistyped option is named, with the subcommand's closest option as a guess.

argparse alone answered ``cachefs stats --disk-limt 1GiB`` with
"unrecognized arguments: --disk-limt 1GiB" and no hint (issue 19, item 7).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _command() -> list[str]:
    found = shutil.which("cachefs")
    return [found] if found else [sys.executable, "-m", "cachefs.cli"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A private HOME and config: the user's fsspec config cannot interfere.
    env = {**os.environ, "HOME": str(tmp_path), "FSSPEC_CONFIG_DIR": str(tmp_path)}
    return subprocess.run(
        [*_command(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["stats", "--disk-limt", "1GiB"],
            "cachefs stats: error: unknown option --disk-limt; "
            "did you mean --disk-limit?",
        ),
        (
            ["ls", "--jsn"],
            "cachefs ls: error: unknown option --jsn; did you mean --json?",
        ),
        (  # --opt=value form; the guess is among warm's own options
            ["warm", "--chunk-sise=4MiB", "memory://x"],
            "cachefs warm: error: unknown option --chunk-sise; "
            "did you mean --chunk-size?",
        ),
    ],
)
def test_a_typo_gets_one_line_with_the_closest_option(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    proc = _run(tmp_path, *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"{expected} (see --help)"], proc.stderr
    assert proc.stdout == ""


def test_no_guess_when_nothing_is_close(tmp_path: Path) -> None:
    proc = _run(tmp_path, "stats", "--zzzzzz")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "cachefs stats: error: unknown option --zzzzzz (see --help)"
    )
