"""Triton's logging extension (inference_worker/log_settings.py): the settings and their checks, applied to a
process's loggers, followed through the shared file, then `torchgate serve` with tritonclient over HTTP and
gRPC: DEBUG lines from the gateway and the worker, access lines off and on again."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from harness import Stack, run_on_a_full_disk, wait_for
from harness.apps import gateway_app
from harness.models import DIGIT_ROW
from inference_worker import log_settings
from inference_worker.errors import CodedError

TIMEOUT = 30.0
DIGIT: dict[str, Any] = {"model": "digits", "input": [DIGIT_ROW]}  # POST /predict


@pytest.fixture
def restored() -> Iterator[None]:
    """Put this process's loggers back as log_settings found them."""
    yield
    log_settings.apply(log_settings.DEFAULTS)


def test_updates_are_checked_as_triton_checks_them() -> None:
    assert log_settings.parse_update({"log_info": False, "log_verbose_level": 2, "log_error": None}) == {
        "log_info": False,
        "log_verbose_level": 2,
    }
    assert log_settings.parse_update({"log_format": "default", "log_file": None}) == {}
    top = 2**32 - 1  # a uint32 on Triton's wire
    assert log_settings.parse_update({"log_verbose_level": top}) == {"log_verbose_level": top}
    for doc, words in (
        ({"log_file": "/tmp/elsewhere.log"}, "can not be updated through network protocol"),
        ({"log_info": "no"}, "true or false"),
        ({"log_verbose_level": -1}, "whole number"),
        ({"log_verbose_level": True}, "whole number"),
        ({"log_verbose_level": 2**32}, "whole number from 0 to 4294967295"),
        ({"log_format": "xml"}, "invalid argument for --log_format"),
        ({"log_format": "ISO8601"}, "chosen at start"),
        ({"log_infos": True}, "unknown log setting"),
        (["log_info"], "JSON object"),
    ):
        with pytest.raises(CodedError, match=words):
            log_settings.parse_update(doc)


