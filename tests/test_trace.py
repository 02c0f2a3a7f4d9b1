"""Triton's trace extension (gateway/trace_settings.py, gateway/tracing.py): the settings and their checks
alone, the settings and trace file shared by processes on real files, then `torchgate serve --trace-config`
with tritonclient over HTTP and gRPC, two gateway processes, and every trace checked against the requests."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from click.testing import CliRunner
from tritonclient.utils import InferenceServerException

from deploy.cli import main as torchgate
from gateway import trace_settings, trace_summary
from gateway.errors import InvalidArgument
from gateway.tracing import Tracing
from harness import Stack, copy_digits, free_port, run_on_a_full_disk, short_dir
from harness.apps import gateway_app

TIMEOUT = 30.0
HTTP_ORDER = [
    "HTTP_RECV_START",
    "HTTP_RECV_END",
    "HANDLER_START",
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
    "HTTP_SEND_START",
    "HTTP_SEND_END",
]


# -- the settings, no I/O ------------------------------------------------------------------------------------


def test_settings_read_as_triton_reads_them() -> None:
    doc = trace_settings.new_document("/t.json")
    assert trace_settings.response(doc, "") == {
        "trace_level": ["OFF"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "log_frequency": "0",
        "trace_file": "/t.json",
        "trace_mode": "triton",
    }
    update = trace_settings.parse_update({"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": 5})
    assert update == {"trace_level": ["TIMESTAMPS"], "trace_rate": 1, "trace_count": 5}
    assert trace_settings.parse_update({"trace_rate": None, "trace_mode": "triton"}) == {"trace_rate": None}
    assert trace_settings.parse_update({"trace_rate": ["7"]}) == {"trace_rate": 7}  # gRPC's list of strings
    refused = {
        "trace_file": "can not be updated",
        "trace_level": "list of levels",
        "trace_rate": "Unable to parse 'trace_rate'",
        "trace_count": "out of range",
        "trace_mode": "can only be 'triton'",
        "trace_rat": "unknown trace setting",
    }
    values = {"trace_level": 5, "trace_rate": "fast", "trace_count": "-2", "trace_mode": "opentelemetry"}
    for name, words in refused.items():
        with pytest.raises(InvalidArgument, match=words):
            trace_settings.parse_update({name: values.get(name, "x")})
    for spelt in ("1_0", " 10", "+10", "10 "):  # what int() would take
        with pytest.raises(InvalidArgument, match="Unable to parse 'trace_rate'"):
            trace_settings.parse_update({"trace_rate": spelt})
    with pytest.raises(InvalidArgument, match="out of range"):  # int() refuses 4300 digits: was a 500
        trace_settings.parse_update({"log_frequency": "1" + "0" * 5000})
    with pytest.raises(InvalidArgument, match="only one trace level 'OFF'"):
        trace_settings.parse_update({"trace_level": ["OFF", "TIMESTAMPS"]})
    with pytest.raises(InvalidArgument, match="TENSORS is not supported"):
        trace_settings.parse_update({"trace_level": ["TIMESTAMPS", "TENSORS"]})
    with pytest.raises(InvalidArgument, match="JSON object"):
        trace_settings.parse_update(["trace_rate"])


def test_a_model_overrides_what_it_names_and_null_gives_it_back() -> None:
    doc = trace_settings.new_document("/t.json", {"trace_rate": 10})
    doc = trace_settings.apply(doc, "", {"trace_level": ["TIMESTAMPS"], "trace_rate": 100})
    doc = trace_settings.apply(doc, "digits", {"trace_rate": 1, "trace_count": 2})
    assert trace_settings.effective(doc, "digits") == trace_settings.Effective(True, 1, 2, 0, "digits")
    assert trace_settings.effective(doc, "other") == trace_settings.Effective(True, 100, -1, 0, "")
    assert trace_settings.response(doc, "digits")["trace_rate"] == "1"
    doc = trace_settings.apply(doc, "digits", {"trace_rate": None, "trace_count": None})
    assert doc["models"] == {}  # nothing of its own left
    assert trace_settings.effective(doc, "digits").rate == 100
    doc = trace_settings.apply(doc, "", {"trace_rate": None})  # the global value goes back to the start's
    assert trace_settings.effective(doc, "digits").rate == 10
    off = trace_settings.new_document("")
    with pytest.raises(InvalidArgument, match="no trace file"):
        trace_settings.apply(off, "", {"trace_level": ["TIMESTAMPS"]})
    assert not trace_settings.effective(trace_settings.apply(off, "", {"trace_rate": 1}), "").on


def test_counts_are_taken_from_the_setting_that_counts() -> None:
    doc = trace_settings.new_document("/t.json", {"trace_level": ["TIMESTAMPS"], "trace_count": 1})
    doc = trace_settings.apply(doc, "digits", {"trace_count": 2})
    taken = trace_settings.count_taken(doc, "digits")
    assert taken is not None and taken["models"]["digits"]["trace_count"] == 1
    assert taken["global"]["trace_count"] == 1
    last = trace_settings.count_taken(taken, "")
    assert last is not None and last["global"]["trace_count"] == 0
    assert trace_settings.count_taken(last, "") is None
    unlimited = trace_settings.new_document("/t.json")
    assert trace_settings.count_taken(unlimited, "") == unlimited


def test_trace_config_reads_tritons_flag() -> None:
    values = ["triton,file=/tmp/t.json", "triton,log-frequency=50", "rate=100", "level=TIMESTAMPS", "count=7"]
    values.append("mode=triton")
    trace_file, settings = trace_settings.parse_cli(values)
    assert trace_file == "/tmp/t.json"
    assert settings == {
        "log_frequency": 50,
        "trace_rate": 100,
        "trace_count": 7,
        "trace_level": ["TIMESTAMPS"],
    }
    for bad, words in {
        "opentelemetry,url=localhost": "OpenTelemetry is not supported",
        "mode=opentelemetry": "OpenTelemetry",
        "rate": "takes",
        "rate=0": "out of range",
        "level=TENSORS": "TENSORS",
        "triton,rate=1": "unknown --trace-config",
    }.items():
        with pytest.raises(InvalidArgument, match=words):
            trace_settings.parse_cli([bad])


def test_entries_and_a_workers_stamps() -> None:
    stats = {
        "queue_start_ns": 110,
        "compute_start_ns": 120,
        "compute_input_ns": 5,
        "compute_infer_ns": 10,
        "compute_output_ns": 2,
    }
    stamps = trace_settings.worker_stamps(stats, 100, 200)
    assert stamps == [
        ("QUEUE_START", 110),
        ("COMPUTE_START", 120),
        ("COMPUTE_INPUT_END", 125),
        ("COMPUTE_OUTPUT_START", 135),
        ("COMPUTE_END", 137),
    ]
    assert trace_settings.worker_stamps(stats, 100, 130) == []  # not inside the gateway's wait: another clock
    assert trace_settings.worker_stamps({"queue_ns": 3}, 100, 200) == []  # an older worker sends no stamps
    head, times = trace_settings.entries(9, "digits", "1", "r-1", [("REQUEST_END", 300), *stamps])
    assert head == {"id": 9, "model_name": "digits", "model_version": 1, "request_id": "r-1"}
    assert [t["name"] for t in times["timestamps"]][-1] == "REQUEST_END" and times["id"] == 9


def test_a_summary_says_where_the_time_went() -> None:
    stamps = list(zip(HTTP_ORDER, (0, 10, 20, 30, 60, 100, 110, 150, 155, 175, 185, 200), strict=True))
    entries = trace_settings.entries(1, "digits", "1", "a", [(name, ns * 1000) for name, ns in stamps])
    # Triton's own files give each timestamp an entry of its own
    entries += [{"id": 2, "model_name": "digits", "model_version": 1}]
    # ... and no HANDLER_START, torchgate's own
    entries += [
        {"id": 2, "timestamps": [{"name": n, "ns": ns * 3000}]} for n, ns in stamps if n != "HANDLER_START"
    ]
    groups = trace_summary.summarize(trace_summary.traces(entries))
    assert [(g.model, g.version, g.protocol, g.count) for g in groups] == [("digits", "1", "HTTP", 2)]
    assert groups[0].spans["request"] == [200_000, 600_000]
    assert groups[0].spans["worker queue"] == [40_000, 120_000]
    assert groups[0].spans["compute infer"] == [40_000, 120_000]
    assert "worker, no timestamps (another host)" not in groups[0].spans
    assert groups[0].spans["gateway: to a thread, WSGI, routing"] == [10_000]
    assert groups[0].spans["gateway: parse, check, send"] == [10_000, 60_000]
    text = trace_summary.report(groups)
    assert "digits version 1, HTTP: 2 traces" in text and "| send | 30.0 | 30.0 | 44.7 |" in text
    remote = trace_settings.entries(
        3, "m", "2", "", [("GRPC_WAITREAD_END", 0), ("REQUEST_START", 5), ("REQUEST_END", 50)]
    )
    (group,) = trace_summary.summarize(trace_summary.traces(remote))
    assert group.protocol == "gRPC" and group.spans["worker, no timestamps (another host)"] == [45]


# -- shared by processes, on real files ----------------------------------------------------------------------


def _started(folder: Path, trace_file: Path, **settings: Any) -> None:
    Tracing.create(folder, str(trace_file), {"trace_level": ["TIMESTAMPS"], **settings})


def test_processes_share_settings_and_counts(tmp_path: Path) -> None:
    _started(tmp_path / "trace", tmp_path / "t.json", trace_rate=1, trace_count=3)
    one, two = Tracing(tmp_path / "trace"), Tracing(tmp_path / "trace")
    taken = [tracing.sample("digits") for tracing in (one, two, one, two, one)]
    assert sum(1 for t in taken if t) == 3 and len({t for t in taken if t}) == 3
    assert two.setting("")["trace_count"] == "0"
    one.update("digits", {"trace_count": "1", "trace_rate": "2"})  # the model's own count and rate
    assert two.setting("digits")["trace_count"] == "1" and two.setting("")["trace_count"] == "0"
    assert [bool(two.sample("digits")) for _ in range(4)] == [False, True, False, False]
    one.update("", {"trace_level": ["OFF"]})
    assert two.setting("")["trace_level"] == ["OFF"] and two.setting("digits")["trace_level"] == ["OFF"]


def _write_traces(folder: str, start: int) -> None:
    tracing = Tracing(folder)
    for n in range(start, start + 50):
        tracing.write(trace_settings.entries(n, "m", "1", "", [("REQUEST_START", n)]))


def test_traces_from_many_processes_keep_the_file_one_json_array(tmp_path: Path) -> None:
    _started(tmp_path / "trace", tmp_path / "t.json")
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=_write_traces, args=(str(tmp_path / "trace"), 1000 * k)) for k in range(4)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    entries = json.loads((tmp_path / "t.json").read_text())
    assert sorted(e["id"] for e in entries if "timestamps" in e) == sorted(
        n for k in range(4) for n in range(1000 * k, 1000 * k + 50)
    )


def test_log_frequency_writes_every_n_traces_to_a_file_of_their_own(tmp_path: Path) -> None:
    _started(tmp_path / "trace", tmp_path / "t.json", log_frequency=3)
    one, two = Tracing(tmp_path / "trace"), Tracing(tmp_path / "trace")
    for n in range(7):
        (one if n % 2 else two).write(trace_settings.entries(n, "m", "1", "", [("REQUEST_START", n)]))
    files = sorted(tmp_path.glob("t.json.*"))
    assert [f.name for f in files] == ["t.json.0", "t.json.1"]  # each process wrote its 3 traces; one holds 1
    one.flush()
    two.flush()
    ids = [
        e["id"]
        for f in sorted(tmp_path.glob("t.json.*"))
        for e in json.loads(f.read_text())
        if "timestamps" in e
    ]
    assert sorted(ids) == list(range(7)) and not (tmp_path / "t.json").exists()


def test_held_traces_go_to_the_file_once_log_frequency_is_0_again(tmp_path: Path) -> None:
    _started(tmp_path / "trace", tmp_path / "t.json", log_frequency=5)
    tracing = Tracing(tmp_path / "trace")
    tracing.write(trace_settings.entries(1, "m", "1", "", [("REQUEST_START", 1)]))
    assert not list(tmp_path.glob("t.json*"))  # held: 1 of 5
    with pytest.raises(InvalidArgument, match="one for the whole server"):
        tracing.update("m", {"log_frequency": "0"})
    tracing.update("", {"log_frequency": "0"})
    tracing.write(trace_settings.entries(2, "m", "1", "", [("REQUEST_START", 2)]))
    written = json.loads((tmp_path / "t.json").read_text())
    assert [e["id"] for e in written if "timestamps" in e] == [1, 2]
    empty = Tracing(tmp_path / "no-server-wrote-here")
    with pytest.raises(InvalidArgument, match="no trace file"):
        empty.update("", {"trace_level": ["TIMESTAMPS"]})
    assert empty.sample("m") == 0


@pytest.mark.processes
def test_a_change_the_disk_cannot_hold_is_an_error_that_says_why(tmp_path: Path) -> None:
    """On a full disk a change is a 500 saying so (it was one without a cause); the settings stay."""
    _started(tmp_path / "trace", tmp_path / "t.json", trace_rate=1)
    before = Tracing(tmp_path / "trace").setting("")
    done = run_on_a_full_disk(
        "import sys\nfrom gateway.tracing import Tracing\nfrom inference_worker.errors import CodedError\n"
        "try:\n    Tracing(sys.argv[1]).update('', {'trace_rate': '7'})\n"
        "except CodedError as exc:\n    print(exc.code.name, exc.message)\n",
        str(tmp_path / "trace"),
    )
    expected = f"INTERNAL the trace settings could not be saved in {tmp_path / 'trace'}: "
    assert done.stdout.startswith(expected) and "File too large" in done.stdout, done
    assert Tracing(tmp_path / "trace").setting("") == before


def test_a_server_without_a_trace_file_says_how_to_have_one(tmp_path: Path) -> None:
    app = gateway_app(tmp_path)
    try:
        client = app.test_client()
        answer = client.get("/v2/trace/setting")
        assert answer.status_code == 200 and json.loads(answer.data)["trace_level"] == ["OFF"]
        assert json.loads(answer.data)["trace_file"] == ""
        refused = client.post("/v2/trace/setting", json={"trace_level": ["TIMESTAMPS"]})
        assert (
            refused.status_code == 400 and "--trace-config triton,file=" in json.loads(refused.data)["error"]
        )
        assert client.get("/v2/models/nonesuch/trace/setting").status_code == 404
        assert "trace" in json.loads(client.get("/v2").data)["extensions"]
    finally:
        app.extensions["torchgate"].client.close()


# -- under `torchgate serve --trace-config` -----------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Stack, int, Path]]:
    with short_dir() as base:
        grpc_port = free_port()
        repository = base / "repo"
        copy_digits(repository)
        trace_file = base / "trace.json"
        stack = Stack.at(base, repository)
        options = ["--gpus", "none", "--cpu-workers", "1", "--worker-threads", "1", "--worker-startsecs", "2"]
        options += ["--gateway-processes", "2", "--gateway-threads", "4", "--grpc-port", str(grpc_port)]
        options += ["--model-repository", str(repository), "--trace-config", f"triton,file={trace_file}"]
        with stack.serve(*options, "--trace-config", "rate=1") as d:
            d.wait_serving(timeout=120)
            yield d, grpc_port, trace_file


def _traces(trace_file: Path, at_least: int) -> dict[int, dict[str, Any]]:
    """Return the file's traces by id once it holds ``at_least`` (they are written after the answers)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        entries = json.loads(trace_file.read_text()) if trace_file.exists() else []
        traces: dict[int, dict[str, Any]] = {}
        for entry in entries:
            traces.setdefault(entry["id"], {}).update(entry)
        if len(traces) >= at_least or time.monotonic() > deadline:
            return traces
        time.sleep(0.05)


