"""A binary infer body received straight into the shared-memory segment its tensors travel in, and large
binary outputs written as they are: gunicorn's reader over a real socket pair, the client's segments, the
codec."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import orjson
import pytest
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader

from gateway.body import read_body
from gateway.client import DispatcherClient
from gateway.codec import LARGE_OUTPUTS, Tensor, infer_response, parse_infer_request
from gateway.service import reply_bytes, reply_room
from harness import DEFAULT_REPOSITORY
from inference_worker import shm
from inference_worker.repository import load_repository

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not shm.supported(), reason="needs memfd_create and /proc"),
]


def binary_body(arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """Return an OIP binary body of ``arrays`` (all binary data) and its JSON header's length."""
    doc = {
        "inputs": [
            {
                "name": name,
                "datatype": "FP32",
                "shape": list(a.shape),
                "parameters": {"binary_data_size": a.nbytes},
            }
            for name, a in arrays.items()
        ]
    }
    header = orjson.dumps(doc)
    return header + b"".join(a.tobytes() for a in arrays.values()), len(header)


def client() -> DispatcherClient:
    c = DispatcherClient("ipc:///nonexistent/never-connected.sock")  # its sockets are made on first use only
    assert c.shared_memory
    return c


def receive(into: memoryview, payload: bytes, read_ahead: int) -> memoryview | bytearray | None:
    """Send ``payload`` over a socket pair and read it with gunicorn's ``wsgi.input`` into ``into``."""
    server, peer = socket.socketpair()
    with server, peer:
        unreader = SocketUnreader(server)
        unreader.unread(payload[:read_ahead])
        stream = Body(LengthReader(unreader, len(payload)))
        sender = threading.Thread(target=peer.sendall, args=(payload[read_ahead:],), daemon=True)
        sender.start()
        data = read_body(stream, len(payload), into)
        sender.join(timeout=10)
        assert stream.read() == b""  # gunicorn sees the body as read
    return data


def test_a_binary_body_is_received_into_the_segment_and_its_tensors_travel_from_there() -> None:
    c = client()
    x, y = np.arange(150_000, dtype=np.float32), np.ones((7, 3), dtype=np.float32)
    payload, json_bytes = binary_body({"x": x, "y": y})
    lease = c.lease_body(len(payload), json_bytes)
    assert lease is not None
    data = receive(lease.view, payload, read_ahead=3000)
    assert data is lease.view and bytes(lease.view) == payload
    request = parse_infer_request(data, str(json_bytes))
    tensors = [Tensor(i.name, i.datatype, i.shape, i.data) for i in request.inputs]
    placed = c._segment(tensors, reply_bytes=4096)
    assert placed is not None
    segment, ref = placed
    assert segment is lease.segment  # no other segment, no copy
    offsets = [p["offset"] for p in ref["inputs"]]
    assert offsets[0] % 64 == 0 and offsets[0] >= shm.HEADER  # the binary data start aligned
    tensors_there, area = shm.request_tensors(ref)  # as the worker maps it
    assert np.array_equal(np.frombuffer(tensors_there[0][1], np.float32), x)
    assert np.array_equal(np.frombuffer(tensors_there[1][1], np.float32).reshape(7, 3), y)
    assert area is not None and area.offset >= lease.end and area.capacity >= 4096
    c.release_body(lease)  # taken over by the request: nothing to give back
    assert c._pool.free_bytes == 0
    del tensors_there, area, tensors, request, data
    segment.close()


def test_outputs_that_do_not_fit_after_the_body_move_the_inputs_to_another_segment() -> None:
    c = client()
    x = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)
    payload, json_bytes = binary_body({"x": x})
    lease = c.lease_body(len(payload), json_bytes)
    assert lease is not None
    receive(lease.view, payload, read_ahead=0)
    request = parse_infer_request(lease.view, str(json_bytes))
    tensors = [Tensor(i.name, i.datatype, i.shape, i.data) for i in request.inputs]
    placed = c._segment(tensors, reply_bytes=lease.segment.size)  # room for that never fits after the body
    assert placed is not None
    segment, ref = placed
    assert segment is not lease.segment
    got, _ = shm.request_tensors(ref)
    assert np.array_equal(np.frombuffer(got[0][1], np.float32), x)
    del got
    segment.close()
    assert c._pool.free_bytes == 0  # the body's segment stays lent while the request runs (its views)...
    c.release_body(lease)
    assert c._pool.free_bytes == lease.segment.size  # ...and is given back once it is answered


