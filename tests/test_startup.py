"""What `torchgate serve` makes of a starting host: loading, given-up and ready slots, without processes."""

from __future__ import annotations

from pathlib import Path

from deploy.startup import assess, last_error
from inference_worker.protocol import StatusReply


def procs(**states: str) -> dict[str, dict[str, str]]:
    return {name.replace("_", "-"): {"statename": state} for name, state in states.items()}


def test_slots_still_loading_are_those_running_but_unknown_to_the_dispatcher() -> None:
    status = StatusReply(
        "",
        workers=[{"worker": "worker-cpu-0", "models": ["digits/1"]}],
        models={"digits": {"1": {"ready": 1}}},
    )
    p = assess(
        procs(worker_cpu_0="RUNNING", worker_cpu_1="STARTING"),
        {"worker-cpu-0", "worker-cpu-1"},
        status,
        ["digits"],
    )
    assert p.loading == ("worker-cpu-1",) and not p.settled and p.ready_models == ("digits",)


def test_a_host_where_every_slot_gave_up_serves_nothing() -> None:
    status = StatusReply("")
    p = assess(
        procs(worker_cpu_0="FATAL", worker_cpu_1="EXITED"), {"worker-cpu-0", "worker-cpu-1"}, status, ["m"]
    )
    assert p.failed == ("worker-cpu-0", "worker-cpu-1") and p.nothing_serves
    assert p.unavailable == {"m": "its slots are not serving"}


def test_a_model_a_worker_could_not_load_is_unavailable_with_its_reason() -> None:
    status = StatusReply(
        "",
        workers=[{"worker": "worker-cpu-0", "models": ["good/1"]}],
        models={"good": {"1": {"ready": 1}}},
        unavailable=[{"model": "bad", "version": "1", "worker": "worker-cpu-0", "reason": "no module PIL"}],
    )
    p = assess(procs(worker_cpu_0="RUNNING"), {"worker-cpu-0"}, status, ["bad", "good"])
    assert p.settled and not p.nothing_serves and p.unavailable == {"bad": "no module PIL"}


def test_a_worker_that_loaded_nothing_is_not_settled_while_it_says_why() -> None:
    # it registers only to report its failures, then leaves and exits; supervisord retries it or gives up
    status = StatusReply(
        "",
        workers=[{"worker": "worker-cpu-0", "models": []}],
        unavailable=[{"model": "m", "version": "1", "worker": "worker-cpu-0", "reason": "not a .pt2"}],
    )
    p = assess(procs(worker_cpu_0="STARTING"), {"worker-cpu-0"}, status, ["m"])
    assert p.loading == ("worker-cpu-0",) and not p.nothing_serves and p.unavailable == {"m": "not a .pt2"}
    gave_up = assess(procs(worker_cpu_0="FATAL"), {"worker-cpu-0"}, status, ["m"])
    assert gave_up.failed == ("worker-cpu-0",) and gave_up.nothing_serves


def test_the_reason_a_slot_gave_up_is_its_last_error_line(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    log.write_text(
        "INFO loading\nERROR worker[w]: cannot load models: model 'm' version 1 (x): broken\nINFO bye\n"
    )
    assert last_error(log) == "ERROR worker[w]: cannot load models: model 'm' version 1 (x): broken"
    assert last_error(tmp_path / "absent.log") == ""
