"""The dynamic batching policy, without sockets."""

from __future__ import annotations

from inference_worker.batching import Batcher, Pending, priority_level

MS = 1_000_000


def item(
    seq: int,
    at_ms: float,
    samples: int = 1,
    key: object = "k",
    deadline: float = float("inf"),
    level: int = 0,
) -> Pending:
    return Pending(
        seq=seq,
        model=("m", "1"),
        batch_key=key,
        samples=samples,
        arrived_ns=int(at_ms * MS),
        deadline=deadline,
        level=level,
    )


def test_waits_for_the_delay_then_runs_what_it_has() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=2000)
    batcher.add(item(1, 0))
    batcher.add(item(2, 1))
    assert batcher.next_batch(int(1.9 * MS)) is None
    assert batcher.next_wakeup_ns() == 2 * MS
    batch = batcher.next_batch(2 * MS)
    assert [p.seq for p in batch or []] == [1, 2]
    assert len(batcher) == 0


def test_a_full_batch_runs_at_once_and_never_exceeds_the_maximum() -> None:
    batcher = Batcher(max_batch_size=4, max_queue_delay_us=10_000)
    for seq, samples in enumerate([2, 1, 2, 1]):
        batcher.add(item(seq, 0, samples))
    first = batcher.next_batch(0)
    assert [p.seq for p in first or []] == [0, 1]  # 2 + 1, and 2 more would make 5
    assert batcher.next_batch(0) is None  # 3 samples left: not full, delay not over
    assert [p.seq for p in batcher.next_batch(10 * MS) or []] == [2, 3]


def test_requests_of_different_shapes_are_never_batched_together() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=0)
    batcher.add(item(1, 0, key=(("f32", (3,)),)))
    batcher.add(item(2, 1, key=(("f32", (5,)),)))
    batcher.add(item(3, 2, key=(("f32", (3,)),)))
    batches = [batcher.next_batch(5 * MS), batcher.next_batch(5 * MS)]
    assert [[p.seq for p in b or []] for b in batches] == [[1, 3], [2]]


def test_zero_max_batch_size_runs_each_request_alone() -> None:
    batcher = Batcher(max_batch_size=0, max_queue_delay_us=5000)
    batcher.add(item(1, 0))
    batcher.add(item(2, 0))
    assert [p.seq for p in batcher.next_batch(0) or []] == [1]
    assert [p.seq for p in batcher.next_batch(0) or []] == [2]


def test_expired_requests_are_removed_before_they_run() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=0)
    batcher.add(item(1, 0, deadline=100.0))
    batcher.add(item(2, 0, deadline=300.0))
    assert [p.seq for p in batcher.expire(200.0)] == [1]
    assert [p.seq for p in batcher.next_batch(0) or []] == [2]


def test_a_withdrawn_request_never_runs_and_frees_its_samples() -> None:
    batcher = Batcher(max_batch_size=4, max_queue_delay_us=10_000)
    batcher.add(item(1, 0, samples=2))
    batcher.add(item(2, 0, samples=2))
    batcher.add(item(3, 0, samples=1, key="other"))
    withdrawn = batcher.withdraw(2)
    assert withdrawn is not None and withdrawn.seq == 2
    assert batcher.withdraw(2) is None and batcher.withdraw(99) is None
    assert batcher.next_batch(0) is None  # 2 samples left of 4: not full any more, the delay not over
    assert batcher.withdraw(3) is not None and len(batcher) == 1  # its queue, emptied, is gone
    assert batcher.next_wakeup_ns() == 10 * MS
    assert [p.seq for p in batcher.next_batch(10 * MS) or []] == [1]


def test_the_level_a_request_runs_at_is_tritons() -> None:
    assert priority_level(1, levels=3, default=2) == 1  # 1 is the highest
    assert priority_level(3, levels=3, default=2) == 3
    assert priority_level(0, levels=3, default=2) == 2  # none asked: the model's default
    assert priority_level(4, levels=3, default=2) == 2  # past the model's levels: the default
    assert priority_level(1, levels=0, default=0) == 0  # a model without levels: one queue, in order


