"""Where an HTTP/1.1 request ends, found incrementally as its bytes arrive: no I/O, no parsing beyond framing.

The gateway reads each request whole on its event loop before a request thread sees it (gateway.frontdoor), so
it must know when a request is complete: the head ends at the first empty line, and the body is
``Content-Length`` bytes or a chunked body up to its last chunk and trailers. Framing errors and limits are
decided here, before any body byte is buffered past the limit:

- a head over ``max_head`` bytes: 431;
- a ``Content-Length`` over ``max_body``, or chunk sizes adding up past it: 413 as soon as it is known;
- a malformed chunk (a size that is not 1 to 16 hex digits, a missing CRLF, an overlong size line or trailer):
400;
- a transfer coding other than chunked (``Transfer-Encoding: gzip, chunked``): 501, which RFC 9112 6.1 asks
  for (gunicorn would pass the body on still gzipped).

Anything else odd in the head (conflicting lengths, chunked twice or not last, a bad request line) is left to
gunicorn's parser, which refuses it from the head alone: the request counts as complete at its head.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions
MAX_TRAILERS = 8192
_HEX = frozenset(b"0123456789abcdefABCDEF")


class State(enum.Enum):
    HEAD = "head"
    BODY = "body"  # Content-Length bytes
    CHUNK_SIZE = "chunk-size"
    CHUNK_DATA = "chunk-data"
    CHUNK_END = "chunk-end"  # the CRLF after a chunk's data
    TRAILERS = "trailers"
    COMPLETE = "complete"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class FramingError:
    """Why a request cannot be read: the HTTP status and a message for the client."""

    status: int
    message: str


@dataclass(slots=True)
class Head:
    """What framing needs from a request head."""

    length: int  # bytes of the head, its empty line included
    content_length: int | None = None
    chunked: bool = False
    expect_continue: bool = False
    keep_alive: bool = True
    coding: str = ""  # a transfer coding the gateway does not undo (gzip, say): the request is a 501


class RequestFramer:
    """Follow one request through a buffer that grows as bytes arrive; say when it is complete or refused."""

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.state = State.HEAD
        self.head: Head | None = None
        self.end = 0  # once COMPLETE: where the request ends in the buffer
        self.error: FramingError | None = None
        self.body_bytes = 0  # body bytes announced so far (Content-Length, or the chunk sizes seen)
        self._pos = 0  # everything before this offset is framed
        self._began = False  # a byte of a request line has arrived (its head may not be whole yet)
        self._remaining = 0  # bytes left of the body or of the current chunk
        self._trailers_start = 0
        self.body_start = 0  # once the head is framed: where the body begins in the buffer

    @property
    def done(self) -> bool:
        return self.state is State.COMPLETE or self.state is State.ERROR

    @property
    def started(self) -> bool:
        """Whether a byte of the request (past empty lines before it) has been seen: a timeout answers it 408,
        where an idle connection is closed quietly."""
        return self._began or self.state is not State.HEAD

    def feed(self, buf: bytes | bytearray) -> State:
        """Frame what ``buf`` (the request's bytes so far, from its first) holds beyond the last call."""
        while not self.done:
            before = (self.state, self._pos)
            self._step(buf)
            if (self.state, self._pos) == before:
                break
        return self.state

    def _fail(self, status: int, message: str) -> None:
        self.state = State.ERROR
        self.error = FramingError(status, message)

    def _step(self, buf: bytes | bytearray) -> None:
        state = self.state
        if state is State.HEAD:
            self._frame_head(buf)
        elif state is State.BODY:
            take = min(self._remaining, len(buf) - self._pos)
            self._pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._complete(self._pos)
        elif state is State.CHUNK_SIZE:
            self._frame_chunk_size(buf)
        elif state is State.CHUNK_DATA:
            take = min(self._remaining, len(buf) - self._pos)
            self._pos += take
            self._remaining -= take
            if self._remaining == 0:
                self.state = State.CHUNK_END
        elif state is State.CHUNK_END:
            if len(buf) - self._pos >= 2:
                if buf[self._pos : self._pos + 2] != b"\r\n":
                    self._fail(400, "malformed chunked body: a chunk's data is not followed by CRLF")
                else:
                    self._pos += 2
                    self.state = State.CHUNK_SIZE
        elif state is State.TRAILERS:
            self._frame_trailers(buf)

    def _complete(self, end: int) -> None:
        self.state = State.COMPLETE
        self.end = end

    def _frame_head(self, buf: bytes | bytearray) -> None:
        while buf[self._pos : self._pos + 2] == b"\r\n":  # empty lines before a request line (RFC 9112 2.2)
            self._pos += 2
        start = self._pos
        self._began = self._began or len(buf) > start
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) - start > self.max_head:
                self._fail(431, f"request head exceeds {self.max_head} bytes")
            return
        if end + 4 - start > self.max_head:
            self._fail(431, f"request head exceeds {self.max_head} bytes")
            return
        head = parse_head(bytes(buf[start : end + 4]))
        self.head = head
        self._pos = self.body_start = end + 4
        if head.coding:
            self._fail(
                501,
                f"transfer coding {head.coding!r} is not implemented: send the body chunked or with a "
                "Content-Length, compressed with Content-Encoding if you like",
            )
        elif head.chunked:
            self.state = State.CHUNK_SIZE
        elif head.content_length:
            if head.content_length > self.max_body:
                self._fail(
                    413, f"request body of {head.content_length} bytes exceeds the limit of {self.max_body}"
                )
                return
            self.body_bytes = head.content_length
            self._remaining = head.content_length
            self.state = State.BODY
        else:
            self._complete(self._pos)

    def _frame_chunk_size(self, buf: bytes | bytearray) -> None:
        end = buf.find(b"\r\n", self._pos, self._pos + MAX_CHUNK_LINE + 2)
        if end < 0:
            if len(buf) - self._pos > MAX_CHUNK_LINE:
                self._fail(400, f"malformed chunked body: a chunk-size line exceeds {MAX_CHUNK_LINE} bytes")
            return
        line = bytes(buf[self._pos : end])
        digits = line.split(b";", 1)[0].rstrip(b" \t")
        if not 0 < len(digits) <= 16 or not set(digits) <= _HEX:
            shown = digits[:20].decode("latin-1")
            self._fail(400, f"malformed chunked body: chunk size {shown!r} is not 1 to 16 hex digits")
            return
        size = int(digits, 16)
        self.body_bytes += size
        if self.body_bytes > self.max_body:
            self._fail(413, f"chunked request body exceeds the limit of {self.max_body} bytes")
            return
        self._pos = end + 2
        if size == 0:
            self.state = State.TRAILERS
            self._trailers_start = self._pos
        else:
            self._remaining = size
            self.state = State.CHUNK_DATA

    def _frame_trailers(self, buf: bytes | bytearray) -> None:
        end = buf.find(b"\r\n", self._pos)
        if end < 0:
            if len(buf) - self._trailers_start > MAX_TRAILERS:
                self._fail(400, f"malformed chunked body: trailers exceed {MAX_TRAILERS} bytes")
            return
        if end - self._trailers_start > MAX_TRAILERS:
            self._fail(400, f"malformed chunked body: trailers exceed {MAX_TRAILERS} bytes")
            return
        if end == self._pos:  # the empty line that ends the trailers
            self._complete(end + 2)
        else:
            self._pos = end + 2


