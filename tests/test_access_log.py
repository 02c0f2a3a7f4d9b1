"""The gateway's access lines and its stderr writer, without a server: a line written directly is the line
logging would have written, the writer never blocks a request thread, and nothing queued is lost at exit."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from flask import Flask, g

from gateway import access_log
from gateway.access_log import BackgroundStreamHandler, RequestIdFilter, TextFormatter, log_request
from gateway.trace import RequestTrace
from inference_worker.logs import JsonFormatter

TRACES = [
    RequestTrace(request_id="r-1"),
    RequestTrace(request_id="r-2", model="digits", version="1", samples=3),
    RequestTrace(
        request_id="r\\3", model="digits", version="2", samples=1, answered=True, worker="w0", batch_size=7
    ),
    RequestTrace(request_id="r-4", answered=True, worker="w1", batch_size=2),
]
PATHS = ["/v2/models/digits/infer", "/v2/x\nFORGED\x00\x1b[31m", "/v2/caf\u00e9\u2028"]


class OtherTextFormatter(TextFormatter):
    """The same lines, but a formatter log_request does not know: records go through logging."""


class OtherJsonFormatter(JsonFormatter):
    """As OtherTextFormatter, for JSON lines."""


@pytest.fixture
def only_handler() -> Iterator[list[BackgroundStreamHandler]]:
    """Make the handlers put in the list the only ones torchgate.access writes to (pytest adds its own to
    root)."""
    handlers: list[BackgroundStreamHandler] = []
    logger = access_log.access
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.propagate = False
    logger.setLevel(logging.INFO)  # not ``level =``: setLevel empties what isEnabledFor remembers
    logger.handlers[:] = []
    try:
        yield handlers
    finally:
        logger.handlers[:], logger.propagate = saved[:2]
        logger.setLevel(saved[2])
        for handler in handlers:
            handler.flush_all()


def _written(only: list[BackgroundStreamHandler], formatter: logging.Formatter) -> list[str]:
    """Log every trace on every path through a handler with ``formatter``; return the lines it wrote."""
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    only.append(handler)
    access_log.access.handlers[:] = [handler]
    app = Flask("t")
    for path in PATHS:
        for status, trace in zip((200, 400, 500, 503), TRACES, strict=True):
            with app.test_request_context(path):
                g.trace = trace
                log_request("POST", path, status, 0.01234, trace)
    handler.flush_all()
    return stream.getvalue().splitlines()


TEXT_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def test_text_lines_written_directly_are_those_logging_writes(
    only_handler: list[BackgroundStreamHandler],
) -> None:
    direct = _written(only_handler, TextFormatter())
    assert only_handler[0].line_style() == "text"
    logged = _written(only_handler, OtherTextFormatter())
    assert only_handler[1].line_style() is None
    assert len(direct) == len(logged) == len(PATHS) * len(TRACES)
    for mine, theirs in zip(direct, logged, strict=True):
        assert TEXT_TIME.match(mine) and TEXT_TIME.match(theirs)
        assert TEXT_TIME.sub("", mine) == TEXT_TIME.sub("", theirs)
    assert direct[2].endswith(
        "POST /v2/models/digits/infer 500 12.3ms model=digits version=2 samples=1 batch_size=7 worker=w0 "
        "request_id=r\\\\3"
    )
    assert "/v2/x\\x0aFORGED\\x00\\x1b[31m 200 12.3ms request_id=r-1" in direct[4]
    assert "/v2/caf\u00e9\\u2028 400" in direct[9]


def test_json_lines_written_directly_have_the_fields_logging_writes(
    only_handler: list[BackgroundStreamHandler],
) -> None:
    direct = [json.loads(line) for line in _written(only_handler, JsonFormatter())]
    assert only_handler[0].line_style() == "json"
    logged = [json.loads(line) for line in _written(only_handler, OtherJsonFormatter())]
    assert len(direct) == len(logged) == len(PATHS) * len(TRACES)
    for mine, theirs in zip(direct, logged, strict=True):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mine.pop("time"))
        theirs.pop("time")
        assert mine == theirs
        assert list(mine) == list(theirs)
    assert direct[2]["access"] == {
        "method": "POST",
        "path": "/v2/models/digits/infer",
        "status": 500,
        "duration_ms": 12.34,
        "request_id": "r\\3",
        "model": "digits",
        "version": "2",
        "samples": 1,
        "batch_size": 7,
        "worker": "w0",
    }
    assert direct[2]["request_id"] == "r\\3"


def test_a_level_above_info_writes_no_access_line(only_handler: list[BackgroundStreamHandler]) -> None:
    access_log.access.setLevel(logging.WARNING)
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    only_handler.append(handler)
    access_log.access.handlers[:] = [handler]
    log_request("GET", "/v2", 200, 0.001, RequestTrace(request_id="quiet"))
    handler.flush_all()
    assert stream.getvalue() == ""


class BlockedStream:
    """A stream whose writes wait until it is opened (a full pipe)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> None:
        self.entered.set()
        assert self.open.wait(timeout=30)
        self.text.append(text)

    def flush(self) -> None:
        pass


def test_a_blocked_stream_never_blocks_the_logging_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "MAX_PENDING", 50)
    stream = BlockedStream()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.write_line("first")
    assert stream.entered.wait(timeout=30)  # the writer is stuck in write()
    done = threading.Event()

    def burst() -> None:
        for i in range(200):
            handler.write_line(f"line {i}")
        done.set()

    threading.Thread(target=burst, daemon=True).start()
    assert done.wait(timeout=30), "a line waited on the blocked stream"
    stream.open.set()
    handler.flush_all()
    lines = "".join(stream.text).splitlines()
    assert lines[0] == "first"
    assert lines[1:51] == [f"line {i}" for i in range(50)]
    assert lines[51].endswith("150 log lines were dropped: stderr did not take them (50 were waiting)")
    assert len(lines) == 52


def test_records_and_lines_keep_their_order() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    expected = []
    for i in range(300):
        if i % 3:
            handler.write_line(f"line {i}")
        else:
            handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "record %d", (i,), None))
        expected.append(f"{'record' if i % 3 == 0 else 'line'} {i}")
    handler.flush_all()
    assert stream.getvalue().splitlines() == expected


EXIT_SCRIPT = """
import logging.config, sys
from flask import Flask, g
from gateway.access_log import log_request, logconfig
from gateway.trace import RequestTrace
logging.config.dictConfig(logconfig("info", sys.argv[1]))
app = Flask("t")
for i in range(2000):
    trace = RequestTrace(request_id=f"id-{i}")
    with app.test_request_context("/v2"):
        g.trace = trace
        log_request("GET", "/v2", 200, 0.001, trace)
logging.getLogger("torchgate.gateway").warning("last words")
"""


@pytest.mark.processes
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_queued_line_is_written_at_exit(log_format: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, log_format], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2001, lines[-3:]
    if log_format == "json":
        assert [json.loads(line)["access"]["request_id"] for line in lines[:-1]] == [
            f"id-{i}" for i in range(2000)
        ]
    else:
        assert [line.rsplit("request_id=", 1)[1] for line in lines[:-1]] == [f"id-{i}" for i in range(2000)]
    assert "last words" in lines[-1]
