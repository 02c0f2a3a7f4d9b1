"""The worker's application, apart from its session: the models it holds, their queues, computing, answering.

Everything here but :meth:`Application.compute` runs on the worker's main thread; ``compute`` runs on the
compute thread and touches nothing the main thread changes (statistics are counted in :meth:`finish`).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inference_worker import gpu, protocol, shm
from inference_worker.batching import Batcher, Pending, priority_level
from inference_worker.compute import BatchTimes, Executor, Launched, check_inputs, describe_failure
from inference_worker.errors import CodedError
from inference_worker.pipeline import Pipeline
from inference_worker.protocol import ErrorCode, ProtocolError, TensorMeta
from inference_worker.residents import Residents
from inference_worker.stats import ModelStats
from inference_worker.tensors import from_torch, to_torch
from inference_worker.worker.config import WorkerConfig, pick_device

log = logging.getLogger("torchgate.worker")

Key = tuple[str, str]  # model, version
# A CPU batch expected to take less than this share of a heartbeat interval runs on the main thread:
# heartbeats wait no longer than that (the dispatcher allows them liveness x interval, 8 x 0.5 s by default).
INLINE_SHARE = 0.2
Result = protocol.WorkerReply | protocol.WorkerError
Answer = tuple[Result, bool]  # one request's answer, and whether to copy its frames on send


@dataclass(slots=True)
class Batch:
    """Requests of one model version that run together."""

    number: int
    key: Key
    items: list[Pending]

    @property
    def samples(self) -> int:
        return sum(item.samples for item in self.items)


@dataclass(slots=True)
class Launch:
    """A batch started on the launcher thread: the requests left out (past their deadline), and the run."""

    expired: list[Pending]
    run: Run
    handle: Launched | None = None  # an Executor's batch on its way
    failed: Exception | None = None  # launching raised: the finisher runs the requests one by one


@dataclass(slots=True)
class Outcome:
    """What became of a batch: requests left out past their deadline, and the runs of the model."""

    expired: list[Pending]
    runs: list[Run]


@dataclass(slots=True)
class Run:
    """One call of the model: the requests it served, when it started, how long it took, and what came out."""

    items: list[Pending]
    start_ns: int
    times: BatchTimes = field(default_factory=BatchTimes)
    outputs: list[list[tuple[TensorMeta, Any]] | CodedError] | None = None  # per request, for the wire
    error: tuple[ErrorCode, str] | None = None


class Application:
    """The model versions this worker serves, their batch queues and their statistics."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self.tag = f"worker[{config.name}]"
        self.residents = Residents(config.repository, self.device, self.tag)
        self.executors: dict[Key, Executor | Pipeline] = self.residents.executors
        self.batchers: dict[Key, Batcher] = self.residents.batchers
        self.stats: dict[Key, ModelStats] = defaultdict(ModelStats)
        # gateways' segments mapped here (page-locked on a GPU), dropped when their owner lets go
        self.segments = shm.Mappings(pinning=gpu.HostPinning() if self.device.type == "cuda" else None)
        self.sample_ns: dict[Key, float] = {}  # moving average of a batch's compute time per sample
        self.inline_ns = config.heartbeat_interval * INLINE_SHARE * 1e9
        # Batches in the compute threads at once: two on a GPU (one computes while the next copies in).
        self.depth = 2 if self.device.type == "cuda" else 1
        # Runs a request's preprocess; the worker's loop makes it keep its heartbeats going meanwhile.
        self.admit_hook: Callable[[Callable[[], Any]], Any] = lambda admit: admit()

    # -- life cycle -------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm up every model version; one that fails is logged and reported, the rest serve.

        Raise :class:`ConfigError` when the repository cannot be read, :class:`LoadError` when nothing loaded.
        """
        self.setup_thread()
        self.residents.load_all(list(self.config.models) or None)

    def setup_thread(self) -> None:
        """Apply ``--threads`` to the calling thread: OpenMP's thread count is per thread, so each compute
        thread needs it (unset, a new thread's pool took every core: a batch of digits took 7 ms, not 0.1).
        """
        if self.config.threads:  # on a GPU too: its CPU threads stage and launch, and must not spin
            torch.set_num_threads(self.config.threads)

    def control(self, action: str, model: str) -> protocol.WorkerControlReply:
        """Load (again) or unload one model; call only when nothing is queued or computing."""
        ok, error = self.residents.apply(action, model)
        return protocol.WorkerControlReply(action, model, ok, error)

    @property
    def capacity(self) -> int:
        if self.config.capacity:
            return self.config.capacity
        return max([2 * e.config.max_batch_size for e in self.executors.values()] + [2])

    def signatures(self) -> list[dict[str, Any]]:
        """What this worker announces of each version it serves: its signature, and the stamp of the files it
        was loaded from (gateways key the response cache on it)."""
        return [
            {**e.config.signature(version), "files": e.files} for (_, version), e in self.executors.items()
        ]

    def stats_wire(self) -> list[dict[str, Any]]:
        return [{"model": m, "version": v, **s.to_wire()} for (m, v), s in self.stats.items()]

    def device_memory(self) -> dict[str, int] | None:
        if self.device.type != "cuda":
            return None
        return {
            "used_bytes": torch.cuda.memory_allocated(self.device),
            "reserved_bytes": torch.cuda.memory_reserved(self.device),
        }

    @staticmethod
    def resident_bytes() -> int:
        """Return this process's resident memory (``/proc/self/statm``), or 0 where that cannot be read."""
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    # -- queueing ---------------------------------------------------------------------------------------

    def enqueue(self, message: protocol.ForwardedRequest) -> protocol.WorkerError | None:
        """Queue a request for its model version; return the error to answer at once if it cannot run."""
        key = (message.model, message.version)
        executor = self.executors.get(key)
        tensors, reply_area = message.inputs, None
        if message.shm is not None:  # the inputs are in the gateway's segment: view them there
            try:
                tensors, reply_area = shm.request_tensors(message.shm, self.segments)
            except shm.SegmentGone as exc:
                return self.fail(
                    message.seq, ErrorCode.UNAVAILABLE, f"{shm.REFUSED}{exc}", message.request_id
                )
            except ProtocolError as exc:
                text = f"malformed shared-memory reference: {exc}"
                return self.fail(message.seq, ErrorCode.INVALID_ARGUMENT, text, message.request_id)
        try:
            if executor is None:
                raise CodedError(
                    ErrorCode.NOT_FOUND, f"model {key[0]!r} version {key[1]!r} is not loaded here"
                )
            samples = check_inputs(executor.config, [meta for meta, _ in tensors])
            inputs: Any
            if isinstance(executor, Pipeline):  # a handler's preprocess, or padding: a 400 for this one alone
                pipeline, parameters = executor, message.parameters
                inputs = (
                    self.admit_hook(lambda: pipeline.admit(tensors, samples, parameters))
                    if pipeline.handler is not None  # a handler's code may take any time: heartbeats go on
                    else pipeline.admit(tensors, samples, parameters)
                )
                batch_key = executor.batch_key(inputs)
            else:
                by_name = {meta.name: to_torch(meta, buf) for meta, buf in tensors}
                inputs = executor.stage([by_name[spec.name] for spec in executor.config.inputs])
                batch_key = tuple((t.dtype, tuple(t.shape[1:])) for t in inputs)
        except CodedError as exc:
            code = ErrorCode(exc.code)
            if executor is not None:  # counted as Triton counts failed requests (a preprocess error, say)
                self.stats[key].failure[code.value] += 1
            return self.fail(message.seq, code, str(exc), message.request_id)
        self.batchers[key].add(
            Pending(
                seq=message.seq,
                model=key,
                batch_key=batch_key,
                samples=samples,
                arrived_ns=time.monotonic_ns(),
                deadline=message.deadline,
                payload=(inputs, message.outputs, reply_area, message.parameters),
                request_id=message.request_id,
                level=priority_level(
                    message.priority, executor.config.priority_levels, executor.config.default_priority_level
                ),
            )
        )
        return None

    def expire(self, now_unix: float) -> list[protocol.WorkerError]:
        """Take every request whose deadline has passed off the queues; return their answers."""
        errors = []
        for key, batcher in self.batchers.items():
            for item in batcher.expire(now_unix):
                self.stats[key].failure["deadline"] += 1
                text = "deadline passed before compute"
                errors.append(self.fail(item.seq, ErrorCode.DEADLINE_EXCEEDED, text, item.request_id))
        return errors

    def cancel(self, seq: int) -> protocol.WorkerError | None:
        """Take request ``seq`` off its queue, never to run (its client went away); return its answer, or
        None when it is not queued (computing already, or answered: it runs to its end)."""
        for key, batcher in self.batchers.items():
            item = batcher.withdraw(seq)
            if item is not None:
                self.stats[key].failure["cancelled"] += 1
                text = "its client went away before it ran"
                return self.fail(item.seq, ErrorCode.CANCELLED, text, item.request_id)
        return None

    def next_batch(self, number: int, now_ns: int, flush: bool = False) -> Batch | None:
        """Return the next batch due (every queued one when ``flush``), or None."""
        for key, batcher in self.batchers.items():
            items = batcher.next_batch(now_ns, flush=flush)
            if items is not None:
                return Batch(number, key, items)
        return None

    def next_wakeup_ns(self) -> int | None:
        due = [w for w in (b.next_wakeup_ns() for b in self.batchers.values()) if w is not None]
        return min(due) if due else None

    def queued(self) -> int:
        return sum(len(b) for b in self.batchers.values())

    def inline(self, batch: Batch) -> bool:
        """Whether to run ``batch`` on the calling (main) thread: a CPU batch known to take less than
        ``INLINE_SHARE`` of a heartbeat interval.

        On the CPU the main thread only waits while the compute thread runs a batch (it reads no requests
        then), so the two thread hand-offs and their GIL exchanges are pure cost (digits: c=1 +0.5 ms, 32 in
        flight 0.88x); with a 2 ms limit, batches of the MLP at 32 connections went to the compute thread on
        a loaded box. Anything longer, or not yet measured, goes to the compute threads so heartbeats flow.
        """
        per_sample = self.sample_ns.get(batch.key)
        return (
            self.depth == 1 and per_sample is not None and per_sample * max(1, batch.samples) < self.inline_ns
        )

    # -- computing (on the compute threads) --------------------------------------------------------------

    def launch(self, batch: Batch) -> Launch:
        """Start a batch (launcher thread); a request whose deadline has passed is left out, never run."""
        now = time.time()
        live = [item for item in batch.items if item.deadline > now]
        launch = Launch(
            [item for item in batch.items if item.deadline <= now], Run(live, time.monotonic_ns())
        )
        executor = self.executors[batch.key]
        if live and isinstance(executor, Executor):
            try:
                launch.handle = executor.launch([item.payload[0] for item in live], launch.run.times)
            except Exception as exc:  # the finisher runs the requests one by one
                launch.failed = exc
        return launch

    def finish(self, batch: Batch, launch: Launch) -> Outcome:
        """Wait for a launched batch (finisher thread); if it failed, run its requests one by one."""
        runs = [launch.run] if launch.run.items else []
        if runs:
            executor = self.executors[batch.key]
            try:
                if launch.failed is not None:
                    raise launch.failed
                results: list[Any] = (
                    executor.finish(launch.handle, launch.run.times)
                    if launch.handle is not None and isinstance(executor, Executor)
                    else executor.run([item.payload[0] for item in launch.run.items], launch.run.times)
                )
                launch.run.outputs = [
                    self._encode(executor, item, out)
                    for item, out in zip(launch.run.items, results, strict=True)
                ]
            except Exception as exc:
                launch.run.error = describe_failure(exc)
                self._after_failure(launch.run.error)
        if runs and runs[0].error is not None and len(runs[0].items) > 1:
            runs = self._one_by_one(batch, runs[0])
        elif runs and runs[0].error is not None:
            first = runs[0].items[0]
            log.error("%s: request %s failed: %s", self.tag, first.request_id or first.seq, runs[0].error[1])
        return Outcome(launch.expired, runs)

    def _after_failure(self, error: tuple[ErrorCode, str]) -> None:
        if self.device.type == "cuda" and error[0] is ErrorCode.RESOURCE_EXHAUSTED:
            torch.cuda.empty_cache()

    def _one_by_one(self, batch: Batch, failed: Run) -> list[Run]:
        assert failed.error is not None
        log.warning(
            "%s: batch of %d failed (%s); retrying one by one", self.tag, len(failed.items), failed.error[1]
        )
        runs = [self._run(batch.key, [item]) for item in failed.items]
        for run in runs:
            if run.error is not None:
                first = run.items[0]
                log.error("%s: request %s failed: %s", self.tag, first.request_id or first.seq, run.error[1])
        return runs

    def _run(self, key: Key, items: list[Pending]) -> Run:
        executor = self.executors[key]
        run = Run(items, time.monotonic_ns())
        try:
            results: list[Any] = executor.run([item.payload[0] for item in items], run.times)
        except Exception as exc:
            run.error = describe_failure(exc)
            if self.device.type == "cuda" and run.error[0] is ErrorCode.RESOURCE_EXHAUSTED:
                torch.cuda.empty_cache()
            return run
        run.outputs = [self._encode(executor, item, out) for item, out in zip(items, results, strict=True)]
        return run

    @staticmethod
    def _encode(
        executor: Executor | Pipeline, item: Pending, outputs: Any
    ) -> list[tuple[TensorMeta, Any]] | CodedError:
        wanted = item.payload[1]
        if isinstance(executor, Pipeline):
            try:  # a handler's postprocess: a failure fails this request alone
                tensors = executor.finish(outputs, item.payload[0], item.samples, item.payload[3])
            except CodedError as exc:
                return exc
            # this request's alone: raised here, it failed its whole batch (or, inline, killed the worker)
            except Exception as exc:
                return CodedError(*describe_failure(exc))
            return [t for t in tensors if not wanted or t[0].name in wanted]
        names = [spec.name for spec in executor.config.outputs]
        return [from_torch(n, t) for n, t in zip(names, outputs, strict=True) if not wanted or n in wanted]

    # -- answering (on the main thread) ------------------------------------------------------------------

    def answer(self, batch: Batch, outcome: Outcome) -> list[Answer]:
        """Count what became of a batch and return each answer, and whether to copy its frames (main
        thread)."""
        stats, cuda = self.stats[batch.key], self.executors[batch.key].cuda
        answers: list[Answer] = []
        for item in outcome.expired:  # its deadline passed while the batch waited for the one before it
            stats.failure["deadline"] += 1
            text = "deadline passed before compute"
            answers.append((self.fail(item.seq, ErrorCode.DEADLINE_EXCEEDED, text, item.request_id), False))
        for run in outcome.runs:
            if run.error is not None or run.outputs is None:
                code, text = run.error or (ErrorCode.INTERNAL, "the batch produced no outputs")
                stats.failure[code.value] += 1
                first = run.items[0]
                answers.append((self.fail(first.seq, code, text, first.request_id), False))
                continue
            t = run.times
            samples = sum(item.samples for item in run.items)
            if log.isEnabledFor(logging.DEBUG):  # log_verbose_level > 0 (Triton's logging extension)
                log.debug(
                    "%s: %s version %s: batch of %d requests, %d samples: input %.3f ms, infer %.3f ms, "
                    "output %.3f ms",
                    self.tag,
                    batch.key[0],
                    batch.key[1],
                    len(run.items),
                    samples,
                    t.input_ns / 1e6,
                    t.infer_ns / 1e6,
                    t.output_ns / 1e6,
                )
            stats.record_batch(samples, t.input_ns, t.infer_ns, t.output_ns)
            per_sample = (t.input_ns + t.infer_ns + t.output_ns) / max(1, samples)
            last = self.sample_ns.get(batch.key, per_sample)
            self.sample_ns[batch.key] = last + (per_sample - last) / 4
            for item, tensors in zip(run.items, run.outputs, strict=True):
                if isinstance(tensors, CodedError):
                    code = ErrorCode(tensors.code)
                    stats.failure[code.value] += 1
                    answers.append((self.fail(item.seq, code, str(tensors), item.request_id), False))
                    continue
                queue_ns = run.start_ns - item.arrived_ns
                stats.record_success(item.samples, queue_ns, t.input_ns, t.infer_ns, t.output_ns)
                reply_stats = {
                    "queue_ns": queue_ns,
                    "compute_input_ns": t.input_ns,
                    "compute_infer_ns": t.infer_ns,
                    "compute_output_ns": t.output_ns,
                    "batch_size": samples,
                    "queue_start_ns": item.arrived_ns,  # monotonic: a trace's timestamps (gateway/tracing.py)
                    "compute_start_ns": t.start_ns,
                }
                area: shm.ReplyArea | None = item.payload[2]
                try:
                    placed = area.place(tensors) if area is not None else None
                except shm.SegmentGone:  # the gateway gave up on it already: the answer goes in frames
                    placed = None
                reply = protocol.WorkerReply(item.seq, tensors if placed is None else [], reply_stats, placed)
                answers.append((reply, cuda))
        return answers

    def fail(self, seq: int, code: ErrorCode, message: str, request_id: str = "") -> protocol.WorkerError:
        """Return the ERROR for one request (logged unless it is a deadline)."""
        if code is not ErrorCode.DEADLINE_EXCEEDED:
            log.info("%s: request %s: %s %s", self.tag, request_id or seq, code.value, message)
        return protocol.WorkerError(seq, code, message)
