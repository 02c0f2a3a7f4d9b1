"""What the dispatcher reads of a REQUEST or a REPLY to route it, and the header it passes on.

The dispatcher routes on a few header fields; it forwards the tensor frames untouched and re-encodes only the
header map, with its own fields set (``seq``, the resolved ``version`` and the ``deadline`` it enforces to a
worker; ``id``, ``model``, ``version`` and ``worker`` in place of ``seq`` to a gateway). Fields it does not
read travel on as they came (readers ignore unknown fields). A message is accepted here only if
:func:`~inference_worker.protocol.decode` and the kind's reader would accept it: a quick check covers the
common shapes (tensors of fixed-size datatypes), and anything else goes through the full reader, which raises
the same :class:`ProtocolError` it always did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack

from inference_worker.protocol.fields import Link, _integer, _number, _optional_text, _text
from inference_worker.protocol.frames import (
    DATATYPE_SIZES,
    KINDS,
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_NAME_LENGTH,
    MAX_TENSOR_BYTES,
    MAX_TENSORS,
    VERSION,
    Kind,
    decode,
)
from inference_worker.protocol.kinds import read
from inference_worker.protocol.messages import ForwardedRequest, Request, WorkerReply

_packer = msgpack.Packer(use_bin_type=True)


def peek(frames: Sequence[Any]) -> tuple[Kind, dict[str, Any]]:
    """Return the kind and header map of a message; raise :class:`ProtocolError` if it is malformed."""
    try:
        buf = memoryview(getattr(frames[0], "buffer", frames[0]))
        if buf.nbytes <= MAX_HEADER_BYTES:
            header = msgpack.unpackb(buf, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
            if type(header) is dict and header.get("v") == VERSION:
                kind = header.get("kind")
                if type(kind) is str and kind in KINDS:
                    return KINDS[kind], header
    except Exception:  # no frame, not a buffer, not msgpack: decode says which
        pass
    message = decode(frames)  # raises the ProtocolError that says what is wrong
    return message.kind, message.fields


def receive(frames: Sequence[Any], link: Link) -> Any:
    """Return a message arriving on ``link`` as the dispatcher handles it: a gateway's REQUEST or a worker's
    REPLY relayed (:class:`RelayedRequest`, :class:`RelayedReply`), any other kind typed; raise
    :class:`ProtocolError` if it is malformed or does not belong on ``link``."""
    kind, header = peek(frames)
    if kind is Kind.REQUEST and link is Link.GATEWAY_TO_DISPATCHER:
        return RelayedRequest.read(header, frames)
    if kind is Kind.REPLY and link is Link.WORKER_TO_DISPATCHER:
        return RelayedReply.read(header, frames)
    return read(decode(frames), link)


def tensors_fit(header: dict[str, Any], key: str, frames: Sequence[Any]) -> bool:
    """Whether every tensor ``header[key]`` describes is well formed, of a fixed-size datatype, and fills its
    frame exactly; False means: let :func:`decode` judge."""
    metas = header.get(key, [])
    if type(metas) is not list or len(metas) > MAX_TENSORS or len(metas) != len(frames) - 1:
        return False
    for i, meta in enumerate(metas):
        if type(meta) is not dict:
            return False
        name, datatype, shape = meta.get("name"), meta.get("datatype"), meta.get("shape")
        if type(datatype) is not str or type(name) is not str or not 0 < len(name) <= MAX_NAME_LENGTH:
            return False
        size = DATATYPE_SIZES.get(datatype)
        if size is None:  # BYTES: its layout is checked by decode
            return False
        if type(shape) is not list or len(shape) > MAX_DIMS:
            return False
        for dim in shape:
            if type(dim) is not int or dim < 0:
                return False
            size *= dim
        if size > MAX_TENSOR_BYTES:
            return False
        frame = frames[i + 1]
        try:
            nbytes = memoryview(getattr(frame, "buffer", frame)).nbytes
        except TypeError:
            return False
        if nbytes != size:
            return False
    return True


class RelayedRequest:
    """A gateway's REQUEST as the dispatcher holds it: the fields it routes on, the header, the tensor
    frames."""

    __slots__ = ("body", "deadline", "header", "id", "model", "priority", "request_id", "shm", "version")

    def __init__(self, header: dict[str, Any], body: list[Any]) -> None:
        self.header = header
        self.body = body
        self.id: str = header["id"]
        self.model: str = header["model"]
        self.version: str | None = _optional_text(header, "version") or None
        self.deadline: float | None = _number(header, "deadline")
        self.request_id: str = _text(header, "request_id")
        self.priority: int = _integer(header, "priority")
        self.shm: bool = type(header.get("shm")) is dict

    @classmethod
    def read(cls, header: dict[str, Any], frames: Sequence[Any]) -> RelayedRequest:
        """Read a REQUEST whose ``header`` :func:`peek` returned; raise :class:`ProtocolError` as
        :class:`Request` would."""
        outputs = header.get("outputs")
        if not (
            type(header.get("id")) is str
            and type(header.get("model")) is str
            and (not outputs or type(outputs) is list and all(type(name) is str for name in outputs))
            and tensors_fit(header, "inputs", frames)
        ):
            Request.read(decode(frames))  # raises what is wrong (decode's checks first), if anything is
        return cls(header, list(frames[1:]))

    @classmethod
    def of(cls, request: Request) -> RelayedRequest:
        """Return a typed REQUEST as the dispatcher holds one (tests, tools)."""
        frames = request.frames()
        return cls(msgpack.unpackb(frames[0], raw=False), frames[1:])

    def frames(self, seq: int, version: str, deadline: float) -> list[Any]:
        """Return the REQUEST a worker gets under key ``seq``: this header with the dispatcher's fields, then
        the tensor frames as received."""
        header = self.header
        header["seq"] = seq
        header["version"] = version
        if math.isfinite(deadline):
            header["deadline"] = deadline
        else:
            header.pop("deadline", None)
        return [_packer.pack(header), *self.body]

    def forwarded(self, seq: int, version: str, deadline: float) -> ForwardedRequest:
        """Return the REQUEST a worker gets, typed (to rewrite it, as when a segment is inlined)."""
        return ForwardedRequest.read(decode(self.frames(seq, version, deadline)))


class RelayedReply:
    """A worker's REPLY as the dispatcher passes it on: its key, its header, its output frames."""

    __slots__ = ("body", "header", "seq")

    def __init__(self, seq: int, header: dict[str, Any], body: list[Any]) -> None:
        self.seq = seq
        self.header = header
        self.body = body

    @classmethod
    def read(cls, header: dict[str, Any], frames: Sequence[Any]) -> RelayedReply:
        """Read a REPLY whose ``header`` :func:`peek` returned; raise :class:`ProtocolError` as
        :class:`WorkerReply` would."""
        seq = header.get("seq")
        if type(seq) is not int or not tensors_fit(header, "outputs", frames):
            WorkerReply.read(decode(frames))  # raises what is wrong, if anything is
        return cls(_integer(header, "seq"), header, list(frames[1:]))

    def frames(self, request_id: str, model: str, version: str, worker: str) -> list[Any]:
        """Return the REPLY the gateway gets: this header with the request's fields in place of ``seq``, then
        the output frames as received."""
        header = self.header
        del header["seq"]
        header["id"] = request_id
        header["model"] = model
        header["version"] = version
        header["worker"] = worker
        if type(header.get("stats")) is not dict:
            header["stats"] = {}
        if "shm_outputs" in header and type(header["shm_outputs"]) is not list:
            del header["shm_outputs"]
        return [_packer.pack(header), *self.body]
