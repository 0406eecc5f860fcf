"""``cachefs warm -j N`` keeps N origin requests in flight (issue 20).

The origin caps each response's bandwidth, so a body takes about a second to
send and N requests issued together overlap for certain; it counts the
bodies it is sending at once. The assertions are on those counts, never on
times.
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
