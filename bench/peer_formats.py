"""The peers' formats and glue for ``loader_peers`` (written untimed).

The same samples (ids 0..n-1, 31 KiB of random bytes each) in each
library's own format: tar shards (webdataset, cachefs, s3torchconnector,
JuiceFS), LitData chunks and MosaicML MDS shards; and the few lines each
peer needs to run here (MosaicML's import, webdataset's ``gopen`` schemes,
s3torchconnector's samples).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import random
import sys
import tarfile
from pathlib import Path
from typing import Any

KiB = 2**10
#: Payload bytes per sample: with its 1 KiB of tar header and padding a
#: sample fills 32 KiB of a tar shard.
PAYLOAD = 31 * KiB


def _payload(i: int) -> bytes:
    return random.Random(i).randbytes(PAYLOAD)


# -- writing each library's format (untimed) --------------------------------


def _write_tars(out: Path, shards: int, per_shard: int) -> list[int]:
    out.mkdir(parents=True)
    counts = []
    for s in range(shards):
        ids = range(s * per_shard, (s + 1) * per_shard)
        with tarfile.open(
            out / f"shard-{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT
        ) as tar:
            for i in ids:
                data = _payload(i)
                info = tarfile.TarInfo(f"{i:08d}.bin")
                info.size = len(data)
                info.mtime = 0
                tar.addfile(info, io.BytesIO(data))
        counts.append(len(ids))
    return counts


def _litdata_item(i: int) -> dict[str, Any]:
    return {"id": i, "data": _payload(i)}


def _write_litdata(out: Path, n: int, shard_bytes: int) -> None:
    import litdata

    litdata.optimize(
        fn=_litdata_item,
        inputs=list(range(n)),
        output_dir=str(out),
        chunk_bytes=shard_bytes,
        num_workers=1,
        mode="overwrite",
    )


def _write_mds(out: Path, n: int, shard_bytes: int) -> None:
    writer_cls = _streaming()[1]
    with writer_cls(
        out=str(out),
        columns={"id": "int", "data": "bytes"},
        size_limit=shard_bytes,
        compression=None,
    ) as writer:
        for i in range(n):
            writer.write({"id": i, "data": _payload(i)})


def _upload(client: Any, bucket: str, root: Path, prefix: str) -> int:
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            total += path.stat().st_size
    return total


# -- peers' imports and glue -------------------------------------------------


def _streaming() -> tuple[Any, Any]:
    """Import MosaicML streaming's dataset and MDS writer.

    ``import streaming`` runs ``streaming/__init__.py``, which imports
    ``streaming.vision`` (torchvision) and ``streaming.base.dataloader``
    (transformers) even though neither ``StreamingDataset`` nor ``MDSWriter``
    uses them; torchvision from PyPI does not load beside the CPU build of
    torch. So the two package modules are created from their real specs
    without running their ``__init__``, and the real submodules are imported
    from them: no stand-in code, only the eager imports skipped.
    """
    if "streaming.base.dataset" not in sys.modules:
        for name in ("streaming", "streaming.base"):
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            if spec is None:
                raise ImportError(f"No module named {name!r}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            if name == "streaming.base":
                sys.modules["streaming"].base = module  # type: ignore[attr-defined]
    from streaming.base.dataset import StreamingDataset
    from streaming.base.format.mds.writer import MDSWriter

    return StreamingDataset, MDSWriter


def _register_gopen(
    s3_options: dict[str, Any], cachefs_options: dict[str, Any]
) -> None:
    """Let webdataset open ``s3://`` and ``cachefs::s3://`` URLs with fsspec.

    webdataset 1.0's ``gopen`` knows neither scheme (its S3 recipe is a
    ``pipe:aws s3 cp`` URL); cachefs will ship this glue (issue 14).
    """
    import fsspec

    # ``webdataset.gopen`` is also the name of the function: take the module.
    gopen = importlib.import_module("webdataset.gopen")

    def fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
        if url.startswith("cachefs::"):
            return fsspec.open(url, mode, s3=s3_options, cachefs=cachefs_options).open()
        return fsspec.open(url, mode, **s3_options).open()

    gopen.gopen_schemes["s3"] = fsspec_open
    gopen.gopen_schemes["cachefs"] = fsspec_open


def _cachefs_sample(sample: dict[str, Any]) -> tuple[int, bytes]:
    data = sample["bin"]
    return int(sample["__key__"]), data.tobytes() if isinstance(
        data, memoryview
    ) else data


def _collate(batch: list[Any]) -> tuple[list[int], int]:
    ids, nbytes = [], 0
    for item in batch:
        if isinstance(item, dict):
            i, data = item["id"], item["data"]
        else:
            i, data = item
        ids.append(int(i))
        nbytes += len(data)
    return ids, nbytes


def _s3torch_samples(spec: dict[str, Any], tars: list[str]) -> Any:
    """s3torchconnector's ``S3IterableDataset`` over the tars, as samples.

    Configured as its documentation advises for training data: objects
    listed once, sharded across DataLoader workers (``enable_sharding``),
    each streamed by the sequential reader, parsed with ``tarfile`` in
    stream mode.
    """
    import torch.utils.data as tud
    from s3torchconnector import S3ClientConfig, S3IterableDataset

    from bench.s3_proxy import REGION

    objects = S3IterableDataset.from_objects(
        [f"s3://{t}" for t in tars],
        region=REGION,
        endpoint=spec["proxy"],
        enable_sharding=True,
        s3client_config=S3ClientConfig(force_path_style=True),
    )

    class TarSamples(tud.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            for reader in objects:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    for member in tar:
                        f = tar.extractfile(member)
                        if f is not None:
                            yield int(member.name.split(".")[0]), f.read()

    return TarSamples()