class Kept(logging.Handler):
    """The records a handler of the root logger gets."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_settings_switch_a_process_s_lines(restored: None) -> None:
    root, kept = logging.getLogger(), Kept()
    level = root.level
    root.setLevel(logging.INFO)  # as every torchgate process starts
    root.addHandler(kept)
    try:
        log_settings.apply({**log_settings.DEFAULTS, "log_info": False, "log_verbose_level": 1})
        ours, theirs, access = (
            logging.getLogger(n) for n in ("torchgate.test", "library", "torchgate.access")
        )
        ours.debug("verbose line")
        theirs.debug("a library's debug line")  # verbose is ours only
        ours.info("an info line")
        ours.warning("a warning")
        assert not access.isEnabledFor(logging.INFO)  # the access lines, written without the handler's filter
        assert kept.messages == ["verbose line", "a warning"]
        kept.messages.clear()
        log_settings.apply({**log_settings.DEFAULTS, "log_warning": False})
        ours.debug("verbose line")
        ours.info("an info line")
        ours.warning("a warning")
        ours.error("an error")
        assert access.isEnabledFor(logging.INFO)
        assert kept.messages == ["an info line", "an error"]
    finally:
        root.removeHandler(kept)
        root.setLevel(level)


def test_a_process_follows_the_shared_file(tmp_path: Path, restored: None) -> None:
    path = tmp_path / "log-settings.json"
    log_settings.write(path, log_settings.DEFAULTS)
    watcher = log_settings.Watcher(path)  # another process would be doing this
    settings = log_settings.update(path, {"log_info": False})
    assert settings["log_info"] is False and log_settings.read(path)["log_info"] is False
    log_settings.apply(log_settings.DEFAULTS)  # as if this process had not seen it yet
    watcher.check()
    assert not logging.getLogger("torchgate.access").isEnabledFor(logging.INFO)
    assert log_settings.read(tmp_path / "missing.json") == log_settings.DEFAULTS


@pytest.mark.processes
def test_a_change_the_disk_cannot_hold_is_an_error_that_says_why(tmp_path: Path) -> None:
    """On a full disk a change is a 500 saying so (it was one without a cause), and the file is as it was."""
    path = tmp_path / "log-settings.json"
    log_settings.write(path, log_settings.DEFAULTS)
    before = path.read_bytes()
    done = run_on_a_full_disk(
        "import sys\nfrom inference_worker import log_settings\n"
        "from inference_worker.errors import CodedError\n"
        "try:\n    log_settings.update(sys.argv[1], {'log_info': False})\n"
        "except CodedError as exc:\n    print(exc.code.name, exc.message)\n",
        str(path),
    )
    assert done.stdout.startswith(f"INTERNAL the log settings could not be saved in {path}: "), done
    assert "File too large" in done.stdout and done.returncode == 0, done
    left = sorted(p.name for p in tmp_path.iterdir())
    assert path.read_bytes() == before and left == [path.name, path.name + ".lock"]  # no temporary file


def test_a_gateway_without_the_shared_file_refuses_changes(tmp_path: Path) -> None:
    app = gateway_app(tmp_path)
    try:
        client = app.test_client()
        assert json.loads(client.get("/v2/logging").data) == log_settings.DEFAULTS
        refused = client.post("/v2/logging", json={"log_info": False})
        assert refused.status_code == 400 and log_settings.ENV in json.loads(refused.data)["error"]
        assert "logging" in json.loads(client.get("/v2").data)["extensions"]
    finally:
        app.extensions["torchgate"].client.close()


# -- under `torchgate serve` ---------------------------------------------------------------------------------


@pytest.fixture
def served(extensions_server: tuple[Stack, int]) -> tuple[Stack, int]:
    return extensions_server  # one gateway process: a setting changed through it applies there at once


def _log(stack: Stack, program: str) -> str:
    path = stack.settings.log_dir / f"{program}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _predict(session: requests.Session, url: str, request_id: str) -> None:
    answer = session.post(f"{url}/predict", json=DIGIT, headers={"X-Request-ID": request_id}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text


def _access_line(text: str, request_id: str) -> str:
    """Return ``text`` if it holds the access line of request ``request_id``, else ""."""
    found = any(
        " INFO POST /predict 200 " in line and line.endswith(f"request_id={request_id}")
        for line in text.splitlines()
    )
    return text if found else ""


@pytest.mark.processes
def test_verbose_lines_and_info_lines_switch_in_every_process(served: tuple[Stack, int]) -> None:
    stack, _ = served
    url = stack.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url, network_timeout=TIMEOUT)
    marker = uuid.uuid4().hex[:8]
    try:
        assert client.get_log_settings() == log_settings.DEFAULTS
        client.update_log_settings({"log_info": False})
        with requests.Session() as session:  # one connection: the one gateway process
            for i in range(3):
                _predict(session, stack.url, f"quiet-{marker}-{i}")
            assert session.get(f"{stack.url}/metrics", timeout=TIMEOUT).status_code == 200  # their lines: now
        client.update_log_settings({"log_info": True, "log_verbose_level": 1})

        def debug_lines() -> bool:  # the worker follows the file from a thread of its own, within a second
            with requests.Session() as session:
                _predict(session, stack.url, f"loud-{marker}")
            return "DEBUG worker[" in _log(stack, "worker-cpu-0") and f"loud-{marker}" in _log(
                stack, "gateway"
            )

        wait_for(debug_lines, timeout=TIMEOUT, interval=0.2, what="DEBUG lines from the worker")
        gateway = wait_for(
            lambda: _access_line(_log(stack, "gateway"), f"loud-{marker}"),
            timeout=TIMEOUT,
            what="the access line of a request once INFO lines are back",
        )
        assert f"DEBUG gateway: request loud-{marker} to digits version 1: input FP32 [1, 64]" in gateway
        assert f"quiet-{marker}" not in gateway  # INFO was off: no access line (and no DEBUG line either)
    finally:
        client.update_log_settings({"log_info": True, "log_verbose_level": 0})
        client.close()


@pytest.mark.processes
def test_grpc_log_settings_and_refusals(served: tuple[Stack, int]) -> None:
    stack, grpc_port = served
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    http = httpclient.InferenceServerClient(stack.url.removeprefix("http://"), network_timeout=TIMEOUT)
    try:
        changed = grpc.update_log_settings({"log_warning": False, "log_verbose_level": 2}, as_json=True)
        assert changed["settings"]["log_warning"] == {"bool_param": False}
        assert http.get_log_settings()["log_verbose_level"] == 2  # one file for every process
        for settings, words in (
            ({"log_file": "/tmp/elsewhere.log"}, "can not be updated"),
            ({"log_format": "ISO8601"}, "chosen at start"),
        ):
            with pytest.raises(InferenceServerException, match=words):
                grpc.update_log_settings(settings)
            with pytest.raises(InferenceServerException, match=words):
                http.update_log_settings(settings)
        assert grpc.get_log_settings(as_json=True)["settings"]["log_file"] == {"string_param": ""}
    finally:
        http.update_log_settings(log_settings.DEFAULTS | {"log_file": None, "log_format": None})
        grpc.close()
        http.close()
