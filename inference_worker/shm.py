"""Bulk tensor bytes in shared memory between the processes of one host, with an owner and no name on disk.

A :class:`Segment` is an anonymous memory file (``memfd_create``) made and owned by one process, a gateway
process for one request. Another process of the same host and user maps it through ``/proc/<owner>/fd/<fd>``,
checking that the file there is still the one the reference names (its inode: file descriptor numbers are
reused). Nothing is ever created in ``/dev/shm``: the kernel frees a segment's memory once its owner has closed
it (or died, kill -9 included) and the last mapping of it is gone, so no process can leak one past its life.

A request's segment holds its input tensors at the offsets its reference gives, and room for the outputs the
gateway expects (``reply``); a worker that maps it reads the inputs in place and writes the outputs there. Only
the reference, a few dozen bytes, travels through the dispatcher. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from dataclasses import dataclass
from typing import Any

from inference_worker.protocol import DATATYPE_SIZES, MAX_TENSOR_BYTES, ProtocolError, TensorMeta, tensor_meta

NAME = "torchgate-tensors"  # the memfd's name, as /proc/<pid>/fd/<fd> shows it: "/memfd:torchgate-tensors"
REFUSED = "shared memory: "  # how a worker's error about a segment it cannot map begins
MIN_BYTES = 64 * 1024  # below this, frames cost less than a segment's system calls
MAX_SEGMENT = 1 << 34


class SegmentGone(RuntimeError):
    """The segment a reference names no longer exists (its owner closed it or died) or cannot be mapped."""


def supported() -> bool:
    """Return whether this host can make segments (Linux with memfd_create and /proc)."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


@dataclass(slots=True)
class Segment:
    """One anonymous shared-memory file owned by this process, mapped here."""

    fd: int
    size: int
    ino: int
    memory: mmap.mmap

    @classmethod
    def create(cls, size: int) -> Segment:
        fd = os.memfd_create(NAME, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(1, size))
            memory = mmap.mmap(fd, max(1, size))
            return cls(fd, size, os.fstat(fd).st_ino, memory)
        except BaseException:
            os.close(fd)
            raise

    def ref(self) -> dict[str, int]:
        """Return what another process needs to map this segment."""
        return {"pid": os.getpid(), "fd": self.fd, "ino": self.ino, "size": self.size}

    def close(self) -> None:
        """Close the file (others can no longer map it); the mapping here lives on while views of it do."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach(ref: Any) -> mmap.mmap:
    """Map the segment ``ref`` names, read-write; raise :class:`SegmentGone` if it is not there any more."""
    pid, fd, ino, size = (_int(ref, key) for key in ("pid", "fd", "ino", "size"))
    if not 0 < size <= MAX_SEGMENT:
        raise ProtocolError(f"shared-memory segment of {size} bytes")
    path = f"/proc/{pid}/fd/{fd}"
    try:
        if not os.readlink(path).startswith(f"/memfd:{NAME}"):
            raise SegmentGone(f"{path} is not a torchgate segment")
        handle = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentGone(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = os.fstat(handle)
        if info.st_ino != ino or info.st_size < size:
            raise SegmentGone(f"{path} is no longer the request's segment")
        return mmap.mmap(handle, size)
    except OSError as exc:
        raise SegmentGone(f"cannot map {path}: {exc.strerror}") from None
    finally:
        os.close(handle)


@dataclass(frozen=True, slots=True)
class Placed:
    """A tensor in a segment: what it is and where its bytes start."""

    meta: TensorMeta
    offset: int

    def to_wire(self) -> dict[str, Any]:
        return {**self.meta.to_wire(), "offset": self.offset}


def placed_tensors(raw: Any, size: int) -> list[Placed]:
    """Check a list of ``{name, datatype, shape, offset}`` against a segment of ``size`` bytes."""
    if not isinstance(raw, list) or len(raw) > 64:
        raise ProtocolError("shared-memory tensors must be a list of at most 64")
    out = []
    for entry in raw:
        meta = tensor_meta(entry, MAX_TENSOR_BYTES)
        offset = entry.get("offset")
        if type(offset) is not int or offset < 0 or offset + meta.nbytes > size:
            raise ProtocolError(
                f"tensor {meta.name!r}: offset {offset!r} does not fit a segment of {size} bytes"
            )
        out.append(Placed(meta, offset))
    return out


def layout(metas: list[TensorMeta], start: int = 0, align: int = 64) -> tuple[list[int], int]:
    """Return each tensor's offset from ``start`` (aligned) and the end of the last one."""
    offsets, at = [], start
    for meta in metas:
        at = -(-at // align) * align
        offsets.append(at)
        at += meta.nbytes
    return offsets, at


def fixed_nbytes(datatype: str, shape: tuple[int, ...]) -> int | None:
    """Return the bytes of a tensor of ``shape`` (None when a dim is unknown, -1)."""
    if any(d < 0 for d in shape) or datatype not in DATATYPE_SIZES:
        return None
    return DATATYPE_SIZES[datatype] * math.prod(shape)


@dataclass(slots=True)
class ReplyArea:
    """Where in a request's segment its outputs may go."""

    memory: mmap.mmap
    offset: int
    capacity: int

    def place(self, tensors: list[tuple[TensorMeta, Any]]) -> list[dict[str, Any]] | None:
        """Write ``tensors`` (meta, buffer) into the area; return where, or None if they do not fit (frames)."""
        offsets, end = layout([meta for meta, _ in tensors], self.offset)
        if end > self.offset + self.capacity:
            return None
        view = memoryview(self.memory)
        for (meta, buf), at in zip(tensors, offsets, strict=True):
            if meta.nbytes:
                view[at : at + meta.nbytes] = memoryview(buf).cast("B")
        return [Placed(meta, at).to_wire() for (meta, _), at in zip(tensors, offsets, strict=True)]


def request_tensors(ref: Any) -> tuple[list[tuple[TensorMeta, memoryview]], ReplyArea | None]:
    """Map a request's segment; return its input tensors (views, no copy) and where its outputs may go.

    Raise :class:`SegmentGone` if the segment cannot be mapped, ``ProtocolError`` if ``ref`` is malformed.
    """
    placed = placed_tensors(ref.get("inputs") if isinstance(ref, dict) else None, _int(ref, "size"))
    memory = attach(ref)
    view = memoryview(memory)
    tensors = [(p.meta, view[p.offset : p.offset + p.meta.nbytes]) for p in placed]
    area = None
    reply = ref.get("reply")
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and all(type(v) is int and v >= 0 for v in reply)
        and reply[0] + reply[1] <= len(memory)
        and reply[1] > 0
    ):
        area = ReplyArea(memory, reply[0], reply[1])
    return tensors, area


def _int(ref: Any, key: str) -> int:
    value = ref.get(key) if isinstance(ref, dict) else None
    if type(value) is not int or value < 0:
        raise ProtocolError(f"shared-memory reference needs a non-negative integer {key!r}")
    return value


def close_quietly(memory: mmap.mmap) -> None:
    """Unmap now if no view of the mapping is left, else leave it to the last view."""
    with contextlib.suppress(BufferError, ValueError):
        memory.close()
