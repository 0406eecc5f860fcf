"""``cachefs warm -j N`` keeps N origin requests in flight (issue 20).

The origin caps each response's bandwidth, so a body takes about a second to
send and N requests issued together overlap for certain; it counts the
bodies it is sending at once. Before the bodies, a warm asks for each
file's info once, all at once: with a second of latency before every
response, the origin counts the ``HEAD`` requests in flight together. The
assertions are on those counts, never on times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachefs.testing import HTTPOrigin, make_shards
from tests.test_cli import as_json, cache_args, run

MiB = 2**20


class CountingOrigin(HTTPOrigin):
    """An origin that counts the file bodies it is sending at the same time.

    ``max_concurrent`` of :class:`HTTPOrigin` counts every request, the
    ``HEAD`` requests a warm makes to learn versions included; only bodies
    say how many fetches were in flight.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies = 0
        self.peak_bodies = 0
        self.heads = 0
        self.peak_heads = 0
        self.head_paths: list[str] = []

    async def _handle(self, request: Any) -> Any:
        head = request.method == "HEAD"
        if head:
            self.head_paths.append(request.path.lstrip("/"))
        self.heads += head
        self.peak_heads = max(self.peak_heads, self.heads)
        try:
            return await super()._handle(request)
        finally:
            self.heads -= head

    async def _stream(self, *args: Any, **kwargs: Any) -> None:
        # Runs on the server's one loop: no lock needed for the counters.
        self.bodies += 1
        self.peak_bodies = max(self.peak_bodies, self.bodies)
        try:
            await super()._stream(*args, **kwargs)
        finally:
            self.bodies -= 1


@pytest.mark.parametrize("jobs", [3, 8])
def test_warm_keeps_jobs_requests_in_flight(
    env: dict[str, str], tmp_path: Path, jobs: int
) -> None:
    files = make_shards(jobs + 2, 1 * MiB, seed=20, prefix="j/")
    # 1 MiB at 1 MiB/s: each body takes a second, so every request the warm
    # keeps in flight is seen by the origin at once, however busy the host.
    with CountingOrigin(files=files, bandwidth=1 * MiB) as origin:
        summary = as_json(
            run(
                env, "warm", origin.url + "/j/", *cache_args(tmp_path / "cache"),
                "-j", str(jobs), "--json", timeout=90,
            )
        )  # fmt: skip
        assert summary["complete"] and summary["files"] == jobs + 2
        assert origin.peak_bodies == jobs


@pytest.mark.parametrize("named", ["files", "glob"])
def test_warm_asks_each_files_info_once_all_at_once(
    env: dict[str, str], tmp_path: Path, named: str
) -> None:
    count = 6
    files = make_shards(count, 64 * 1024, seed=21, prefix="h/")
    # A second before every response: requests issued together overlap for
    # certain, and one per file in turn never would.
    with CountingOrigin(files=files, latency=1.0) as origin:
        urls = (
            [origin.url_for(name) for name in sorted(files)]
            if named == "files"
            else [origin.url + "/h/*"]
        )
        summary = as_json(
            run(
                env, "warm", *urls, *cache_args(tmp_path / "cache"),
                "-j", str(count), "--json", timeout=90,
            )
        )  # fmt: skip
        assert summary["complete"] and summary["files"] == count
        # One HEAD per file (fsspec's glob also asks for the glob and its
        # directory), and the files' all in flight together.
        asked = [p for p in origin.head_paths if p in files]
        assert sorted(asked) == sorted(files)
        assert origin.peak_heads == count
