"""Metrics, traces and log lines without processes: rendering, worker families, ids, formatters, deploy
env."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g
from prometheus_client import CollectorRegistry

from deploy.rundir import clear_metrics
from deploy.settings import DeploySettings
from deploy.supervisor_conf import gateway_environment, render_dispatcher
from gateway import torchserve_metrics, worker_metrics
from gateway.access_log import RequestIdFilter, TextFormatter, log_request
from gateway.metrics import KEEP_ENV, RequestMetrics, failure_reason, render
from gateway.multiproc import clear, start
from gateway.trace import RequestTrace, choose_request_id
from harness.prometheus import parse, total, types
from harness.promql import label_values_metric, metric_names
from inference_worker.logs import JsonFormatter
from inference_worker.protocol import StatusReply
from inference_worker.stats import StatsBook

STATUS: dict[str, Any] = {
    "stats": [
        {
            "worker": "w0",
            "model": "m",
            "version": "1",
            "success": 5,
            "failure": {"INTERNAL": 2},
            "inference_count": 9,
            "execution_count": 3,
            "queue_ns": 4000,
            "compute_input_ns": 1000,
            "compute_infer_ns": 6000,
            "compute_output_ns": 500,
            "batch_sizes": {"1": 1, "3": 1, "5": 1},
        },
        {
            "worker": "w1",
            "model": "m",
            "version": "1",
            "success": 1,
            "failure": {},
            "inference_count": 8,
            "execution_count": 1,
            "queue_ns": 0,
            "compute_input_ns": 0,
            "compute_infer_ns": 0,
            "compute_output_ns": 0,
            "batch_sizes": {"8": 1},
        },
    ],
    "models": {"m": {"1": {"ready": 2, "queued": 4, "signature": {}}}},
    "workers": [
        {
            "worker": "w0",
            "state": "READY",
            "device": "cuda:0",
            "in_flight": 1,
            "direct_requests": 2,
            "capacity": 4,
            "device_memory": {"used_bytes": 1024, "reserved_bytes": 4096},
            "rss_bytes": 3 << 30,
        },
        {
            "worker": "w1",
            "state": "DRAINING",
            "device": "cpu",
            "in_flight": 0,
            "capacity": 2,
            "device_memory": None,
        },
    ],
    "dispatcher": {"requests": 12, "rejected": 1, "expired": 0, "resent": 2, "lost": 0, "pending": 5},
}


def test_worker_families_carry_the_dispatchers_numbers() -> None:
    text = render(worker_metrics.families(StatusReply("", **STATUS))).decode()
    samples = parse(text)
    assert total(samples, "nv_inference_count", model="m") == 17
    assert total(samples, "nv_inference_count", worker="w0") == 9
    assert total(samples, "nv_inference_exec_count") == 4
    assert total(samples, "nv_inference_queue_duration_us", worker="w0") == 4.0
    assert total(samples, "nv_inference_compute_infer_duration_us") == 6.0
    assert total(samples, "torchgate_worker_request_failure_total", reason="INTERNAL") == 2
    assert total(samples, "torchgate_batch_executions_total", size="3") == 1
    assert total(samples, "torchgate_batch_size_bucket", worker="w0", le="2.0") == 1
    assert total(samples, "torchgate_batch_size_bucket", worker="w0", le="4.0") == 2
    assert total(samples, "torchgate_batch_size_bucket", worker="w0", le="+Inf") == 3
    assert total(samples, "torchgate_batch_size_sum", worker="w0") == 9
    assert total(samples, "torchgate_batch_size_count") == 4
    assert total(samples, "torchgate_workers_ready", model="m", version="1") == 2
    assert total(samples, "nv_inference_pending_request_count", model="m") == 4
    assert total(samples, "nv_gpu_memory_used_bytes", worker="w0") == 1024
    assert total(samples, "torchgate_worker_resident_bytes", worker="w0") == 3 << 30
    assert not any(n == "torchgate_worker_resident_bytes" and ("worker", "w1") in ls for n, ls in samples)
    assert total(samples, "torchgate_worker_in_flight", worker="w0") == 3  # through the dispatcher or direct
    assert total(samples, "torchgate_worker_in_flight", worker="w1") == 0
    assert not any(dict(ls).get("worker") == "w1" for n, ls in samples if n == "nv_gpu_memory_used_bytes")
    assert total(samples, "torchgate_dispatcher_resent_total") == 2
    assert total(samples, "torchgate_dispatcher_up") == 1
    declared = types(text)
    assert declared["nv_inference_count"] == "counter" and declared["torchgate_batch_size"] == "histogram"
    assert declared["torchgate_worker_request_failure_total"] == "counter"


def test_no_dispatcher_gives_only_up_zero() -> None:
    samples = parse(render(worker_metrics.families(None)).decode())
    assert samples == {("torchgate_dispatcher_up", frozenset()): 0.0}


def test_request_counters_keep_triton_names_and_reasons() -> None:
    metrics = RequestMetrics.create(CollectorRegistry())
    metrics.observe_inference("m", "1", 0.002, 200)
    metrics.observe_inference("m", "1", 0.004, 200)
    metrics.observe_inference("m", "1", 0.5, 503)
    metrics.observe_inference("m", "1", 0.1, 400)
    metrics.observe_http("POST", "/v2/models/<model>/infer", 200)
    text = render(metrics.collect()).decode()
    samples = parse(text)
    assert total(samples, "nv_inference_request_success", model="m", version="1") == 2
    assert total(samples, "nv_inference_request_failure", reason="REJECTED") == 1
    assert total(samples, "nv_inference_request_failure", reason="OTHER") == 1
    assert total(samples, "nv_inference_request_duration_us") == pytest.approx(6000)
    assert total(samples, "torchgate_request_duration_seconds_count") == 4
    assert total(samples, "torchgate_request_duration_seconds_bucket", le="0.005") == 2
    assert total(samples, "torchgate_http_requests_total", status="200") == 1
    assert "# TYPE nv_inference_request_success counter" in text
    assert "nv_inference_request_success_total" not in text and "_created" not in text


def test_torchserve_counters_are_derived_with_torchserves_names_and_labels() -> None:
    metrics = RequestMetrics.create(CollectorRegistry())
    for seconds, status in ((0.002, 200), (0.004, 200), (0.5, 503), (0.1, 400)):
        metrics.observe_inference("m", "1", seconds, status)
    for status in (200, 200, 404, 503, 503, 503):
        metrics.observe_http("POST", "/v2/models/<model>/infer", status)
    collected = [*metrics.collect(), *worker_metrics.families(StatusReply("", **STATUS))]
    text = render([*collected, *torchserve_metrics.families(collected, "host-1")]).decode()
    samples = parse(text)
    labels = {"model_name": "m", "model_version": "1", "hostname": "host-1"}
    assert total(samples, "ts_inference_requests_total", **labels) == 4  # successful or not
    assert total(samples, "ts_inference_latency_microseconds", **labels) == pytest.approx(606_000)
    assert total(samples, "ts_queue_latency_microseconds", **labels) == 4.0  # both workers' queues
    host = {"Level": "Host", "Hostname": "host-1"}
    assert [total(samples, f"Requests{c}XX", **host) for c in "245"] == [2, 1, 3]
    declared = types(text)
    assert declared["ts_inference_requests_total"] == declared["ts_queue_latency_microseconds"] == "counter"
    assert declared["Requests2XX"] == "counter" and "Requests2XX_total" not in text
    assert "ts_inference_latency_microseconds_total" not in text


@pytest.mark.parametrize(
    "status, reason",
    [(503, "REJECTED"), (504, "REJECTED"), (500, "BACKEND"), (400, "OTHER"), (404, "OTHER"), (413, "OTHER")],
)
def test_failure_reasons(status: int, reason: str) -> None:
    assert failure_reason(status) == reason


def test_label_values_are_escaped() -> None:
    metrics = RequestMetrics.create(CollectorRegistry())
    metrics.observe_http("GET", 'a"b\\c\nd', 200)
    line = next(x for x in render(metrics.collect()).decode().splitlines() if x.startswith("torchgate_http"))
    assert 'route="a\\"b\\\\c\\nd"' in line


def test_request_id_choice() -> None:
    assert choose_request_id("hdr", "body", "made") == "hdr"
    assert choose_request_id(None, "body", "made") == "body"
    assert choose_request_id(None, "has space", "made") == "made"
    assert choose_request_id("bad\tid", None, None) != "bad\tid"
    assert len(choose_request_id(None, None, None)) == 32


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("torchgate.gateway", logging.WARNING, __file__, 1, message, args, None)


def test_log_lines_during_a_request_carry_its_id() -> None:
    app = Flask("t")
    with app.test_request_context("/v2"):
        g.trace = RequestTrace(request_id="trace-9")
        record = _record("gateway: %s failed", "something")
        assert RequestIdFilter().filter(record)
    assert TextFormatter().format(record).endswith("gateway: something failed request_id=trace-9")
    assert json.loads(JsonFormatter().format(record))["request_id"] == "trace-9"
    outside = _record("no request here")
    RequestIdFilter().filter(outside)
    assert "request_id" not in TextFormatter().format(outside)


def test_access_line_text_and_json(caplog: pytest.LogCaptureFixture) -> None:
    trace = RequestTrace(request_id="r-1", model="digits", version="1", samples=3)
    with caplog.at_level(logging.INFO, logger="torchgate.access"):
        log_request("POST", "/v2/models/digits/infer", 200, 0.0125, trace)
    record = caplog.records[-1]
    assert (
        record.getMessage()
        == "POST /v2/models/digits/infer 200 12.5ms model=digits version=1 samples=3 request_id=r-1"
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["access"] == {
        "method": "POST",
        "path": "/v2/models/digits/infer",
        "status": 200,
        "duration_ms": 12.5,
        "request_id": "r-1",
        "model": "digits",
        "version": "1",
        "samples": 3,
    }


def test_supervisord_gives_the_gateway_a_metrics_folder_in_the_run_dir(tmp_path: Path) -> None:
    settings = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    env = gateway_environment(settings)
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]) == tmp_path / "run" / "metrics"


def test_clear_empties_or_makes_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    clear(str(folder))
    assert folder.is_dir() and (folder.stat().st_mode & 0o777) == 0o700
    (folder / "counter_1.db").write_bytes(b"x")
    (folder / "sub").mkdir()
    clear(str(folder))
    assert list(folder.iterdir()) == []


def test_a_run_empties_the_metrics_folders_and_its_restarted_programs_keep_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`torchgate serve` empties both metrics folders as a run starts; gunicorn and the gRPC server,
    restarted by supervisord within it, keep the counters there (emptied, /metrics' sums went backwards)."""
    settings = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1, grpc_port=9)
    env = gateway_environment(settings)
    assert env[KEEP_ENV] == "1"
    folders = (settings.metrics_dir, settings.grpc_metrics_dir)
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"x")
    monkeypatch.setenv(KEEP_ENV, "1")
    for folder in folders:
        start(str(folder))
        assert [p.name for p in folder.iterdir()] == ["counter_1.db"]
    clear_metrics(settings)
    assert [list(folder.iterdir()) for folder in folders] == [[], []]
    (settings.metrics_dir / "counter_2.db").write_bytes(b"x")
    monkeypatch.delenv(KEEP_ENV)  # gunicorn or the gRPC server started alone: counters of earlier runs go
    start(str(settings.metrics_dir))
    assert list(settings.metrics_dir.iterdir()) == []


