"""The dispatcher's routing choices and queues, without sockets."""

from __future__ import annotations

import pytest

from inference_worker import protocol
from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode
from inference_worker.protocol.relay import RelayedRequest
from inference_worker.routing import Request, Router, WorkerState
from inference_worker.stats import StatsBook

SIG = {"name": "m", "version": "1", "max_queue_size": 2}  # a short queue, to see it fill


def worker(
    name: str, capacity: int = 2, versions: tuple[str, ...] = ("1",), incarnation: str = "a"
) -> WorkerState:
    return WorkerState(
        identity=f"{name}/{incarnation}".encode(),
        name=name,
        incarnation=incarnation,
        capacity=capacity,
        signatures={("m", v): {**SIG, "version": v} for v in versions},
        expires=10.0,
    )


def request(seq: int, version: str = "1", deadline: float = 1e12) -> Request:
    return Request(
        seq=seq,
        gateway=b"g",
        id=str(seq),
        model="m",
        version=version,
        deadline=deadline,
        message=RelayedRequest.of(protocol.Request(id=str(seq), model="m", inputs=[])),
    )


def test_least_loaded_worker_with_credit_gets_the_request() -> None:
    router = Router()
    a, b = worker("a", capacity=4), worker("b", capacity=2)
    router.register(a)
    router.register(b)
    chosen = []
    for seq in range(6):
        router.enqueue(request(seq))
        chosen += [w.name for _, w in router.assignments()]
    # always the lower in-flight/capacity ratio (a 1/4 before b 1/2), ties taking turns
    loads = {"a": 0, "b": 0}
    for name in chosen:
        capacity = 4 if name == "a" else 2
        assert loads[name] / capacity == min(loads["a"] / 4, loads["b"] / 2)
        loads[name] += 1
    assert loads == {"a": 4, "b": 2}
    assert router.pick("m", "1") is None  # no credit left anywhere: the next request waits in the queue
    router.enqueue(request(9))
    assert list(router.assignments()) == [] and router.queued("m") == 1
    freed = next(seq for seq in b.in_flight)
    router.complete(b.identity, freed)
    assert [(r.seq, w.name) for r, w in router.assignments()] == [(9, "b")]


def test_queue_is_bounded_and_rejects_at_once() -> None:
    router = Router()
    router.register(worker("a", capacity=1))
    router.enqueue(request(1))
    list(router.assignments())  # in flight
    router.enqueue(request(2))
    router.enqueue(request(3))
    with pytest.raises(CodedError) as caught:
        router.enqueue(request(4))
    assert caught.value.code is ErrorCode.UNAVAILABLE and "queue is full" in str(caught.value)


def test_versions_resolve_to_the_highest_or_the_named_one() -> None:
    router = Router()
    router.register(worker("a", versions=("1", "10", "2")))
    assert router.resolve_version("m", None) == "10"
    assert router.resolve_version("m", "2") == "2"
    with pytest.raises(CodedError):
        router.resolve_version("m", "3")
    with pytest.raises(CodedError):
        router.resolve_version("other", None)


def test_lost_worker_returns_its_requests_and_a_new_incarnation_replaces_the_old() -> None:
    router = Router()
    old = worker("a", incarnation="old")
    router.register(old)
    router.enqueue(request(1))
    assert [r.seq for r, _ in router.assignments()] == [1]
    orphans = router.register(worker("a", incarnation="new"))
    assert [r.seq for r in orphans] == [1] and orphans[0].attempts == 1
    assert old.identity not in router.workers


def test_draining_worker_gets_no_new_work_and_is_not_ready() -> None:
    router = Router()
    a = worker("a")
    router.register(a)
    a.draining = True
    assert router.pick("m", "1") is None
    assert router.status()[0]["m"]["1"]["ready"] == 0


def test_expired_and_unservable_requests_leave_the_queue() -> None:
    router = Router()
    a = worker("a", capacity=1)
    router.register(a)
    router.enqueue(request(1))
    list(router.assignments())
    router.enqueue(request(2, deadline=5.0))
    router.enqueue(request(3))
    assert [r.seq for r in router.expired_requests(10.0)] == [2]
    router.remove(a.identity)
    assert [r.seq for r in router.unservable()] == [3]
    assert router.pending() == 1  # request 1 is the caller's to re-send (it came back from remove)


