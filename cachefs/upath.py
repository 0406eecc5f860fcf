"""universal-pathlib support: ``UPath("cachefs::<url>")``.

Registered through the ``universal_pathlib.implementations`` entry point, so
UPath treats ``cachefs`` as a pass-through cache in a URL chain (like
fsspec's ``simplecache``): derived paths (``parent``, ``/``, ``with_name``)
name the cached target's path, and their string form is a URL that opens the
same file.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import fsspec
from upath import UPath

__all__ = ["CacheFSPath"]


class CacheFSPath(UPath):  # type: ignore[misc,unused-ignore]
    """A UPath over ``cachefs``, chained over its target's path."""

    __slots__ = ()

    @classmethod
    def _fs_factory(
        cls, urlpath: str, protocol: str, storage_options: Mapping[str, Any]
    ) -> Any:
        options = dict(storage_options)
        options.pop("fo", None)  # the chain's path, not an option
        return super()._fs_factory(urlpath, protocol, options)

    @property
    def storage_options(self) -> Mapping[str, Any]:
        """The options of the cachefs filesystem, without the chain's path."""
        options = dict(self._storage_options)
        options.pop("fo", None)
        return MappingProxyType(options)

    def with_segments(self, *pathsegments: Any) -> CacheFSPath:
        """Build a derived path (``parent``, ``/``, ``iterdir``, ``glob``).

        UPath hands the target's path (``http://host/dir``) back with
        ``protocol="cachefs"`` and refuses the mismatch; chained again as
        ``cachefs::http://host/dir``, it names the same cached directory.
        """
        if pathsegments and isinstance(pathsegments[0], str):
            first = pathsegments[0]
            protocol, sep, _ = first.partition("://")
            if sep and "::" not in first and protocol != "cachefs":
                pathsegments = (f"cachefs::{first}", *pathsegments[1:])
        derived: CacheFSPath = super().with_segments(*pathsegments)
        return derived

    def __str__(self) -> str:
        if self._relative_base is not None:
            return str(super().__str__())
        options = self._chain.nest().storage_options
        target = options.get("target_protocol")
        if not target:
            return str(super().__str__())
        inner = UPath(self.path, protocol=target, **options.get("target_options", {}))
        return f"cachefs::{inner}"


# UPath looks the protocol's class up in fsspec's registry to pick its flavour.
fsspec.get_filesystem_class("cachefs")