def test_a_restarted_dispatcher_counts_on_from_the_incarnations_its_book_kept(tmp_path: Path) -> None:
    """The workers' counters of incarnations that ended (kill -9, a restart) lived only in the dispatcher:
    restarted, it lost them and every worker-side counter and Triton's statistics went backwards."""
    path = tmp_path / "run" / "metrics" / "dispatcher-stats.json"
    path.parent.mkdir(parents=True)
    book = StatsBook(path)
    book.report("w0", "first", [{"model": "m", "version": "1", "success": 4, "inference_count": 9}])
    book.report("w0", "second", [{"model": "m", "version": "1", "success": 1, "inference_count": 2}])
    book.save(force=True)
    again = StatsBook(path)  # a restarted dispatcher
    assert (
        again.to_wire()
        == book.to_wire()
        == [{"worker": "w0", "model": "m", "version": "1", "success": 5, "inference_count": 11}]
    )
    again.report("w0", "second", [{"model": "m", "version": "1", "success": 2, "inference_count": 3}])
    assert again.totals()[("w0", "m", "1")] == {"success": 6, "inference_count": 12}  # its heartbeat wins
    path.write_text("{not json")
    assert StatsBook(path).to_wire() == []  # unreadable: logged, counted from zero
    settings = DeploySettings(run_dir=tmp_path / "run", cpu_workers=1)
    assert settings.stats_path == path  # emptied with the metrics folders as a run starts
    command = render_dispatcher(settings)
    assert f"--stats-file {path}" in command