def test_the_queue_goes_by_priority_level_then_arrival_and_a_resent_request_goes_first() -> None:
    router = Router()
    a = worker("a", capacity=1)
    a.signatures[("m", "1")] = {**SIG, "max_queue_size": 16}
    router.register(a)
    router.enqueue(request(1))
    assert [r.seq for r, _ in router.assignments()] == [1]  # a has no credit left: the rest queue
    for seq, level in ((2, 2), (3, 1), (4, 2), (5, 1)):
        queued = request(seq)
        queued.level = level
        router.enqueue(queued)
    orphan = request(6)
    orphan.level = 2
    router.enqueue(orphan, front=True)  # re-sent after its worker was lost
    order = []
    for _ in range(5):
        router.complete(a.identity, next(iter(a.in_flight)))
        order += [r.seq for r, _ in router.assignments()]
    assert order == [6, 3, 5, 2, 4]


def test_a_request_runs_at_the_level_its_model_version_gives_it() -> None:
    router = Router()
    leveled = worker("a")
    leveled.signatures[("m", "1")] = {**SIG, "priority_levels": 3, "default_priority_level": 2}
    router.register(leveled)
    assert [router.level("m", "1", asked) for asked in (0, 1, 3, 4)] == [2, 1, 3, 2]
    assert router.level("m", "9", 1) == 0  # a version nobody serves: no levels


def test_only_a_queued_request_is_withdrawn_at_once() -> None:
    router = Router()
    a = worker("a", capacity=1)
    router.register(a)
    router.enqueue(request(1))
    assert [r.seq for r, _ in router.assignments()] == [1]
    router.enqueue(request(2))
    router.enqueue(request(3))
    assert router.withdraw((b"g", "1")) is None  # in flight: its worker decides
    withdrawn = router.withdraw((b"g", "2"))
    assert withdrawn is not None and withdrawn.seq == 2
    assert router.withdraw((b"g", "2")) is None and router.withdraw((b"other", "3")) is None
    assert router.queued("m") == 1 and router.pending() == 2
    router.complete(a.identity, 1)
    assert [r.seq for r, _ in router.assignments()] == [3]


def test_stats_keep_counting_across_worker_restarts() -> None:
    book = StatsBook()
    book.report("w0", "first", [{"model": "m", "version": "1", "success": 5, "batch_sizes": {"2": 1}}])
    book.report("w0", "first", [{"model": "m", "version": "1", "success": 7, "batch_sizes": {"2": 2}}])
    book.report("w0", "second", [{"model": "m", "version": "1", "success": 1, "batch_sizes": {"4": 1}}])
    (row,) = book.to_wire()
    assert row["success"] == 8 and row["batch_sizes"] == {"2": 2, "4": 1} and row["worker"] == "w0"


def test_last_inference_takes_the_latest_not_the_sum() -> None:
    book = StatsBook()
    book.report("w0", "a", [{"model": "m", "version": "1", "last_inference": 100, "success": 1}])
    book.report("w0", "b", [{"model": "m", "version": "1", "last_inference": 250, "success": 1}])
    (row,) = book.to_wire()
    assert row["last_inference"] == 250 and row["success"] == 2


def test_equally_loaded_workers_take_turns() -> None:
    router = Router()
    for name in ("a", "b", "c"):
        router.register(worker(name, capacity=4))
    chosen = []
    for seq in range(6):
        router.enqueue(request(seq))
        for r, w in router.assignments():
            chosen.append(w.name)
            router.complete(w.identity, r.seq)  # answered before the next arrives: every worker idle again
    assert sorted(chosen) == ["a", "a", "b", "b", "c", "c"]


def test_a_request_held_past_its_deadline_is_dropped_and_its_worker_takes_no_more_until_it_answers() -> None:
    router = Router()
    w = worker("w", capacity=4)
    router.register(w)
    router.enqueue(request(1, deadline=100.0))
    router.enqueue(request(2, deadline=200.0))
    assert len(list(router.assignments())) == 2
    assert router.overdue(now_unix=100.5, grace=1.0) == []
    late = router.overdue(now_unix=101.0, grace=1.0)
    assert [r.seq for r in late] == [1] and list(w.in_flight) == [2] and router.pending() == 1
    assert w.overdue and w.credit == 0
    router.enqueue(request(3))
    assert list(router.assignments()) == []  # it waits for a worker that is not stuck


def test_a_slot_serving_a_version_with_another_config_than_another_slot_is_named() -> None:
    router = Router()
    a, b = worker("a", versions=("1", "2")), worker("b", versions=("1", "2"))
    router.register(a)
    assert router.disagreeing(b) == []  # alike
    router.register(b)
    edited = worker("b", versions=("1", "2"), incarnation="restarted")
    edited.signatures[("m", "2")] = {**SIG, "version": "2", "config": "max_batch_size = 8"}
    assert router.disagreeing(edited) == [("m", "2", "a")]  # not itself, in its earlier incarnation
    a.draining = True
    assert router.disagreeing(edited) == []  # a slot on its way out serves nothing new
