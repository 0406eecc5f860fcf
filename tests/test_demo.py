"""``cachefs demo`` runs end to end and prints its table."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from cachefs.cli import demo

REPO = Path(__file__).resolve().parents[1]


def rows(out: str) -> dict[tuple[str, int], list[str]]:
    table: dict[tuple[str, int], list[str]] = {}
    for line in out.splitlines():
        match = re.match(r"^(cachefs|fsspec http)\s+(\d+)\s+(.*)$", line)
        if match:
            table[(match.group(1), int(match.group(2)))] = match.group(3).split()
    return table


def test_quick_demo_prints_the_table(capsys, tmp_path):
    assert demo.main(["--quick", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "samples/s" in out and "hit rate" in out and "origin MiB" in out
    table = rows(out)
    assert set(table) == {(s, e) for s in ("cachefs", "fsspec http") for e in range(3)}
    # columns: samples/s, hit rate, origin MiB, wait s, epoch s
    assert table[("cachefs", 0)][1] == "0%"
    for epoch in (1, 2):
        assert table[("cachefs", epoch)][1:3] == ["100%", "0.0"]
        assert float(table[("fsspec http", epoch)][2]) > 0
    assert (tmp_path / "cache" / "chunks").is_dir()  # --cache-dir is kept


def test_run_cli_takes_a_partial_namespace(capsys):
    args = argparse.Namespace(quick=True, epochs=1, baseline=False, shards=2)
    assert demo.run_cli(args) == 0
    table = rows(capsys.readouterr().out)
    assert list(table) == [("cachefs", 0)]


def test_bad_arguments_exit_2(capsys):
    assert demo.main(["--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_demo_without_torch_uses_the_plain_iterable(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from cachefs.cli.demo import main\n"
        "sys.exit(main(['--quick', '--epochs', '2', '--shards', '2', "
        "'--no-baseline']))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the plain iterable (torch is not installed)" in proc.stdout
    table = rows(proc.stdout)
    assert table[("cachefs", 1)][1] == "100%"
