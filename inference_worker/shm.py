"""Bulk tensor bytes in shared memory between the processes of one host, with an owner and no name on disk.

A :class:`Segment` is an anonymous memory file (``memfd_create``) made and owned by one process, a gateway
process for one request. Another process of the same host and user maps it through ``/proc/<owner>/fd/<fd>``,
checking that the file there is still the one the reference names (its inode: file descriptor numbers are
reused). Nothing is ever created in ``/dev/shm``: the kernel frees a segment's memory once its owner has
closed it (or died, kill -9 included) and the last mapping of it is gone, so no process can leak one past its
life.

A request's segment holds its input tensors at the offsets its reference gives, and room for the outputs the
gateway expects (``reply``); a worker that maps it reads the inputs in place and writes the outputs there.
Only the reference, a few dozen bytes, travels through the dispatcher. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from inference_worker.protocol import (
    BYTES,
    DATATYPE_SIZES,
    MAX_TENSOR_BYTES,
    ProtocolError,
    TensorMeta,
    tensor_meta,
)

NAME = "torchgate-tensors"  # the memfd's name, as /proc/<pid>/fd/<fd> shows it: "/memfd:torchgate-tensors"
REFUSED = "shared memory: "  # how a worker's error about a segment it cannot map begins
MIN_BYTES = 64 * 1024  # below this, frames cost less than a segment's system calls
HEADER = 64  # a segment's first bytes: the token of its current use (the tensors start after)
TOKEN_BYTES = 8
POOL_BYTES = 256 << 20  # free segments a process keeps for its next requests, in bytes
MAX_SEGMENT = 1 << 34


class SegmentGone(RuntimeError):
    """The segment a reference names no longer exists (its owner closed it or died) or cannot be mapped."""


def supported() -> bool:
    """Return whether this host can make segments (Linux with memfd_create and /proc)."""
    return hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


@dataclass(slots=True)
class Segment:
    """One anonymous shared-memory file owned by this process, mapped here.

    Its first :data:`HEADER` bytes hold the token of its current use: a segment is used again (allocating and
    zeroing fresh pages costs more than copying the tensors), and a worker checks the token before it reads
    the inputs and again before it writes the outputs, so that a late or duplicate worker never touches the
    next request's data.
    """

    fd: int
    size: int
    ino: int
    memory: mmap.mmap
    token: int = 0

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

    def stamp(self) -> None:
        """Start a new use: a fresh token, written at the segment's start."""
        self.token = int.from_bytes(os.urandom(8), "little") or 1
        self.memory[:TOKEN_BYTES] = self.token.to_bytes(TOKEN_BYTES, "little")

    def ref(self) -> dict[str, int]:
        """Return what another process needs to map this segment."""
        return {"pid": os.getpid(), "fd": self.fd, "ino": self.ino, "size": self.size, "token": self.token}

    def offset_of(self, data: object) -> int | None:
        """Return where ``data`` starts in this segment if it is a writable, non-empty view of it."""
        if not isinstance(data, memoryview) or data.obj is not self.memory or data.readonly:
            return None
        if not data.nbytes or not data.c_contiguous:
            return None
        return address(data) - address(self.memory)

    def close(self) -> None:
        """Close the file (others can no longer map it); the mapping here lives on while views of it do."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def address(buffer: Any) -> int:
    """Return where a writable buffer (a mapping, a view of one) starts in this process's memory."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


class Pool:
    """Segments this process made and may use again (thread-safe); sizes round up to powers of two."""

    def __init__(self, max_free_bytes: int = POOL_BYTES) -> None:
        self.max_free_bytes = max_free_bytes
        self.free_bytes = 0
        self._free: dict[int, list[Segment]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self, size: int) -> Segment:
        """Return a segment of at least ``size`` bytes, stamped for a new use."""
        rounded = max(MIN_BYTES, 1 << (max(1, size) - 1).bit_length())
        with self._lock:
            if self._pid != os.getpid():  # a forked child never uses its parent's segments
                self._free, self.free_bytes, self._pid = {}, 0, os.getpid()
            free = self._free.get(rounded)
            segment = free.pop() if free else None
            if segment is not None:
                self.free_bytes -= segment.size
        if segment is None:
            segment = Segment.create(rounded)
        segment.stamp()
        return segment

    def give(self, segment: Segment) -> None:
        """Take back a segment whose request ended with an answer; close it if the pool is full."""
        with self._lock:
            if self.free_bytes + segment.size <= self.max_free_bytes:
                self._free.setdefault(segment.size, []).append(segment)
                self.free_bytes += segment.size
                return
        segment.close()


class Pinning(Protocol):
    """Page-locks mappings for a device's copies (CUDA: ``inference_worker.gpu.HostPinning``)."""

    def register(self, memory: mmap.mmap) -> bool:
        """Page-lock ``memory``; return whether it is now registered."""
        ...

    def unregister(self, memory: mmap.mmap) -> None:
        """Undo :meth:`register` (before the mapping is unmapped)."""
        ...


