"""Faults under load, at the HTTP level, with `torchgate serve` running everything under supervisord.

One deployment (two CPU workers, one gunicorn with two processes) is shared by the module; each test first
waits until every process is back and ready, kills one with SIGKILL while clients keep sending, and checks
what the clients saw and that supervisord (or gunicorn's arbiter) brought the process back with no manual
step.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness import (
    HttpLoad,
    Outcome,
    Stack,
    call,
    children,
    copy_digits,
    short_dir,
    slow_body,
    wait_for,
    write_slow_model,
)

pytestmark = pytest.mark.processes

SLOTS = {"worker-cpu-0", "worker-cpu-1"}
RESTARTS = int(os.environ.get("TORCHGATE_RESTARTS", "5"))  # the soak test's restarts


@pytest.fixture(scope="module")
def deployment() -> Iterator[Stack]:
    with short_dir() as base:
        repository = base / "repo"
        copy_digits(repository)
        write_slow_model(repository, seconds=0.1, max_batch_size=4, max_queue_size=64)
        write_slow_model(repository, "slower", seconds=2.0, max_batch_size=4, max_queue_size=64)
        options = ("--model-repository", str(repository), "--gpus", "none", "--cpu-workers", "2")
        gateway = ("--gateway-processes", "2", "--gateway-threads", "4")
        with Stack.at(base).serve(
            *options, "--worker-threads", "1", "--worker-startsecs", "2", *gateway
        ) as d:
            d.wait_serving(timeout=120)
            yield d


@pytest.fixture
def healthy(deployment: Stack) -> Stack:
    """The deployment with every program RUNNING, both workers ready and both gateway processes up."""
    deployment.wait_healthy(*SLOTS, gateway_processes=2)
    return deployment


def dispatcher_counters(d: Stack) -> dict[str, int]:
    return dict(d.status().dispatcher)


def test_kill_9_a_worker_mid_batch_fails_no_http_request(healthy: Stack) -> None:
    d = healthy
    before = d.pids()
    resent_before = dispatcher_counters(d)["resent"]
    with HttpLoad(d.url, body=slow_body(rows=2), path="/v2/models/slow/infer", threads=6) as load:
        load.wait_for_more(20)
        d.kill_program("worker-cpu-0")  # the slow model sleeps 0.1 s of every batch
        wait_for(lambda: d.ready_workers() == SLOTS, timeout=60, what="the restarted worker ready")
        load.wait_for_more(40)
    assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
    assert dispatcher_counters(d)["resent"] > resent_before, "nothing was in flight on the killed worker"
    assert d.pids()["dispatcher"] == before["dispatcher"] and d.pids()["gateway"] == before["gateway"]


def test_kill_9_the_dispatcher_gives_503s_at_most_and_comes_back(healthy: Stack) -> None:
    d = healthy
    before = d.pids()
    with HttpLoad(d.url, threads=4) as load:
        load.wait_for_more(20)
        d.kill_program("dispatcher")
        load.wait_for_more(40, timeout=30)  # served again, by the new dispatcher, with no manual step
        wait_for(lambda: d.ready_workers() == SLOTS, timeout=30, what="both workers registered again")
    for failure in load.failures():  # nothing unclear: a 503 the client may retry, with Retry-After
        assert failure.status == 503 and failure.headers.get("Retry-After"), failure.describe()
        assert '"error"' in failure.body
    after = d.pids()
    for name in ("gateway", *SLOTS):
        assert after[name] == before[name], f"{name} restarted"


def test_kill_9_a_gateway_process_the_other_keeps_serving(healthy: Stack) -> None:
    d = healthy
    master = d.pids()["gateway"]
    victim, survivor = sorted(children(master))
    with HttpLoad(d.url, threads=4) as load:
        load.wait_for_more(20)
        assert d.kill_gateway_process() == victim
        load.wait_for_more(40)
    # Only a request on a connection of the killed process can fail, and only at the transport level.
    assert len(load.failures()) <= load.threads, [o.describe() for o in load.failures()]
    assert all(o.status == 0 for o in load.failures()), [o.describe() for o in load.failures()]
    assert survivor in children(master) and d.pids()["gateway"] == master


def test_kill_9_the_gunicorn_master_supervisord_brings_the_gateway_back(healthy: Stack) -> None:
    d = healthy
    master = d.pids()["gateway"]
    with HttpLoad(d.url, threads=2, timeout=10) as load:
        load.wait_for_more(10)
        killed_at = time.monotonic()
        os.kill(master, signal.SIGKILL)
        wait_for(
            lambda: d.pids().get("gateway") not in (None, master),
            timeout=30,
            what="supervisord to restart the gateway",
        )
        wait_for(
            lambda: any(t > killed_at and o.status == 200 for t, o in load.snapshot()),
            timeout=40,
            what="the gateway to answer again",
        )
        load.wait_for_more(20)
    assert all(o.status in (0, 503) for o in load.failures()), [o.describe() for o in load.failures()[:5]]
    wait_for(lambda: len(children(d.pids()["gateway"])) == 2, timeout=30, what="two gateway processes again")


def test_hup_replaces_the_gateway_processes_and_fails_no_request(healthy: Stack) -> None:
    """`torchgate ctl signal HUP gateway`: gunicorn starts new processes, then stops the old ones, which
    finish what they took; the listening socket stays open throughout."""
    d = healthy
    master = d.pids()["gateway"]
    old = set(children(master))
    with HttpLoad(d.url, threads=4) as load:
        load.wait_for_more(20)
        result = d.ctl("signal", "HUP", "gateway")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(
            lambda: len(new := set(children(master))) == 2 and not new & old,
            timeout=60,
            what="two new gateway processes and none of the old",
        )
        load.wait_for_more(20)
    assert load.failures() == [], [o.describe() for o in load.failures()[:5]]
    assert d.pids()["gateway"] == master


def test_restart_all_answers_the_requests_in_flight(healthy: Stack) -> None:
    """`supervisorctl restart all` signals every program at once, the dispatcher first: nothing in flight
    drops."""
    d = healthy
    before = d.pids()
    url = f"{d.url}/v2/models/slower/infer"
    with ThreadPoolExecutor(8) as pool:
        pending = [
            pool.submit(lambda: call(lambda: requests.post(url, json=slow_body(), timeout=60)))
            for _ in range(8)
        ]

        def arrived() -> int:  # queued or computing, through the dispatcher or a worker's direct lane
            status = d.status()
            return int(status.dispatcher["pending"]) + sum(w["direct_requests"] for w in status.workers)

        # Every request in the servers (or answered) first: one still on its way could reach a gateway as it
        # stops, and one sent down the lane of a busy worker waits unread until its batch is done (a 503
        # either way: the limits in docs/reliability.md).
        wait_for(
            lambda: arrived() + sum(f.done() for f in pending) >= 8,
            timeout=30,
            what="the 8 requests queued, computing or answered (2 s each)",
        )
        assert not all(f.done() for f in pending), "every request was answered before the restart"
        restart = d.ctl("restart", "all")
        outcomes = [f.result(timeout=90) for f in pending]
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert [o.status for o in outcomes] == [200] * 8, [o.describe() for o in outcomes]
    after = d.pids()
    assert all(after[name] != before[name] for name in ("dispatcher", "gateway", *SLOTS)), (before, after)


def kind(outcome: Outcome) -> str:
    """What a client saw: answered, refused (its connection was never taken, or no worker was ready yet: both
    say so at once and ran nothing), or something else."""
    if outcome.status == 200:
        return "answered"
    if outcome.status == 0 and "Connection refused" in outcome.body:
        return "refused"
    if outcome.status == 503 and "no ready worker" in outcome.body and outcome.headers.get("Retry-After"):
        return "503 no worker ready yet"
    if outcome.status == 0:
        return "reset or dropped"
    return f"HTTP {outcome.status}"


@pytest.mark.soak
@pytest.mark.timeout(120 + 90 * RESTARTS)
@pytest.mark.parametrize("pause", [0.0, 0.3], ids=["back to back", "every 0.3 s"])
@pytest.mark.parametrize("program", ["all", "dispatcher", "worker-cpu-0", "gateway"])
def test_restarts_under_load_refuse_connections_and_drop_no_request(
    healthy: Stack, program: str, pause: float
) -> None:
    """`supervisorctl restart all` (or one program), ``TORCHGATE_RESTARTS`` times (default 5), while 6 clients
    keep sending, back to back or pausing between requests on their kept-alive connections (`make soak`).
    While the servers are down a client's connections are refused, and until a worker is ready again it gets
    503 "no ready worker" with Retry-After: nothing ran, it may send again. Anything else (a reset after its
    request went out, another 5xx) is a request taken and not answered. It prints what the clients saw per
    restart (the tables in docs/reliability.md)."""
    d = healthy
    url = f"{d.url}/v2/models/slow/infer"

    def sender(index: int) -> Callable[[requests.Session], Outcome]:
        def send(session: requests.Session) -> Outcome:
            time.sleep(pause)
            return call(lambda: session.post(url, json=slow_body(rows=2), timeout=30))

        return send

    rows, others = [], []
    for restart in range(RESTARTS):
        d.wait_healthy(*SLOTS, gateway_processes=2)
        with HttpLoad(d.url, threads=6, sender=sender) as load:
            load.wait_for_more(20)
            started = time.monotonic()
            result = d.ctl("restart", program)
            assert result.returncode == 0, result.stdout + result.stderr
            load.wait_for_more(20, timeout=90)  # served again
        seen = Counter(kind(o) for _, o in load.snapshot())
        what = ", ".join(f"{name} {count}" for name, count in sorted(seen.items()))
        rows.append(f"| {restart + 1} | {time.monotonic() - started:.1f} s | {what} |")
        others += [
            o for _, o in load.snapshot() if kind(o) not in ("answered", "refused", "503 no worker ready yet")
        ]
    head = "| restart | until served again | what the 6 clients saw |\n|---|---|---|"
    print(f"\nrestart {program}, {pause} s between requests\n{head}\n" + "\n".join(rows))
    assert others == [], [o.describe() for o in others[:5]]
