"""The benchmark's settings: one frozen object, the same threads and batching for every system that has
them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"  # git-ignored: exported models, model stores, run dirs, wrk scripts, logs
DOCS_DIR = REPO_ROOT / "docs"

CONCURRENCIES = (1, 8, 32, 128)


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """What every system gets: HTTP processes x threads, model workers, torch threads, batching, load."""

    http_processes: int = (
        1  # gunicorn processes (torchgate gateway, seed app, empty app); LitServe api servers
    )
    http_threads: int = 32  # gthread threads per gunicorn process (torchgate's default gateway setting)
    model_workers: int = (
        2  # model-holding processes: torchgate CPU workers, TorchServe workers, LitServe workers
    )
    torch_threads: int = 1  # torch intra-op threads per model worker (2 cores / 2 workers)
    seed_torch_threads: int = 2  # the seed app holds the model in its single process: it gets both cores
    # The seed app's own gunicorn size when not the Flask systems' (say 2 x 8, as a user runs it); None: the
    # same
    seed_http_processes: int | None = None
    seed_http_threads: int | None = None
    # torchgate sized by `torchgate serve` itself (its defaults on this machine), not by the sizes above
    torchgate_defaults: bool = False
    gateway_processes: int | None = None  # torchgate's gunicorn processes when not http_processes
    max_batch_size: dict[str, int] = field(default_factory=lambda: {"mlp": 32, "minilm": 16, "conv": 4})
    max_batch_delay_ms: float = (
        1.0  # TorchServe maxBatchDelay, LitServe batch_timeout, torchgate max_queue_delay_us
    )
    queue_size: int = 1024  # TorchServe job_queue_size, torchgate max_queue_size
    concurrencies: tuple[int, ...] = CONCURRENCIES
    duration_s: float = 5.0  # one wrk run on workload (a); the others run longer (duration_factor)
    duration_factor: dict[str, float] = field(
        default_factory=lambda: {"mlp": 1.0, "minilm": 2.0, "conv": 2.0}
    )
    idle_timeout_s: float = 90.0  # after a run, wait (bounded) until the system has served its backlog
    warmup_s: float = 2.0  # one wrk run per system and format before any measured run
    rounds: int = (
        2  # every (concurrency, format, system) is measured this many times, interleaved; median kept
    )
    raw_duration_s: float = 5.0
    request_timeout_s: float = 60.0  # wrk --timeout: a slower answer counts as a timeout error
    ready_timeout_s: float = 240.0  # a system that is not ready by then is reported as failed
    quick: bool = False
    work_dir: Path = WORK_DIR

    def batch_size(self, workload: str) -> int:
        return self.max_batch_size[workload]

    def duration(self, workload: str) -> float:
        """Seconds per wrk run: slow workloads run longer so that every connection sees several answers."""
        return self.duration_s * self.duration_factor.get(workload, 1.0)

    @classmethod
    def quick_mode(cls) -> BenchSettings:
        """One short round at concurrency 1 and 32 (what the targets need): a few minutes in all."""
        return replace(
            cls(),
            concurrencies=(1, 32),
            duration_s=2.0,
            warmup_s=1.0,
            rounds=1,
            raw_duration_s=2.0,
            quick=True,
        )