def test_higher_levels_run_first_each_level_in_order() -> None:
    batcher = Batcher(max_batch_size=2, max_queue_delay_us=5000)
    for seq, level in ((1, 2), (2, 2), (3, 1), (4, 1), (5, 3)):
        batcher.add(item(seq, seq, level=level))
    assert [p.seq for p in batcher.next_batch(5 * MS) or []] == [3, 4]  # full: at once
    assert [p.seq for p in batcher.next_batch(5 * MS) or []] == [1, 2]
    assert batcher.next_batch(5 * MS) is None  # 5 alone waits for its delay
    assert [p.seq for p in batcher.next_batch(10 * MS) or []] == [5]


def test_the_delay_counts_from_the_oldest_request_not_the_head() -> None:
    batcher = Batcher(max_batch_size=4, max_queue_delay_us=5000)
    batcher.add(item(1, 0, level=2))
    batcher.add(item(2, 2, level=1))  # ahead of 1, but 1 has waited longer
    assert batcher.next_wakeup_ns() == 5 * MS
    assert batcher.next_batch(4 * MS) is None
    assert [p.seq for p in batcher.next_batch(5 * MS) or []] == [2, 1]


def test_of_the_queues_due_the_one_with_the_highest_level_runs_first() -> None:
    batcher = Batcher(max_batch_size=4, max_queue_delay_us=0)
    batcher.add(item(1, 0, key="a", level=2))
    batcher.add(item(2, 1, key="b", level=1))
    assert [p.seq for p in batcher.next_batch(2 * MS) or []] == [2]
    assert [p.seq for p in batcher.next_batch(2 * MS) or []] == [1]


def test_flush_runs_everything_regardless_of_delay() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=1_000_000)
    batcher.add(item(1, 0))
    assert batcher.next_batch(0) is None
    assert [p.seq for p in batcher.next_batch(0, flush=True) or []] == [1]


def test_a_preferred_batch_size_runs_at_once_as_the_largest_it_can_fill() -> None:
    batcher = Batcher(max_batch_size=16, max_queue_delay_us=1_000_000, preferred_batch_sizes=(4, 8))
    for seq in range(3):
        batcher.add(item(seq, 0))
    assert batcher.next_batch(0) is None  # 3 samples: no preferred size yet, and the delay is long
    for seq in range(3, 10):
        batcher.add(item(seq, 0))
    assert len(batcher.next_batch(0) or []) == 8  # 10 queued: the largest preferred size that fits
    assert batcher.next_batch(0) is None  # 2 left wait for the delay


def test_requests_further_apart_than_the_delay_run_at_once() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=1000)
    batcher.add(item(1, 0))
    assert batcher.next_batch(0) is None  # nothing known about arrivals yet: wait, as Triton does
    assert [p.seq for p in batcher.next_batch(1 * MS) or []] == [1]
    batcher.add(item(2, 3))  # 3 ms after the first: requests come further apart than the 1 ms delay
    assert [p.seq for p in batcher.next_batch(3 * MS) or []] == [2]


def test_requests_closer_than_the_delay_still_wait_for_each_other() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=1000)
    batcher.add(item(1, 0))
    batcher.add(item(2, 0.1))
    batcher.add(item(3, 0.2))
    assert batcher.next_batch(int(0.3 * MS)) is None
    assert [p.seq for p in batcher.next_batch(1 * MS) or []] == [1, 2, 3]


def test_after_an_idle_spell_close_arrivals_soon_wait_again() -> None:
    batcher = Batcher(max_batch_size=8, max_queue_delay_us=1000)
    batcher.add(item(0, 0))
    batcher.next_batch(1 * MS)
    at = 10_000.0  # ten seconds idle
    for seq in range(1, 4):  # then a burst, 0.1 ms apart
        batcher.add(item(seq, at))
        batcher.next_batch(int(at * MS))
        at += 0.1
    batcher.add(item(9, at))
    assert batcher.next_batch(int(at * MS)) is None  # the estimate came back below the delay: wait
