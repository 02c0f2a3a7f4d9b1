"""Model control's order of work in the dispatcher, without processes: one slot at a time, stop at a
failure."""

from __future__ import annotations

from inference_worker.model_control import LOAD, UNLOAD, ControlJob, ModelControl, targets
from inference_worker.routing import WorkerState


def worker(name: str, models: tuple[str, ...], assigned: tuple[str, ...] = ()) -> WorkerState:
    return WorkerState(
        identity=name.encode(),
        name=name,
        incarnation="i",
        capacity=2,
        signatures={(m, "1"): {} for m in models},
        expires=0.0,
        assigned=assigned,
    )


def pool(*workers: WorkerState) -> dict[bytes, WorkerState]:
    return {w.identity: w for w in workers}


def test_a_load_goes_to_every_slot_configured_for_the_model_one_at_a_time() -> None:
    workers = pool(
        worker("w1", ("a",)), worker("w0", ()), worker("own-b", ("b",), ("b",)), worker("only-c", (), ("c",))
    )
    assert targets(LOAD, "a", workers) == [b"w0", b"w1"]  # w0 serves every model; only-c and own-b do not
    control = ModelControl()
    control.submit(ControlJob("j", b"gw", LOAD, "a"))
    step = control.next_step(workers, now=0.0)
    assert step is not None and step.worker == b"w0" and control.busy(b"w0")
    assert control.next_step(workers, now=1.0) is None  # w0 is still loading
    control.on_reply(b"w0", True, "")
    step = control.next_step(workers, now=2.0)
    assert step is not None and step.worker == b"w1"
    control.on_reply(b"w1", True, "")
    step = control.next_step(workers, now=3.0)
    assert step is not None and step.worker is None and step.job.done == ["w0", "w1"] and not step.job.error
    assert control.next_step(workers, now=4.0) is None


def test_a_load_stops_at_the_first_slot_that_fails() -> None:
    workers = pool(worker("w0", ("a",)), worker("w1", ("a",)))
    control = ModelControl()
    control.submit(ControlJob("j", b"gw", LOAD, "a"))
    control.next_step(workers, 0.0)
    control.on_reply(b"w0", False, "model 'a' version 1 (...): cannot load")
    step = control.next_step(workers, 1.0)
    assert step is not None and step.worker is None
    assert step.job.error == "w0: model 'a' version 1 (...): cannot load" and step.job.done == []


def test_a_slot_that_takes_too_long_or_leaves_fails_the_job() -> None:
    workers = pool(worker("w0", ("a",)), worker("w1", ("a",)))
    control = ModelControl(slot_timeout=10.0)
    control.submit(ControlJob("j", b"gw", LOAD, "a"))
    control.next_step(workers, 0.0)
    step = control.next_step(workers, 11.0)
    assert step is not None and step.worker is None and "w0 did not finish within 10s" in step.job.error
    control.submit(ControlJob("k", b"gw", LOAD, "a"))
    control.next_step(workers, 20.0)
    control.on_lost(b"w0")
    step = control.next_step(workers, 21.0)
    assert step is not None and "the worker left during the load" in step.job.error


def test_unload_marks_the_model_and_a_load_clears_it() -> None:
    workers = pool(worker("w0", ("a", "b")), worker("w1", ("b",)))
    control = ModelControl()
    control.submit(ControlJob("u", b"gw", UNLOAD, "a"))
    step = control.next_step(workers, 0.0)
    assert step is not None and step.worker == b"w0" and control.unloaded == {"a"}
    control.on_reply(b"w0", True, "")
    assert (step := control.next_step(workers, 1.0)) is not None and step.worker is None
    control.submit(ControlJob("l", b"gw", LOAD, "a"))
    control.next_step(workers, 2.0)
    assert control.unloaded == set()


def test_a_load_no_slot_can_take_is_refused_with_the_reason() -> None:
    workers = pool(worker("own-b", ("b",), ("b",)))
    control = ModelControl()
    control.submit(ControlJob("j", b"gw", LOAD, "a"))
    step = control.next_step(workers, 0.0)
    assert step is not None and step.worker is None
    assert "no worker slot is configured to serve model 'a'" in step.job.error


def test_what_slots_report_they_cannot_load_is_kept_per_slot_and_unloaded_models_stay_unloaded() -> None:
    control = ModelControl()
    signatures: dict[tuple[str, str], dict[str, object]] = {("a", "1"): {}, ("b", "1"): {}}
    kept, stale = control.note_ready("w0", [{"model": "c", "version": "1", "reason": "no PIL"}], signatures)
    assert kept == signatures and stale == []
    control.unloaded.add("a")
    kept, stale = control.note_ready("w1", [], signatures)
    assert list(kept) == [("b", "1")] and stale == ["a"]
    assert control.unavailable() == [
        {"model": "c", "version": "1", "reason": "no PIL", "worker": "w0"},
        {"model": "a", "version": None, "worker": "", "reason": "unloaded"},
    ]
    control.note_ready("w0", [], signatures)  # a slot's new report replaces its last one
    assert [e["model"] for e in control.unavailable()] == ["a"]