def test_promql_names() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model) (rate(torchgate_request_duration_seconds_bucket"
        '{model=~"$model", version!="x(y"}[$__rate_interval]))) / on (model) group_left '
        "sum(rate(nv_inference_count[5m])) * 1e6"
    )
    assert metric_names(expr) == {"torchgate_request_duration_seconds_bucket", "nv_inference_count"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(x[5m])")
    assert label_values_metric("label_values(torchgate_workers_ready, model)") == "torchgate_workers_ready"


def test_a_metrics_file_is_allocated_before_it_is_mapped(tmp_path: Path) -> None:
    """prometheus-client maps a sparse file; on a full disk its first write is a SIGBUS that kills the
    gateway process (gunicorn then starts another at once, forever). Allocated first, a full disk is an
    OSError instead."""
    import mmap

    from prometheus_client import mmap_dict

    import gateway.metrics  # noqa: F401  # it allocates what prometheus-client maps

    path = tmp_path / "counter.db"
    with open(path, "a+b") as f:
        f.truncate(1 << 20)
        assert os.stat(path).st_blocks == 0  # sparse: no block behind it yet
        mapped = mmap_dict.mmap.mmap(f.fileno(), 1 << 20)  # type: ignore[attr-defined]
        mapped.close()
        assert os.stat(path).st_blocks * 512 >= 1 << 20
        assert mmap_dict.mmap.ACCESS_READ == mmap.ACCESS_READ  # type: ignore[attr-defined]  # the rest as it was
