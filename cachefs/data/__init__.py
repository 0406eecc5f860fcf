"""Shard readers and data-loader datasets over the cache.

``World`` is imported eagerly (the CLI uses it); the datasets are loaded on
first use, so ``import cachefs.data`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cachefs.data.world import World

if TYPE_CHECKING:
    from cachefs.data.dataset import ShardDataset
    from cachefs.data.errors import ShardFormatError
    from cachefs.data.zarr_windows import ZarrWindows

__all__ = ["ShardDataset", "ShardFormatError", "World", "ZarrWindows"]

_LAZY = {
    "ShardDataset": "cachefs.data.dataset",
    "ShardFormatError": "cachefs.data.errors",
    "ZarrWindows": "cachefs.data.zarr_windows",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cachefs.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