def _digit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, (1, 64)).astype(np.float32)


@pytest.mark.processes
def test_requests_are_traced_as_triton_traces_them(served: tuple[Stack, int, Path]) -> None:
    stack, grpc_port, trace_file = served
    url = stack.url.removeprefix("http://")
    with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as client:
        assert client.get_trace_settings()["trace_level"] == ["OFF"]  # a file alone traces nothing yet
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_count": "6"})

        def infer(i: int) -> str:
            with requests.Session() as session:  # each on its own connection: both gateway processes trace
                answer = session.post(
                    f"{stack.url}/v2/models/digits/infer",
                    json={
                        "id": f"req-{i}",
                        "inputs": [
                            {
                                "name": "input",
                                "shape": [1, 64],
                                "datatype": "FP32",
                                "data": _digit(i).ravel().tolist(),
                            }
                        ],
                    },
                    timeout=TIMEOUT,
                )
                assert answer.status_code == 200, answer.text
                return str(answer.json()["id"])

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(infer, range(4)))
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for i in range(5):  # the count has 2 left: two of these are traced, then none
                inp = grpcclient.InferInput("input", [1, 64], "FP32")
                inp.set_data_from_numpy(_digit(10 + i))
                grpc.infer("digits", [inp], request_id=f"grpc-{i}", client_timeout=TIMEOUT)
            settings = grpc.get_trace_settings(as_json=True)["settings"]
            assert settings["trace_count"]["value"] == ["0"] and settings["trace_level"]["value"] == [
                "TIMESTAMPS"
            ]
        finally:
            grpc.close()
        traces = _traces(trace_file, 6)
        assert len(traces) == 6, traces
        by_request = {t["request_id"]: t for t in traces.values()}
        assert set(by_request) == {*ids, "grpc-0", "grpc-1"}
        for request_id, trace in by_request.items():
            assert trace["model_name"] == "digits" and trace["model_version"] == 1
            names = [s["name"] for s in trace["timestamps"]]
            times = [s["ns"] for s in trace["timestamps"]]
            assert times == sorted(times)
            if request_id.startswith("grpc"):
                assert names == ["GRPC_WAITREAD_END", *HTTP_ORDER[3:10], "GRPC_SEND_START"]
            else:
                assert names == HTTP_ORDER, names
        summary = CliRunner().invoke(torchgate, ["trace-summary", str(trace_file)])
        assert summary.exit_code == 0, summary.output
        assert "digits version 1, HTTP: 4 traces" in summary.output and "| compute infer |" in summary.output
        assert "digits version 1, gRPC: 2 traces" in summary.output
        client.update_trace_settings(settings={"trace_count": None, "trace_level": None})
        assert client.get_trace_settings() == {
            "trace_level": ["OFF"],
            "trace_rate": "1",
            "trace_count": "-1",
            "log_frequency": "0",
            "trace_file": str(trace_file),
            "trace_mode": "triton",
        }


