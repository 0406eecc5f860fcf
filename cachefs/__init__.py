"""cachefs: a tiered chunk cache for training data, as an fsspec filesystem.

Use it through fsspec without importing it::

    fs = fsspec.filesystem("cachefs", target_protocol="s3")
    with fsspec.open("cachefs::https://host/data/shard-0000.tar") as f:
        ...
"""

from cachefs._version import __version__
from cachefs.chunks import ChunkKey, FileVersion, parse_size
from cachefs.config import CacheConfig, default_cache_dir
from cachefs.file import CachedFile
from cachefs.filesystem import CacheFileSystem

# The function, not the package: ``cachefs.mount(url, mountpoint, ...)``
# (the package stays importable as ``from cachefs.mount import ...``).
from cachefs.mount import mount
from cachefs.policy import (
    EvictionPolicy,
    LRUPolicy,
    available_policies,
    register_policy,
)
from cachefs.wds import install as _install_webdataset_scheme

# webdataset's gopen learns the ``cachefs::`` scheme (see cachefs.wds).
_install_webdataset_scheme()

__all__ = [
    "CacheConfig",
    "CacheFileSystem",
    "CachedFile",
    "ChunkKey",
    "EvictionPolicy",
    "FileVersion",
    "LRUPolicy",
    "__version__",
    "available_policies",
    "default_cache_dir",
    "mount",
    "parse_size",
    "register_policy",
]
