"""Messages over a byte stream (the direct lane's unix socket): the same frames as over ZeroMQ, each message
prefixed with its size and its frames' lengths.

    u32 size (bytes after these 8), u32 frame count, u32 length of each frame, the frames one after another

No I/O here: :func:`pack` gives what one ``sendmsg`` sends, :func:`take` takes one whole message off the front
of what was received so far.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from inference_worker.protocol.frames import ProtocolError

PREFIX = struct.Struct("<II")
MAX_FRAMES = 65_536
MAX_MESSAGE = (1 << 32) - 1


def nbytes(frame: Any) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else memoryview(frame).nbytes


def pack(frames: Sequence[Any]) -> list[Any]:
    """Return the buffers that carry ``frames`` as one message: the prefix, then the frames as they are."""
    lengths = [nbytes(f) for f in frames]
    if len(lengths) > MAX_FRAMES:
        raise ProtocolError(f"{len(lengths)} frames in one message; at most {MAX_FRAMES}")
    size = 4 * len(lengths) + sum(lengths)
    if size > MAX_MESSAGE:
        raise ProtocolError(f"a message of {size} bytes; at most {MAX_MESSAGE}")
    return [PREFIX.pack(size, len(lengths)) + struct.pack(f"<{len(lengths)}I", *lengths), *frames]


def needed(buffer: memoryview | bytes | bytearray) -> int:
    """Return how many bytes the message at the front of ``buffer`` takes in all (at least the prefix's)."""
    if len(buffer) < PREFIX.size:
        return PREFIX.size
    size, _ = PREFIX.unpack_from(buffer)
    return PREFIX.size + int(size)


def parse(buffer: memoryview) -> tuple[list[memoryview], int] | None:
    """Return the frames of the whole message at the front of ``buffer`` (views into it) and its length, or
    None when it has not all arrived; raise :class:`ProtocolError` when it cannot be a message."""
    if len(buffer) < PREFIX.size:
        return None
    size, count = PREFIX.unpack_from(buffer)
    if count > MAX_FRAMES or 4 * count > size:
        raise ProtocolError(f"a message of {size} bytes cannot hold {count} frames")
    end = PREFIX.size + size
    if len(buffer) < end:
        return None
    lengths = struct.unpack_from(f"<{count}I", buffer, PREFIX.size)
    if 4 * count + sum(lengths) != size:
        raise ProtocolError("the frames' lengths do not add up to the message's size")
    frames, at = [], PREFIX.size + 4 * count
    for length in lengths:
        frames.append(buffer[at : at + length])
        at += length
    return frames, end


def take(received: bytearray) -> list[memoryview] | None:
    """Take the whole message at the front of ``received`` out of it and return its frames (views of a
    writable copy of its own), or None when it has not all arrived."""
    found = parse(memoryview(received))
    if found is None:
        return None
    lengths = [len(frame) for frame in found[0]]
    end = found[1]
    del found  # views of ``received``: it cannot shrink while they live
    with memoryview(received) as whole:
        message = memoryview(bytearray(whole[:end]))
    del received[:end]
    frames, at = [], PREFIX.size + 4 * len(lengths)
    for length in lengths:
        frames.append(message[at : at + length])
        at += length
    return frames
