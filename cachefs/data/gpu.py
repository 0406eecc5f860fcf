"""From cached bytes to GPU memory: tensors, pinned batches, device copies.

The shortest path from the cache to a GPU copies the bytes once on the host:

1. :func:`to_tensor` wraps a sample's memoryview as a tensor, no copy. The
   tensor aliases the cache, which is read-only: it must not be written.
2. :func:`pack` copies a batch's views once into one tensor, in pinned
   (page-locked) memory when a GPU is present.
3. :func:`to_device` starts the host-to-device copies with
   ``non_blocking=True``; from pinned memory they run asynchronously, so the
   next batch is packed while this one travels.

In DataLoader workers, use :func:`collate` as ``collate_fn`` (it packs into
ordinary memory: a worker must not touch CUDA) and ``pin_memory=True`` on the
DataLoader, whose pin thread moves each batch to pinned memory in the main
process. Needs torch.
"""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch.utils.data import default_collate

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["PackedBytes", "collate", "pack", "pin_batch", "to_device", "to_tensor"]

_BUFFERS = (memoryview, bytes, bytearray)
# torch.frombuffer warns once per process about a read-only buffer; this
# records that the one warning has been consumed (knowingly silenced).
_readonly_warning_spent = False


def to_tensor(view: Buffer, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return a 1-D tensor over ``view``'s bytes, without copying them.

    Parameters
    ----------
    view
        A buffer: typically a sample field, a read-only memoryview into the
        cache.
    dtype
        Element type (default ``torch.uint8``); the buffer's size must be a
        multiple of its item size.

    Returns
    -------
    torch.Tensor
        A CPU tensor sharing memory with ``view`` (which it keeps alive).

    Notes
    -----
    The cache's memory is read-only, and PyTorch has no read-only tensors:
    ``torch.frombuffer`` says so in a ``UserWarning``, which this function
    silences on purpose. **Do not write to the tensor**: that would change
    cached bytes other readers see, or crash on a read-only mapping. Copy
    first (``.clone()``, or :func:`pack`) to get a writable tensor.
    """
    global _readonly_warning_spent
    dtype = torch.uint8 if dtype is None else dtype
    mv = memoryview(view)
    if mv.nbytes == 0:
        return torch.empty(0, dtype=dtype)
    if mv.readonly and not _readonly_warning_spent:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message="The given buffer is not writable",
                category=UserWarning,
            )
            tensor = torch.frombuffer(mv, dtype=dtype)
        _readonly_warning_spent = True
        return tensor
    return torch.frombuffer(mv, dtype=dtype)


class PackedBytes(NamedTuple):
    """A batch of byte strings of different lengths, packed end to end.

    Attributes
    ----------
    data
        All the bytes, one ``uint8`` tensor.
    offsets
        ``int64`` tensor of ``len(batch) + 1`` offsets: item ``i`` is
        ``data[offsets[i]:offsets[i + 1]]``.
    """

    data: torch.Tensor
    offsets: torch.Tensor

    def item(self, i: int) -> torch.Tensor:
        """Return item ``i`` of the batch (a view of :attr:`data`)."""
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]


def pack(
    views: Sequence[Buffer], *, pin_memory: bool | None = None
) -> torch.Tensor | PackedBytes:
    """Copy a batch of buffers once into one tensor.

    Parameters
    ----------
    views
        The batch's buffers (memoryviews from the cache, bytes, ...).
    pin_memory
        Allocate the tensor in pinned memory, ready for an asynchronous
        device copy; ``None`` pins when CUDA is available.

    Returns
    -------
    torch.Tensor or PackedBytes
        A ``(batch, length)`` ``uint8`` tensor when all buffers have the
        same length, else a :class:`PackedBytes`.
    """
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    mvs = [memoryview(v).cast("B") for v in views]
    lengths = [m.nbytes for m in mvs]
    total = sum(lengths)
    out = torch.empty(total, dtype=torch.uint8, pin_memory=pin)
    if total:
        # A plain memoryview of the tensor's memory: slice assignment is a
        # memcpy, without a tensor op per item.
        dest = memoryview((ctypes.c_char * total).from_address(out.data_ptr())).cast(
            "B"
        )
        pos = 0
        for m, n in zip(mvs, lengths, strict=True):
            dest[pos : pos + n] = m
            pos += n
    if lengths and all(n == lengths[0] for n in lengths):
        return out.view(len(lengths), lengths[0])
    offsets = torch.tensor([0, *accumulate(lengths)], dtype=torch.int64)
    return PackedBytes(out, offsets.pin_memory() if pin else offsets)


def collate(
    samples: Sequence[Mapping[str, Any]], *, pin_memory: bool = False
) -> dict[str, Any]:
    """Collate samples into a batch: buffers packed, the rest by torch.

    Use as a DataLoader's ``collate_fn``. Each buffer field (memoryview,
    bytes) becomes one tensor or :class:`PackedBytes` (see :func:`pack`);
    other fields (``"__key__"``, ``"__url__"``, numbers, tensors) go
    through :func:`torch.utils.data.default_collate`.

    Parameters
    ----------
    samples
        Sample dicts with the same fields.
    pin_memory
        Pack into pinned memory. Leave ``False`` in DataLoader workers (they
        must not initialise CUDA) and let ``DataLoader(pin_memory=True)``
        pin; set it when collating in the main process.
    """
    if not samples:
        return {}
    fields = list(samples[0])
    out: dict[str, Any] = {}
    for field in fields:
        try:
            values = [s[field] for s in samples]
        except KeyError:
            odd = next(s for s in samples if field not in s)
            raise ValueError(
                f"sample {odd.get('__key__')!r} has no field {field!r}, "
                f"which {samples[0].get('__key__')!r} has"
            ) from None
        if all(isinstance(v, _BUFFERS) for v in values):
            out[field] = pack(values, pin_memory=pin_memory)
        else:
            out[field] = default_collate(values)
    return out


def _apply(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # NamedTuple
        return type(batch)(*(_apply(x, fn) for x in batch))
    if isinstance(batch, Mapping):
        return {k: _apply(v, fn) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_apply(x, fn) for x in batch)
    return batch


def pin_batch(batch: Any) -> Any:
    """Return ``batch`` with every tensor in pinned memory (one copy each).

    Tensors in dicts, lists, tuples and :class:`PackedBytes` are pinned;
    other values pass through. Tensors already pinned are not copied.
    """
    return _apply(batch, lambda t: t if t.is_pinned() else t.pin_memory())


def to_device(
    batch: Any, device: torch.device | str, *, non_blocking: bool = True
) -> Any:
    """Copy every tensor in ``batch`` to ``device``.

    With ``non_blocking=True`` (the default) copies from pinned memory are
    asynchronous: they overlap with host work until a kernel or a
    synchronisation needs the data. From ordinary memory they are not.
    """
    return _apply(batch, lambda t: t.to(device, non_blocking=non_blocking))