def test_a_lease_no_request_took_is_given_back_and_small_or_json_bodies_get_none() -> None:
    c = client()
    lease = c.lease_body(300_000, 200)
    assert lease is not None and lease.view.nbytes == 300_000
    c.release_body(lease)
    assert c._pool.free_bytes == lease.segment.size  # ready for the next body
    c.release_body(lease)  # twice: still once in the pool
    assert c._pool.free_bytes == lease.segment.size
    assert c.lease_body(shm.MIN_BYTES - 1 + 200, 200) is None  # tensors too small for shared memory
    assert c.lease_body(100, 300) is None  # a header longer than the body
    c.shared_memory = False
    assert c.lease_body(300_000, 200) is None


def test_tensors_not_in_the_lease_are_copied_as_before() -> None:
    c = client()
    lease = c.lease_body(300_000, 100)
    assert lease is not None
    x = np.arange(80_000, dtype=np.float32)
    tensors = [Tensor("x", "FP32", x.shape, x.tobytes())]  # bytes: not a view of the segment
    placed = c._segment(tensors, 0)
    assert placed is not None and placed[0] is not lease.segment
    got, _ = shm.request_tensors(placed[1])
    assert np.array_equal(np.frombuffer(got[0][1], np.float32), x)
    del got
    placed[0].close()
    c.release_body(lease)  # still lent (no view of it came in): given back
    assert c._pool.free_bytes == lease.segment.size


def test_the_front_doors_buffer_is_copied_into_the_lease_once() -> None:
    class Unreader:
        def __init__(self, body: bytearray) -> None:
            self.body: bytearray | None = body

        def take_body(self, length: int) -> bytearray | None:
            body, self.body = self.body, None
            return body

    class Reader:
        def __init__(self, body: bytearray) -> None:
            self.length = len(body)
            self.unreader = Unreader(body)

    class Stream:
        def __init__(self, body: bytearray) -> None:
            self.reader = Reader(body)

    payload = bytearray(os.urandom(200_000))
    c = client()
    lease = c.lease_body(len(payload), 0)
    assert lease is not None
    stream = Stream(payload)
    assert read_body(stream, len(payload), lease.view) is lease.view
    assert bytes(lease.view) == payload and stream.reader.length == 0
    c.release_body(lease)


def test_the_reply_room_covers_the_outputs_of_as_many_samples_as_the_body_holds() -> None:
    config = load_repository(DEFAULT_REPOSITORY, ["digits"])["digits"]  # 64 FP32 in, 10 FP32 out per sample
    assert reply_room(config, 64 * 4 * 100) == 10 * 4 * 100 + 64
    inputs = [Tensor("input", "FP32", (100, 64), b"")]
    assert reply_room(config, 64 * 4 * 100) == reply_bytes(config, inputs)


def test_large_binary_outputs_are_written_in_parts_small_ones_joined() -> None:
    big = np.arange(LARGE_OUTPUTS, dtype=np.float32)
    body = infer_response("m", None, None, [(Tensor("y", "FP32", big.shape, big.tobytes()), True)])
    assert isinstance(body.data, list) and len(body.data) == 2
    length = int(body.headers["Inference-Header-Content-Length"])
    assert body.data[0] == body.whole()[:length]
    assert np.array_equal(np.frombuffer(body.whole()[length:], np.float32), big)
    view = memoryview(big.tobytes())  # a frame's view: copied once, into bytes the server can write
    parts = infer_response("m", None, None, [(Tensor("y", "FP32", big.shape, view), True)]).data
    assert isinstance(parts, list) and isinstance(parts[1], bytes) and parts[1] == view
    small = np.arange(10, dtype=np.float32)
    joined = infer_response("m", None, None, [(Tensor("y", "FP32", small.shape, small.tobytes()), True)])
    assert isinstance(joined.data, bytes)
