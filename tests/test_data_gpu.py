"""GPU feeding helpers (on CPU here; device copies run where CUDA is) and the
``bench.gpu_feed`` script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cachefs import CacheFileSystem
from cachefs.data.dataset import ShardDataset
from cachefs.data.gpu import PackedBytes, collate, pack, pin_batch, to_device, to_tensor

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_to_tensor_shares_memory():
    buf = bytearray(b"\x01\x02\x03\x04" * 4)
    t = to_tensor(buf)
    assert t.dtype == torch.uint8 and t.tolist()[:4] == [1, 2, 3, 4]
    buf[0] = 9
    assert int(t[0]) == 9  # no copy
    assert to_tensor(buf, torch.int32).shape == (4,)
    assert to_tensor(memoryview(b"")).numel() == 0
    view = memoryview(bytes(range(64)))
    whole, tail = to_tensor(view), to_tensor(view[10:])
    assert tail.data_ptr() - whole.data_ptr() == 10


def test_to_tensor_on_a_read_only_view_warns_nothing():
    # torch warns once per process: check in a fresh one with warnings as errors.
    code = (
        "from cachefs.data.gpu import to_tensor\n"
        "t = to_tensor(memoryview(b'abcd'))\n"
        "u = to_tensor(memoryview(b'efgh'))\n"
        "assert bytes(t.tolist()) == b'abcd' and bytes(u.tolist()) == b'efgh'\n"
    )
    proc = run_python("-W", "error", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_cached_sample_to_tensor_is_zero_copy(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(bytes(range(256)) * 64)
    fs = CacheFileSystem(
        target_protocol="file",
        cache_dir=str(tmp_path / "c"),
        chunk_size="8KiB",
        skip_instance_cache=True,
    )
    ds = ShardDataset([str(path)], fs, format="raw", record_size=256, shuffle=False)
    first, second = [s["data"] for s, _ in zip(ds, range(2), strict=False)]
    assert first.obj is second.obj  # both in one cached chunk
    a, b = to_tensor(first), to_tensor(second)
    assert b.data_ptr() - a.data_ptr() == 256
    assert a.tolist() == list(range(256))
    fs.wait_idle()


def test_pack_equal_and_ragged():
    equal = pack([b"abc", memoryview(b"def"), bytearray(b"ghi")], pin_memory=False)
    assert isinstance(equal, torch.Tensor) and equal.shape == (3, 3)
    assert bytes(equal[1].tolist()) == b"def"
    assert not equal.is_pinned()
    ragged = pack([b"a", b"", b"xyz"], pin_memory=False)
    assert isinstance(ragged, PackedBytes)
    assert ragged.offsets.tolist() == [0, 1, 1, 4]
    assert [bytes(ragged.item(i).tolist()) for i in range(3)] == [b"a", b"", b"xyz"]
    empty = pack([], pin_memory=False)
    assert isinstance(empty, PackedBytes) and empty.data.numel() == 0
    assert pack([b"ab"]).is_pinned() == CUDA  # pins by default where it can


def test_collate_packs_buffers_and_keeps_the_rest():
    samples = [
        {
            "__key__": f"k{i}",
            "img": memoryview(bytes([i]) * 4),
            "cls": i,
            "txt": b"x" * i,
        }
        for i in range(3)
    ]
    batch = collate(samples)
    assert batch["__key__"] == ["k0", "k1", "k2"]
    assert batch["img"].shape == (3, 4)
    assert batch["cls"].tolist() == [0, 1, 2]
    assert isinstance(batch["txt"], PackedBytes)
    assert collate([]) == {}
    with pytest.raises(ValueError, match="no field 'img'"):
        collate([samples[0], {"__key__": "k9", "cls": 1, "txt": b""}])


def test_to_device_and_pin_batch_walk_the_batch():
    batch = {
        "a": torch.arange(4),
        "p": PackedBytes(torch.zeros(3, dtype=torch.uint8), torch.tensor([0, 3])),
        "keys": ["x"],
        "nested": [torch.ones(2), 5],
    }
    moved = to_device(batch, "cpu")
    assert isinstance(moved["p"], PackedBytes) and moved["keys"] == ["x"]
    assert moved["nested"][1] == 5 and moved["a"].tolist() == [0, 1, 2, 3]
    if not CUDA:
        return
    pinned = pin_batch(batch)
    assert pinned["a"].is_pinned() and pinned["p"].data.is_pinned()
    on_gpu = to_device(pinned, "cuda")
    torch.cuda.synchronize()
    assert on_gpu["a"].device.type == "cuda" and on_gpu["a"].tolist() == [0, 1, 2, 3]


def test_gpu_feed_skips_without_cuda_and_runs_on_cpu():
    proc = run_python("-m", "bench.gpu_feed", "--help")
    assert proc.returncode == 0 and "--device" in proc.stdout
    if not CUDA:
        proc = run_python("-m", "bench.gpu_feed")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "gpu_feed: skipped: no CUDA device"
    small = ["--record-size", "4096", "--batch", "8", "--shards", "2"]
    small += ["--shard-size", "65536", "--reps", "1"]
    proc = run_python("-m", "bench.gpu_feed", "--device", "cpu", "--quick", *small)
    assert proc.returncode == 0, proc.stderr
    for system in ("torch pinned copy", "cachefs pack + copy", "cachefs DataLoader"):
        assert system in proc.stdout
