"""The torchgate wire: framing (:mod:`.frames`) and every message kind (:mod:`.messages`); no torch, no
zmq."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inference_worker.protocol.fields import (
    MAX_PARAMETERS,
    Link,
    Parameters,
    Tensors,
    parameter_problem,
)
from inference_worker.protocol.frames import (
    BYTES,
    DATATYPE_SIZES,
    DATATYPES,
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_NAME_LENGTH,
    MAX_TENSOR_BYTES,
    MAX_TENSORS,
    STRING_LIMITS,
    VERSION,
    ErrorCode,
    Kind,
    Message,
    ProtocolError,
    TensorMeta,
    decode,
    encode,
    header_id,
    require,
    tensor_meta,
)
from inference_worker.protocol.kinds import ACCEPTS, MESSAGES, message_table, read
from inference_worker.protocol.messages import (
    Cancel,
    Error,
    ForwardedRequest,
    Reply,
    Request,
    WorkerCancel,
    WorkerError,
    WorkerReply,
)
from inference_worker.protocol.queries import (
    Control,
    ControlReply,
    Query,
    QueryReply,
    Status,
    StatusReply,
    WorkerStatus,
)
from inference_worker.protocol.session import (
    Computing,
    Disconnect,
    Drain,
    Heartbeat,
    Ready,
    WorkerControl,
    WorkerControlReply,
)


def receive(frames: Sequence[Any], link: Link, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> Any:
    """Decode and read the frames of one message arriving on ``link``; raise :class:`ProtocolError` if bad."""
    return read(decode(frames, max_tensor_bytes), link)


__all__ = [
    "ACCEPTS",
    "BYTES",
    "DATATYPES",
    "DATATYPE_SIZES",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_NAME_LENGTH",
    "MAX_TENSOR_BYTES",
    "MAX_TENSORS",
    "MESSAGES",
    "STRING_LIMITS",
    "VERSION",
    "Cancel",
    "Computing",
    "Control",
    "ControlReply",
    "Disconnect",
    "Drain",
    "Error",
    "ErrorCode",
    "ForwardedRequest",
    "Heartbeat",
    "Kind",
    "Link",
    "MAX_PARAMETERS",
    "Parameters",
    "parameter_problem",
    "Message",
    "ProtocolError",
    "Query",
    "QueryReply",
    "Ready",
    "Reply",
    "Request",
    "Status",
    "StatusReply",
    "TensorMeta",
    "Tensors",
    "WorkerCancel",
    "WorkerControl",
    "WorkerControlReply",
    "WorkerError",
    "WorkerReply",
    "WorkerStatus",
    "decode",
    "encode",
    "header_id",
    "message_table",
    "read",
    "receive",
    "require",
    "tensor_meta",
]
