"""webdataset over ``cachefs::`` URLs: a script that imports cachefs just works.

A real script in a subprocess, as users run it: ``import cachefs``, then
``webdataset.WebDataset`` over a list of ``cachefs::http://…`` shard URLs in
a torch DataLoader with 2 workers, forked and spawned; the cache configured
only through fsspec's own ``FSSPEC_CACHEFS_*`` variables.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cachefs.testing import HTTPOrigin

pytest.importorskip("webdataset")
pytest.importorskip("torch")

SHARDS, SAMPLES = 4, 8

SCRIPT = """
import json, sys
import cachefs  # the only line cachefs needs
import torch
import webdataset as wds

def main():
    urls, context, handler = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    dataset = wds.WebDataset(
        urls, shardshuffle=False, empty_check=False,
        handler=getattr(wds, handler),
    ).to_tuple("__key__", "bin")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=2, multiprocessing_context=context
    )
    print(json.dumps([[key, len(value)] for key, value in loader]))

if __name__ == "__main__":
    main()
"""


def _tar(shard: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(SAMPLES):
            payload = bytes([shard, i]) * (1000 + 37 * i)
            info = tarfile.TarInfo(f"s{shard:02d}-{i:03d}.bin")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return out.getvalue()


@pytest.mark.parametrize("handler", ["reraise_exception", "warn_and_continue"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_webdataset_script_reads_through_the_cache(
    tmp_path: Path, context: str, handler: str
) -> None:
    files = {f"wds/shard-{i:04d}.tar": _tar(i) for i in range(SHARDS)}
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSPEC")}
    env.update(
        FSSPEC_CONFIG_DIR=str(tmp_path / "fsspec"),
        FSSPEC_CACHEFS_CACHE_DIR=str(cache),
        FSSPEC_CACHEFS_METADATA_TTL="none",
        PATH="/nonexistent",  # no curl: webdataset's http fallback cannot run
    )
    with HTTPOrigin(files=files) as origin:
        urls = ["cachefs::" + origin.url_for(name) for name in sorted(files)]

        def run() -> list[list[object]]:
            proc = subprocess.run(
                [sys.executable, str(script), json.dumps(urls), context, handler],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            samples: list[list[object]] = json.loads(proc.stdout.splitlines()[-1])
            return samples

        first = run()
        want = sorted(
            [f"s{s:02d}-{i:03d}", 2 * (1000 + 37 * i)]
            for s in range(SHARDS)
            for i in range(SAMPLES)
        )
        assert sorted(first) == want  # every sample exactly once
        assert origin.stats.bytes_sent == sum(map(len, files.values()))
        assert any((cache / "chunks").rglob("*"))  # the configured cache
        origin.reset_stats()
        assert sorted(run()) == want
        assert origin.stats.bytes_sent == 0  # served by the cache


SINGLE = """
import sys
import cachefs
import webdataset as wds

try:
    wds.WebDataset(sys.argv[1], shardshuffle=False, handler=wds.warn_and_continue)
except ValueError as exc:
    print("refused:", exc)
else:
    print("accepted")
"""


def test_a_single_cachefs_string_fails_loudly(tmp_path: Path) -> None:
    # webdataset splits strings on '::': 'cachefs' became a local file and
    # the https shard was read uncached (through curl) every epoch.
    script = tmp_path / "single.py"
    script.write_text(SINGLE)
    proc = subprocess.run(
        [sys.executable, str(script), "cachefs::https://host/data/shard-0000.tar"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:"), proc.stdout
    assert "pass a list" in proc.stdout
    # Plain strings are expanded as before.
    import webdataset as wds

    import cachefs  # noqa: F401

    assert wds.shardlists.expand_urls("a-{0..1}.tar") == ["a-0.tar", "a-1.tar"]
