"""Every message kind of the torchgate wire by link, and the one reader: ``read(message, link)``.

Each kind has a typed builder (``frames``) and reader (``read``) in :mod:`.messages`, :mod:`.session` or
:mod:`.queries` (the dispatcher relays REQUEST and REPLY through :mod:`.relay`, which rewrites only the
fields it sets); no other module writes a header field name or calls msgpack. Readers check what they rely on
and raise :class:`ProtocolError`; fields a reader does not know are ignored, so adding an optional field keeps
the wire compatible within a version. ``FIELDS`` of each class documents its header fields;
``docs/architecture.md`` holds :func:`message_table`, and a unit test keeps the two equal.
"""

from __future__ import annotations

from typing import Any

from inference_worker.protocol.fields import Link
from inference_worker.protocol.frames import Kind, Message, ProtocolError
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
from inference_worker.protocol.queries import Control, ControlReply, Query, QueryReply, Status, StatusReply
from inference_worker.protocol.session import (
    Disconnect,
    Drain,
    Heartbeat,
    Ready,
    WorkerControl,
    WorkerControlReply,
)

# -- reading -------------------------------------------------------------------------------------------------

MESSAGES: tuple[type[Any], ...] = (
    Request,
    ForwardedRequest,
    Cancel,
    WorkerCancel,
    WorkerReply,
    Reply,
    WorkerError,
    Error,
    Ready,
    Heartbeat,
    Drain,
    Disconnect,
    Query,
    QueryReply,
    Status,
    StatusReply,
    Control,
    ControlReply,
    WorkerControl,
    WorkerControlReply,
)

# The kinds each end accepts, and the class that reads each.
ACCEPTS: dict[Link, dict[Kind, type[Any]]] = {
    Link.GATEWAY_TO_DISPATCHER: {
        Kind.REQUEST: Request,
        Kind.CANCEL: Cancel,
        Kind.QUERY: Query,
        Kind.STATUS: Status,
        Kind.CONTROL: Control,
    },
    Link.DISPATCHER_TO_GATEWAY: {
        Kind.REPLY: Reply,
        Kind.ERROR: Error,
        Kind.QUERY_REPLY: QueryReply,
        Kind.STATUS_REPLY: StatusReply,
        Kind.CONTROL_REPLY: ControlReply,
    },
    Link.WORKER_TO_DISPATCHER: {
        Kind.READY: Ready,
        Kind.HEARTBEAT: Heartbeat,
        Kind.REPLY: WorkerReply,
        Kind.ERROR: WorkerError,
        Kind.DRAIN: Drain,
        Kind.DISCONNECT: Disconnect,
        Kind.CONTROL_REPLY: WorkerControlReply,
    },
    Link.DISPATCHER_TO_WORKER: {
        Kind.REQUEST: ForwardedRequest,
        Kind.CANCEL: WorkerCancel,
        Kind.HEARTBEAT: Heartbeat,
        Kind.DRAIN: Drain,
        Kind.DISCONNECT: Disconnect,
        Kind.CONTROL: WorkerControl,
    },
    # The direct lane (inference_worker/worker/direct.py, gateway/direct.py): a gateway's REQUEST as it
    # would send it to the dispatcher, with its version resolved; answered as the dispatcher answers.
    Link.GATEWAY_TO_WORKER: {Kind.REQUEST: Request, Kind.CANCEL: Cancel},
    Link.WORKER_TO_GATEWAY: {Kind.REPLY: Reply, Kind.ERROR: Error},
}


def read(message: Message, link: Link) -> Any:
    """Return the typed message ``message`` is on ``link``; raise :class:`ProtocolError` if it does not
    belong."""
    reader = ACCEPTS[link].get(message.kind)
    if reader is None:
        raise ProtocolError(f"unexpected {message.kind} on {link.value}")
    return reader.read(message)


def message_table() -> str:
    """Return the Markdown table of every message kind, its link and its fields (docs/architecture.md)."""
    rows = ["| kind | direction | fields |", "|---|---|---|"]
    for cls in MESSAGES:
        links = [link.value for link, kinds in ACCEPTS.items() if kinds.get(cls.KIND) is cls]
        fields = ", ".join(f"`{name}` ({doc})" for name, doc in cls.FIELDS.items()) or "none"
        rows.append(f"| {cls.KIND.value} | {', '.join(links)} | {fields} |")
    return "\n".join(rows) + "\n"
