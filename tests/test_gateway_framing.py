"""Request framing on the gateway's event loop (gateway.framing): where a request ends, what is refused."""

from __future__ import annotations

import pytest

from gateway.framing import RequestFramer, State, parse_head

MAX_BODY = 1000


def framed(data: bytes, step: int = 0) -> RequestFramer:
    """Feed ``data`` whole, or ``step`` bytes at a time."""
    framer = RequestFramer(max_head=512, max_body=MAX_BODY)
    buf = bytearray()
    for i in range(0, len(data), step or len(data) or 1):
        buf += data[i : i + (step or len(data))]
        if framer.feed(buf) in (State.COMPLETE, State.ERROR):
            break
    return framer


GET = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"


@pytest.mark.parametrize("step", [0, 1, 3])
@pytest.mark.parametrize("request_bytes", [GET, POST, CHUNKED, b"\r\n" + GET])
def test_a_request_ends_where_its_framing_says_however_it_arrives(request_bytes: bytes, step: int) -> None:
    framer = framed(request_bytes + b"GET /next", step)
    assert framer.state is State.COMPLETE
    assert framer.end == len(request_bytes)


def test_an_incomplete_request_waits() -> None:
    for partial in (GET[:-1], POST[:-1], CHUNKED[:-2]):
        assert framed(partial).state in (State.HEAD, State.BODY, State.TRAILERS)


@pytest.mark.parametrize(
    "data, status",
    [
        (b"POST /p HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", 413),
        (b"POST /p HTTP/1.1\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n", 413),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", 413),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1f4\r\n" + b"a" * 500 + b"\r\n1f5\r\n", 413),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n", 400),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", 400),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", 400),
        (b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000, 400),
        (b"GET /" + b"a" * 600, 431),
    ],
)
def test_oversized_and_malformed_requests_are_refused_as_soon_as_known(data: bytes, status: int) -> None:
    framer = framed(data)
    assert framer.state is State.ERROR
    assert framer.error is not None and framer.error.status == status


def test_ambiguous_framing_is_left_to_gunicorn_at_the_head() -> None:
    for head in (
        b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    ):
        framer = framed(head + b"hello")
        assert framer.state is State.COMPLETE and framer.end == len(head), head


@pytest.mark.parametrize("codings", [b"gzip, chunked", b"gzip", b"deflate,chunked", b"x-custom, chunked"])
def test_a_transfer_coding_other_than_chunked_is_a_501_naming_it(codings: bytes) -> None:
    framer = framed(b"POST /p HTTP/1.1\r\nTransfer-Encoding: " + codings + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert framer.state is State.ERROR and framer.error is not None
    assert framer.error.status == 501
    assert f"transfer coding {codings.split(b',')[0].decode()!r} is not implemented" in str(framer.error)


def test_a_head_begun_counts_as_started_before_it_is_whole() -> None:
    """A head that stops part way is a request begun: its timeout is a 408, not an idle connection's quiet
    close; empty lines before a request line are not a request."""
    assert not framed(b"").started
    assert not framed(b"\r\n").started and framed(b"\r\n").state is State.HEAD
    for partial in (
        b"P",
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n",
        b"\r\nGET /",
        b"\x16\x03\x01",
    ):
        framer = framed(partial)
        assert framer.state is State.HEAD and framer.started, partial


def test_expect_continue_only_for_a_body_on_http_1_1() -> None:
    assert parse_head(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").expect_continue
    assert not parse_head(
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    ).expect_continue
    assert not parse_head(b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue
