"""Metrics, statistics, request ids and access lines, end to end: gunicorn (2 processes), a dispatcher, 2 CPU
workers.

Traffic of known batch sizes goes in; the numbers that come out of ``/metrics`` and ``/v2/models/.../stats``
must match it, whichever gateway process answers the scrape, and must keep counting across a worker's kill -9.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import requests

from harness import ROOT, Stack, copy_digits, slow_repository, wait_for
from harness.prometheus import Sample, parse, scrape, total, types
from harness.promql import label_values_metric, metric_names

SIZES = [1, 2, 3, 5, 8, 1, 4, 2, 7, 1, 3, 6]  # the batch sizes of the traffic, 43 samples in 12 requests
HTTP_TIMEOUT = 60.0

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("metrics")
    repository = slow_repository(root / "repo", seconds=0.0, max_queue_size=64, max_batch_size=4)
    copy_digits(repository)
    with Stack.at(root, repository) as stack:
        metrics = stack.run_dir / "metrics"
        metrics.mkdir(parents=True)
        (metrics / "counter_stale.db").write_bytes(b"left over from an earlier run")
        env = {"TORCHGATE_LOG_FORMAT": "json", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        yield stack.start(("w0", "w1"), gateway_processes=2, gateway_threads=4, gateway_env=env)


def infer(
    stack: Stack,
    samples: int,
    *,
    seed: int = 0,
    model: str = "digits",
    request_id: str | None = None,
    body_id: str | None = None,
    negative: bool = False,
) -> requests.Response:
    width = 64 if model == "digits" else 4
    x = np.random.default_rng(seed).integers(0, 17, size=(samples, width)).astype(np.float32)
    if negative:
        x = -x - 1
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input" if model == "digits" else "x",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    if body_id is not None:
        body["id"] = body_id
    headers = {"X-Request-ID": request_id} if request_id else {}
    with requests.Session() as session:  # a new connection each time, so both gateway processes answer
        return session.post(
            f"{stack.url}/v2/models/{model}/infer", json=body, headers=headers, timeout=HTTP_TIMEOUT
        )


def settled(
    stack: Stack,
    name: str,
    expected: float,
    more: Callable[[dict[Sample, float]], bool] = lambda samples: True,
    **labels: str,
) -> dict[Sample, float]:
    """Scrape until ``name`` sums to ``expected`` (worker counters arrive with the next heartbeat) and
    ``more`` holds (a gateway process counts a request a moment after answering it)."""
    found: dict[str, dict[Sample, float]] = {}

    def check() -> bool:
        found["s"] = scrape(stack.url)[1]
        return total(found["s"], name, **labels) == expected and more(found["s"])

    wait_for(check, timeout=30, interval=0.1, what=f"{name}{labels} to reach {expected}")
    return found["s"]


def agreed(stack: Stack, worker_side: str, gateway_side: str, **labels: str) -> dict[Sample, float]:
    """Scrape until the workers' count equals the gateway's (the workers' arrives with the next heartbeat)."""
    found: dict[str, dict[Sample, float]] = {}

    def check() -> bool:
        found["s"] = s = scrape(stack.url)[1]
        return total(s, worker_side, **labels) == total(s, gateway_side, **labels)

    wait_for(check, timeout=30, interval=0.1, what=f"{worker_side} to agree with {gateway_side} on {labels}")
    return found["s"]


def answered(stack: Stack, request_id: str) -> int:
    """Return the pid of the gateway process whose access line carries ``request_id``."""

    def pid() -> int | None:
        return next((e["pid"] for e in stack.access_lines() if e["access"]["request_id"] == request_id), None)

    return int(wait_for(pid, timeout=10, what=f"the access line of {request_id}"))


def access_lines_of(stack: Stack, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Return the JSON access lines of ``ids`` by request id, once all are written (a writer thread writes
    them)."""

    def lines() -> dict[str, dict[str, Any]] | None:
        found = {e["access"]["request_id"]: e for e in stack.access_lines()}
        return found if all(i in found for i in ids) else None

    return wait_for(lines, timeout=10, what=f"the access lines of {len(ids)} requests")


def test_counts_match_the_traffic_across_gateway_processes(stack: Stack) -> None:
    before = scrape(stack.url)[1]
    ids = [f"metrics-{i}" for i in range(len(SIZES))]
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda i: infer(stack, SIZES[i], seed=i, request_id=ids[i]), range(len(SIZES)))
        )
    assert [r.status_code for r in responses] == [200] * len(SIZES), [r.text for r in responses]
    assert [r.headers["X-Request-ID"] for r in responses] == ids

    samples = sum(SIZES)

    def counted(now: dict[Sample, float]) -> bool:  # by the gateway processes
        return all(
            total(now, name, model="digits") - total(before, name, model="digits") == len(SIZES)
            for name in ("nv_inference_request_success", "torchgate_request_duration_seconds_count")
        )

    after = settled(
        stack,
        "nv_inference_count",
        total(before, "nv_inference_count", model="digits") + samples,
        counted,
        model="digits",
    )

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("nv_inference_request_success", model="digits", version="1") == len(SIZES)
    assert delta("nv_inference_request_failure", model="digits") == 0
    assert delta("torchgate_request_duration_seconds_count", model="digits") == len(SIZES)
    assert delta("nv_inference_request_duration_us", model="digits") > 0
    assert delta("torchgate_worker_request_success_total", model="digits") == len(SIZES)

    # Each request ran in a batch of the size its access line (from the worker's reply) reports; a batch of B
    # samples holding this request's n samples is n/B of one execution.
    lines = access_lines_of(stack, ids)
    ran = [lines[i]["access"] for i in ids]
    assert [a["samples"] for a in ran] == SIZES and all(a["status"] == 200 for a in ran)
    assert all(a["batch_size"] >= a["samples"] for a in ran)
    assert delta("nv_inference_exec_count", model="digits") == pytest.approx(
        sum(a["samples"] / a["batch_size"] for a in ran)
    )
    by_size = [
        (int(dict(ls)["size"]), v - before.get((n, ls), 0))
        for (n, ls), v in after.items()
        if n == "torchgate_batch_executions_total" and ("model", "digits") in ls
    ]
    assert sum(size * count for size, count in by_size) == samples
    assert sum(count for _, count in by_size) == delta("nv_inference_exec_count", model="digits")
    assert delta("torchgate_batch_size_count", model="digits") == delta(
        "nv_inference_exec_count", model="digits"
    )
    assert delta("torchgate_batch_size_sum", model="digits") == samples
    for worker in ("w0", "w1"):  # per worker too: what it ran is what it counted
        mine = [a for a in ran if a["worker"] == worker]
        assert delta("nv_inference_count", model="digits", worker=worker) == sum(a["samples"] for a in mine)
    assert delta("nv_inference_queue_duration_us", model="digits") > 0
    assert delta("nv_inference_compute_infer_duration_us", model="digits") > 0
    # TorchServe's names for the same numbers (its metrics API's, for dashboards and autoscalers built on it).
    assert delta("ts_inference_requests_total", model_name="digits", model_version="1") == len(SIZES)
    assert delta("ts_queue_latency_microseconds", model_name="digits") == pytest.approx(
        delta("nv_inference_queue_duration_us", model="digits")
    )
    assert delta("ts_inference_latency_microseconds", model_name="digits") == pytest.approx(
        delta("torchgate_request_duration_seconds_sum", model="digits") * 1e6
    )

    # Counters live in the multiprocess folder: whichever process answers a scrape reports every process's
    # sum.
    expected = total(after, "nv_inference_request_success", model="digits")
    answered_by: dict[int, float] = {}
    for attempt in range(100):
        if len(answered_by) == 2:
            break
        response = requests.get(
            f"{stack.url}/metrics", headers={"X-Request-ID": f"scrape-{attempt}"}, timeout=HTTP_TIMEOUT
        )
        answered_by[answered(stack, f"scrape-{attempt}")] = total(
            parse(response.text), "nv_inference_request_success", model="digits"
        )
    assert len(answered_by) == 2, "only one gateway process ever answered"
    assert set(answered_by.values()) == {expected}
    served = {e["pid"] for e in access_lines_of(stack, ids).values()}
    assert expected - total(before, "nv_inference_request_success", model="digits") == len(SIZES)
    print("gateway processes that served the traffic:", served)


def test_request_ids_reach_the_worker_and_every_log_line(stack: Stack) -> None:
    ok = infer(stack, 1, body_id="oip-id-7")
    assert (
        ok.status_code == 200 and ok.headers["X-Request-ID"] == "oip-id-7" and ok.json()["id"] == "oip-id-7"
    )
    made = infer(stack, 1)
    assert made.status_code == 200 and len(made.headers["X-Request-ID"]) == 32
    header_wins = infer(stack, 1, request_id="hdr-1", body_id="body-1")
    assert header_wins.headers["X-Request-ID"] == "hdr-1" and header_wins.json()["id"] == "body-1"

    failed = infer(stack, 1, model="slow", negative=True, request_id="will-fail-42")
    assert failed.status_code == 500 and failed.headers["X-Request-ID"] == "will-fail-42"
    wait_for(
        lambda: "will-fail-42" in stack.log("w0") + stack.log("w1"),
        timeout=10,
        what="the worker to log the failed request's id",
    )
    accesses = access_lines_of(stack, ["will-fail-42", "oip-id-7", made.headers["X-Request-ID"], "hdr-1"])
    assert accesses["will-fail-42"]["access"]["status"] == 500
    assert accesses["will-fail-42"]["request_id"] == "will-fail-42"  # the JSON line's own field
    assert accesses["oip-id-7"]["access"]["model"] == "digits"
    assert accesses[made.headers["X-Request-ID"]]["access"]["path"] == "/v2/models/digits/infer"
    for entry in (json.loads(line) for line in stack.log("gateway").splitlines() if line.startswith("{")):
        if "will-fail-42" in entry["message"]:
            assert entry.get("request_id") == "will-fail-42", entry


def test_failures_are_counted_by_reason(stack: Stack) -> None:
    before = agreed(
        stack, "torchgate_worker_request_failure_total", "nv_inference_request_failure", model="slow"
    )
    assert infer(stack, 1, model="slow", negative=True, request_id="fail-a").status_code == 500
    bad = requests.post(
        f"{stack.url}/v2/models/digits/infer",
        timeout=HTTP_TIMEOUT,
        json={"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
    )
    assert bad.status_code == 400
    assert (
        requests.post(f"{stack.url}/v2/models/nope/infer", json={}, timeout=HTTP_TIMEOUT).status_code == 404
    )

    def counted(now: dict[Sample, float]) -> bool:  # by the gateway processes
        return all(
            total(now, name, **labels) - total(before, name, **labels) == 1
            for name, labels in (
                ("nv_inference_request_failure", {"model": "slow", "reason": "BACKEND"}),
                ("nv_inference_request_failure", {"model": "digits", "reason": "OTHER"}),
                ("torchgate_http_requests_total", {"route": "/v2/models/<model>/infer", "status": "404"}),
            )
        )

    after = settled(
        stack,
        "torchgate_worker_request_failure_total",
        total(before, "torchgate_worker_request_failure_total", model="slow") + 1,
        counted,
        model="slow",
    )

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("nv_inference_request_failure", model="slow", reason="BACKEND") == 1
    assert delta("nv_inference_request_failure", model="digits", reason="OTHER") == 1
    assert delta("nv_inference_request_failure", model="nope") == 0  # no such model: no model series
    assert delta("torchgate_http_requests_total", route="/v2/models/<model>/infer", status="404") == 1
    assert delta("torchgate_worker_request_failure_total", model="slow", reason="INTERNAL") == 1
    assert delta("nv_inference_request_success", model="digits") == 0


def test_every_inference_route_is_counted(stack: Stack) -> None:
    """TorchServe's and KServe's inference routes are inference requests too: Triton's and TorchServe's
    request counters and the latency histogram count them (/invocations, /models/M/invoke and
    /v1/models/M:predict were left out)."""
    before = scrape(stack.url)[1]
    row = [float(i % 17) for i in range(64)]
    sent: list[tuple[str, Any]] = [
        ("/predictions/digits", [row]),
        ("/invocations?model_name=digits", [row]),
        ("/models/digits/invoke", [row]),
        ("/v1/models/digits:predict", {"instances": [row]}),
        (
            "/v2/models/digits/infer",
            {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}]},
        ),
    ]
    for path, doc in sent:
        with requests.Session() as session:
            response = session.post(f"{stack.url}{path}", json=doc, timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, (path, response.text)

    def counted(now: dict[Sample, float]) -> bool:  # by the gateway processes, as HTTP requests at least
        posted = {"method": "POST", "status": "200"}
        return total(now, "torchgate_http_requests_total", **posted) - total(
            before, "torchgate_http_requests_total", **posted
        ) >= len(sent)

    after = settled(
        stack,
        "nv_inference_count",
        total(before, "nv_inference_count", model="digits") + len(sent),
        counted,
        model="digits",
    )

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("torchgate_worker_request_success_total", model="digits") == len(sent)
    assert delta("nv_inference_request_success", model="digits") == len(sent)
    assert delta("torchgate_request_duration_seconds_count", model="digits") == len(sent)
    assert delta("ts_inference_requests_total", model_name="digits") == len(sent)


def test_statistics_endpoint_matches_the_metrics(stack: Stack) -> None:
    assert infer(stack, 3, seed=5).status_code == 200
    samples = agreed(
        stack, "torchgate_worker_request_success_total", "nv_inference_request_success", model="digits"
    )

    def stats() -> dict[str, Any] | None:
        doc = requests.get(f"{stack.url}/v2/models/digits/stats", timeout=HTTP_TIMEOUT).json()
        one = doc["model_stats"][0]
        return one if one["inference_count"] == total(samples, "nv_inference_count", model="digits") else None

    one = wait_for(stats, timeout=10, what="statistics to catch up")
    assert one["name"] == "digits" and one["version"] == "1"
    assert one["execution_count"] == total(samples, "nv_inference_exec_count", model="digits")
    assert one["inference_stats"]["success"]["count"] == total(
        samples, "torchgate_worker_request_success_total", model="digits"
    )
    assert one["inference_stats"]["queue"]["ns"] > 0 and one["inference_stats"]["compute_infer"]["ns"] > 0
    sizes: dict[int, float] = {}
    for (n, ls), v in samples.items():
        if n == "torchgate_batch_executions_total" and ("model", "digits") in ls:
            size = int(dict(ls)["size"])
            sizes[size] = sizes.get(size, 0) + v
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in one["batch_stats"]} == sizes
    every = requests.get(f"{stack.url}/v2/models/stats", timeout=HTTP_TIMEOUT).json()["model_stats"]
    assert {(m["name"], m["version"]) for m in every} == {("digits", "1"), ("slow", "1")}
    assert (
        requests.get(f"{stack.url}/v2/models/digits/versions/1/stats", timeout=HTTP_TIMEOUT).json()[
            "model_stats"
        ][0]["name"]
        == "digits"
    )


def test_worker_counters_keep_counting_across_kill_9(stack: Stack) -> None:
    seeds = iter(range(1000))

    def w0_counted() -> dict[Sample, float] | None:
        """Send a request; return the counters once w0 computed some (which worker computes is not fixed: a
        gateway process alone sends straight to a worker its STATUS, up to 1 s old, lists, in turn)."""
        assert infer(stack, 2, seed=next(seeds)).status_code == 200
        samples = agreed(
            stack, "torchgate_worker_request_success_total", "nv_inference_request_success", model="digits"
        )
        return samples if total(samples, "nv_inference_count", worker="w0") > 0 else None

    before = wait_for(w0_counted, timeout=60, interval=0.05, what="w0 to compute a request")
    counters = {
        k: v for k, v in before.items() if types_of(k[0]) and k[0].startswith(("nv_inference", "torchgate_b"))
    }
    victim = stack.started.get("w0-again") or stack.started["w0"]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)

    seen: list[dict[Sample, float]] = []

    def gone() -> bool:
        text, samples = scrape(stack.url)
        seen.append(samples)
        return 'worker="w0"' not in "".join(
            line for line in text.splitlines() if "torchgate_worker_capacity" in line
        )

    wait_for(gone, timeout=30, interval=0.1, what="the dispatcher to drop w0")
    stack.start_worker("w0", wait=False, log="w0-again")

    def back() -> bool:
        text, samples = scrape(stack.url)
        seen.append(samples)
        return total(samples, "torchgate_workers_ready", model="digits") == 2

    wait_for(back, timeout=120, interval=0.2, what="w0 to come back")
    sent = 0
    for i in range(10):
        response = infer(stack, 3, seed=100 + i)
        assert response.status_code == 200
        sent += 3
    final = agreed(
        stack, "torchgate_worker_request_success_total", "nv_inference_request_success", model="digits"
    )
    assert (
        total(final, "nv_inference_count", model="digits")
        == total(before, "nv_inference_count", model="digits") + sent
    )
    seen.append(final)
    for key, value in counters.items():
        for samples in seen:
            assert samples.get(key, 0) >= value, f"{key} went from {value} to {samples.get(key)}"


_TYPES: dict[str, str] = {}


def types_of(name: str) -> bool:
    """Return whether ``name`` is a sample of a counter or a histogram (which must never decrease)."""
    return not name.endswith(
        ("_pending_request_count", "_in_flight", "_capacity", "_ready", "_up", "_pending")
    )


def test_scrape_declares_types_and_triton_names(stack: Stack) -> None:
    text, samples = scrape(stack.url)
    declared = types(text)
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
    ):
        assert declared.get(name) == "counter", name
    assert declared["nv_inference_pending_request_count"] == "gauge"
    assert declared["torchgate_request_duration_seconds"] == "histogram"
    assert declared["torchgate_batch_size"] == "histogram"
    assert total(samples, "torchgate_dispatcher_up") == 1
    assert not any(n.endswith("_created") for n, _ in samples)
    folder = stack.run_dir / "metrics"
    assert not (folder / "counter_stale.db").exists()  # emptied when gunicorn started
    assert any(folder.glob("counter_*.db")) and any(folder.glob("histogram_*.db"))


GPU_ONLY = {
    "nv_gpu_memory_used_bytes",
    "torchgate_gpu_memory_reserved_bytes",
}  # no samples without a GPU worker


def dashboard_queries() -> list[str]:
    doc = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    for variable in doc["templating"]["list"]:
        metric = label_values_metric(variable["query"]["query"])
        assert metric, variable
        queries.append(metric)
    return queries


def test_every_dashboard_query_names_an_exported_metric(stack: Stack) -> None:
    assert infer(stack, 2, seed=9).status_code == 200
    queries = dashboard_queries()
    referenced = set().union(*(metric_names(q) for q in queries))
    assert len(referenced) >= 15 and all(q.strip() for q in queries)
    wait_for(
        lambda: total(scrape(stack.url)[1], "torchgate_batch_size_count") > 0,
        timeout=30,
        what="worker metrics",
    )
    text, samples = scrape(stack.url)
    sampled = {name for name, _ in samples}
    declared = set(types(text))
    missing = {n for n in referenced if n not in sampled and not (n in GPU_ONLY and n in declared)}
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"