class Mappings:
    """The segments a worker has mapped, kept for their next use; those whose owner closed them are
    dropped.

    With a :class:`Pinning` (a GPU worker), each mapping is registered once when it is mapped, so a copy to
    the device reads the segment in place. A dropped mapping is retired, not unmapped: it is unregistered and
    unmapped by :meth:`sweep` once no request's tensors view it any more (a copy may still be reading it).
    """

    def __init__(self, max_entries: int = 256, pinning: Pinning | None = None) -> None:
        self.max_entries = max_entries
        self.pinning = pinning
        self._maps: OrderedDict[tuple[int, int, int], mmap.mmap] = OrderedDict()
        self._pinned: set[int] = set()  # id() of the mappings registered with ``pinning``
        self._retired: list[mmap.mmap] = []  # dropped, unmapped once no view of them is left

    def get(self, ref: Any) -> mmap.mmap:
        key = (_int(ref, "pid"), _int(ref, "fd"), _int(ref, "ino"))
        memory = self._maps.get(key)
        if memory is None or len(memory) < _int(ref, "size"):
            fresh = attach(ref)
            if memory is not None:  # outgrown: the segment was made anew under the same descriptor
                self._retired.append(memory)
            memory = fresh
            if self.pinning is not None and self.pinning.register(memory):
                self._pinned.add(id(memory))
            self._maps[key] = memory
            while len(self._maps) > self.max_entries:
                self._retired.append(self._maps.popitem(last=False)[1])
        self._maps.move_to_end(key)
        return memory

    def pinned(self, memory: mmap.mmap) -> bool:
        """Return whether ``memory`` is registered with the pinning."""
        return id(memory) in self._pinned

    def sweep(self) -> int:
        """Drop the mappings of segments their owner no longer holds (closed, or the owner died), unmap the
        dropped ones no view is left of; return how many were dropped."""
        gone = [key for key in self._maps if not _still_there(*key)]
        for key in gone:
            self._retired.append(self._maps.pop(key))
        self._release()
        return len(gone)

    def close(self) -> None:
        """Drop every mapping (at exit); those still viewed are unmapped by a later :meth:`sweep`."""
        self._retired.extend(self._maps.values())
        self._maps.clear()
        self._release()

    @property
    def retired(self) -> int:
        """How many dropped mappings wait for their last view to go."""
        return len(self._retired)

    def _release(self) -> None:
        kept = []
        for memory in self._retired:
            if in_use(memory):
                kept.append(memory)
                continue
            if id(memory) in self._pinned:
                self._pinned.discard(id(memory))
                if self.pinning is not None:
                    self.pinning.unregister(memory)
            close_quietly(memory)
        self._retired = kept

    def __len__(self) -> int:
        return len(self._maps)


def in_use(memory: mmap.mmap) -> bool:
    """Return whether a view of ``memory`` is alive (a tensor, a memoryview): it must stay mapped then."""
    if memory.closed:
        return False
    try:
        memory.resize(-1)  # refuses with BufferError while views exist, else with ValueError: changes nothing
    except BufferError:
        return True
    except (ValueError, OSError, SystemError):
        return False
    return True  # not expected: keep it mapped rather than risk it


def _still_there(pid: int, fd: int, ino: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/fd/{fd}").st_ino == ino
    except OSError:
        return False


def check_token(memory: mmap.mmap, ref: Any) -> None:
    """Raise :class:`SegmentGone` unless the segment is still in the use ``ref`` names."""
    if int.from_bytes(memory[:TOKEN_BYTES], "little") != _int(ref, "token"):
        raise SegmentGone("the segment has moved on to another request (this one ended)")


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
        if meta.datatype == BYTES:
            raise ProtocolError(f"tensor {meta.name!r}: BYTES tensors travel in frames, not in shared memory")
        offset = entry.get("offset")
        if type(offset) is not int or offset < HEADER or offset + meta.nbytes > size:
            raise ProtocolError(
                f"tensor {meta.name!r}: offset {offset!r} does not fit a segment of {size} bytes"
            )
        out.append(Placed(meta, offset))
    return out


def placeable(metas: list[TensorMeta]) -> bool:
    """Return whether these tensors may go in a segment: BYTES ones may not (their size is not their
    shape's)."""
    return all(meta.datatype != BYTES for meta in metas)


def layout(metas: list[TensorMeta], start: int = HEADER, align: int = 64) -> tuple[list[int], int]:
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
    ref: dict[str, Any]

    def place(self, tensors: list[tuple[TensorMeta, Any]]) -> list[dict[str, Any]] | None:
        """Write ``tensors`` (meta, buffer) into the area; return where, or None if they do not fit (frames).

        Raise :class:`SegmentGone` if the segment has moved on to another request.
        """
        if not placeable([meta for meta, _ in tensors]):
            return None
        offsets, end = layout([meta for meta, _ in tensors], self.offset)
        if end > self.offset + self.capacity:
            return None
        check_token(self.memory, self.ref)
        view = memoryview(self.memory)
        for (meta, buf), at in zip(tensors, offsets, strict=True):
            if meta.nbytes:
                view[at : at + meta.nbytes] = memoryview(buf).cast("B")
        return [Placed(meta, at).to_wire() for (meta, _), at in zip(tensors, offsets, strict=True)]


def request_tensors(
    ref: Any, mappings: Mappings | None = None
) -> tuple[list[tuple[TensorMeta, memoryview]], ReplyArea | None]:
    """Map a request's segment (through ``mappings`` when given); return its input tensors (views, no copy)
    and where its outputs may go.

    Raise :class:`SegmentGone` if the segment cannot be mapped or has moved on to another request,
    ``ProtocolError`` if ``ref`` is malformed.
    """
    placed = placed_tensors(ref.get("inputs") if isinstance(ref, dict) else None, _int(ref, "size"))
    _int(ref, "token")
    memory = mappings.get(ref) if mappings is not None else attach(ref)
    check_token(memory, ref)
    view = memoryview(memory)
    tensors = [(p.meta, view[p.offset : p.offset + p.meta.nbytes]) for p in placed]
    area = None
    reply = ref.get("reply")
    if (
        isinstance(reply, list)
        and len(reply) == 2
        and all(type(v) is int and v >= 0 for v in reply)
        and reply[0] >= HEADER
        and reply[0] + reply[1] <= len(memory)
        and reply[1] > 0
    ):
        area = ReplyArea(memory, reply[0], reply[1], ref)
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
