"""A read-only POSIX (FUSE) mount of the cache: ``cachefs.mount(url, dir)``.

The mount serves any target through the same :class:`~cachefs.CacheFileSystem`
as an fsspec job, with the same tiers and budgets, so a mounted job and an
fsspec job on one node share one disk tier. It needs the ``fuse`` extra
(pyfuse3 over libfuse 3, and trio); importing this package does not.

:mod:`~cachefs.mount.control` starts and stops mounts (:func:`mount`,
:func:`unmount`); :mod:`~cachefs.mount.daemon` is the serving process;
:mod:`~cachefs.mount.ops` its FUSE handlers, over
:mod:`~cachefs.mount.tree` (inodes, listings, sizes) and
:mod:`~cachefs.mount.reader` (one open file's reads). ``docs/mount.md``
describes the behaviour and what it costs.
"""

from cachefs.mount.control import Mount, is_mounted, mount, unmount

__all__ = ["Mount", "is_mounted", "mount", "unmount"]
