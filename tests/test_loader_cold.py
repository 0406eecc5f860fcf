"""A cold loader epoch over S3: what forked DataLoader workers pay before reading.

Each worker of a non-persistent DataLoader is forked anew every epoch, and
its cache target is rebuilt there (``cachefs.bridge.renewed``). An s3fs
target's first request used to parse botocore's JSON models in every
worker, every epoch; ``ShardDataset`` now builds the client in the parent
(no request sent) and a renewed target reads the parent's models.
"""

from __future__ import annotations

import io
import multiprocessing
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import s3fs
from aiobotocore.session import AioSession
from torch.utils.data import DataLoader

from cachefs import CacheFileSystem
from cachefs.bridge import renewed
from cachefs.data.dataset import ShardDataset

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ("tests.s3_server",)

SHARDS, PER_SHARD = 4, 8


def tar_shard(shard: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(PER_SHARD):
            data = bytes([shard, i]) * 1000
            info = tarfile.TarInfo(f"{shard:02d}{i:04d}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def shards(s3_server: S3Server, s3_bucket: str) -> list[str]:
    client = s3_server.client()
    urls = []
    for s in range(SHARDS):
        key = f"tars/shard-{s}.tar"
        client.put_object(Bucket=s3_bucket, Key=key, Body=tar_shard(s))
        urls.append(f"{s3_bucket}/{key}")
    return urls


@pytest.fixture
def fs(s3_server: S3Server, tmp_path: Path) -> Any:
    cache = CacheFileSystem(
        target_protocol="s3",
        target_options={**s3_server.target_options, "skip_instance_cache": True},
        cache_dir=str(tmp_path / "cache"),
        request_timeout=10,
        skip_instance_cache=True,
    )
    yield cache
    cache.close()


def _loader(target: Any) -> Any:
    return target.session.get_component("data_loader")


def test_dataset_builds_the_s3_client_before_workers_fork_and_sends_nothing(
    fs: Any, shards: list[str]
) -> None:
    assert fs.fs.session is None  # nothing built yet: sample counts need no I/O
    ShardDataset(shards, fs, sample_counts=[PER_SHARD] * SHARDS)
    assert fs.fs.session is not None
    origin = fs.cache_stats()["origin"]
    assert origin["requests"] == 0
    assert origin["metadata_requests"] == 0


def _child(ds: ShardDataset, parent_loader: Any, conn: Any) -> None:
    try:
        keys = [s["__key__"] for s in ds]
        target = ds.fs.fs  # renewed on this process's loop by the reads
        conn.send(
            (
                len(keys),
                len(set(keys)),
                _loader(target) is parent_loader,
                target.session is not ds_parent_session[0],
                ds.fs.cache_stats()["origin"]["direct"],
            )
        )
    except BaseException as exc:
        conn.send(repr(exc))


ds_parent_session: list[Any] = [None]


def test_forked_worker_reads_with_the_parents_models_and_its_own_session(
    fs: Any, shards: list[str]
) -> None:
    ds = ShardDataset(
        shards, fs, sample_counts=[PER_SHARD] * SHARDS, rank=0, world_size=1
    )
    parent_loader = _loader(fs.fs)
    ds_parent_session[0] = fs.fs.session
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(ds, parent_loader, theirs))
    proc.start()
    assert ours.poll(60), "the forked reader did not answer"
    got = ours.recv()
    proc.join(10)
    assert not isinstance(got, str), got
    n, distinct, same_models, own_session, direct = got
    assert (n, distinct) == (SHARDS * PER_SHARD, SHARDS * PER_SHARD)
    assert same_models, "the forked reader parsed botocore's models again"
    assert own_session, "the forked reader must resolve its own credentials"
    assert direct >= SHARDS  # the S3 reads took the direct receive path


def test_a_session_the_user_passed_is_kept_by_a_renewed_target(
    s3_server: S3Server,
) -> None:
    import asyncio

    session = AioSession()
    target = s3fs.S3FileSystem(
        session=session, skip_instance_cache=True, **s3_server.target_options
    )
    loop = asyncio.new_event_loop()
    try:
        fresh = renewed(target, loop)
    finally:
        loop.close()
    assert fresh.session is session


def test_dataloader_workers_deliver_the_cold_epoch_once(
    fs: Any, shards: list[str]
) -> None:
    ds = ShardDataset(shards, fs, sample_counts=[PER_SHARD] * SHARDS, decode="bytes")
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    keys = [s["__key__"] for s in loader]
    assert len(keys) == len(set(keys)) == SHARDS * PER_SHARD