@pytest.mark.processes
def test_one_models_settings_and_bad_ones(served: tuple[Stack, int, Path]) -> None:
    stack, grpc_port, trace_file = served
    url = stack.url.removeprefix("http://")
    with httpclient.InferenceServerClient(url, network_timeout=TIMEOUT) as client:
        before = len(_traces(trace_file, 0))
        changed = client.update_trace_settings("digits", {"trace_level": ["TIMESTAMPS"], "trace_rate": "2"})
        assert changed["trace_rate"] == "2" and client.get_trace_settings()["trace_level"] == ["OFF"]
        with requests.Session() as session:
            for i in range(4):
                answer = session.post(
                    f"{stack.url}/predict", json={"input": _digit(i).tolist()}, timeout=TIMEOUT
                )
                assert answer.status_code == 200
        # one gateway process answers the session: every second request of the model is traced
        assert len(_traces(trace_file, before + 2)) == before + 2
        for settings, words in (
            ({"trace_file": "/etc/passwd"}, "can not be updated"),
            ({"trace_level": ["TENSORS"]}, "TENSORS is not supported"),
            ({"trace_rate": "zero"}, "Unable to parse 'trace_rate'"),
        ):
            with pytest.raises(InferenceServerException, match=words):
                client.update_trace_settings(settings=settings)
        with pytest.raises(InferenceServerException, match="nonesuch"):
            client.get_trace_settings("nonesuch")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            with pytest.raises(InferenceServerException, match="can not be updated"):
                grpc.update_trace_settings(settings={"trace_file": "/etc/passwd"})
            cleared = grpc.update_trace_settings(
                "digits", {"trace_level": None, "trace_rate": None}, as_json=True
            )
            assert cleared["settings"]["trace_level"]["value"] == ["OFF"]
        finally:
            grpc.close()
        assert json.loads(trace_file.read_text())  # still one whole JSON array