def parse_head(head: bytes) -> Head:
    """Read the framing of a request head (its request line, headers and the final empty line).

    A head whose framing is ambiguous (several or unreadable lengths, a transfer coding other than chunked)
    counts as bodiless: gunicorn refuses it from the head alone.
    """
    lines = head.split(b"\r\n")
    version = lines[0].rsplit(b" ", 1)[-1]
    result = Head(length=len(head), keep_alive=version != b"HTTP/1.0")
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
        elif name == b"expect":
            result.expect_continue = value.lower() == b"100-continue" and version == b"HTTP/1.1"
        elif name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                result.keep_alive = False
            elif b"keep-alive" in tokens:
                result.keep_alive = True
    if codings:
        other = [c for c in codings if c not in (b"chunked", b"")]
        result.coding = other[0].decode("latin-1") if other else ""
        result.chunked = not lengths and codings[-1] == b"chunked" and codings.count(b"chunked") == 1
        if not result.chunked:
            result.expect_continue = False
        return result
    if len(lengths) == 1:
        value = lengths.pop()
        if value.isdigit():  # int() refuses 4300 digits and more (ValueError): past 19, it is over any limit
            digits = value.lstrip(b"0") or b"0"
            result.content_length = int(digits) if len(digits) <= 19 else 1 << 63
    if not result.content_length:
        result.expect_continue = False
    return result
