"""``torchgate check``: validate every config of a repository, then load and warm up each model in a
subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inference_worker.repository import ConfigError, ModelConfig, TensorSpec, scan_repository

LOAD_TIMEOUT = 600.0  # seconds one model's subprocess may take to load and warm up every version


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One model version (or a model whose config was refused: version None): OK or the error."""

    model: str
    version: str | None
    ok: bool
    seconds: float = 0.0
    error: str | None = None
    signature: str = ""
    loaded: bool = True  # False: --no-load, the config alone was checked

    def line(self) -> str:
        name = self.model if self.version is None else f"{self.model} version {self.version}"
        if self.ok and not self.loaded:
            return f"OK    {name}: config checked, not loaded (--no-load); {self.signature}"
        if self.ok:
            return f"OK    {name}: loaded and warmed up in {self.seconds:.2f}s; {self.signature}"
        return f"FAIL  {name}: {self.error}"


def describe_signature(model: ModelConfig) -> str:
    """Return ``input FP32 [-1, 64] -> output FP32 [-1, 10]`` for a model's config (``(optional)`` after an
    optional input)."""

    def tensors(specs: tuple[TensorSpec, ...]) -> str:
        return ", ".join(
            f"{s.name} {s.datatype} {s.full_shape(model.max_batch_size)}"
            + (" (optional)" if s.optional else "")
            for s in specs
        )

    return f"{tensors(model.inputs)} -> {tensors(model.outputs)} ({model.backend})"


def check_repository(
    root: Path,
    only: list[str] | None = None,
    device: str = "cpu",
    load: bool = True,
    report: Callable[[CheckResult], None] = lambda r: None,
    python: str = sys.executable,
    timeout: float = LOAD_TIMEOUT,
) -> list[CheckResult]:
    """Check each model's config and (``load``) load it in a subprocess; report each result as it comes."""
    results: list[CheckResult] = []

    def add(result: CheckResult) -> None:
        results.append(result)
        report(result)

    models, errors = scan_repository(root, only)
    for name in sorted(set(models) | set(errors)):
        if name in errors:
            add(CheckResult(name, None, False, error=str(errors[name])))
            continue
        model = models[name]
        if not load:
            add(CheckResult(name, None, True, signature=describe_signature(model), loaded=False))
            continue
        for result in _load_in_subprocess(model, device, python, timeout):
            add(result)
    return results


def _load_in_subprocess(model: ModelConfig, device: str, python: str, timeout: float) -> list[CheckResult]:
    command = [python, "-m", "inference_worker.check", str(model.path), "--device", device]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return [
            CheckResult(model.name, v, False, error=f"not loaded after {timeout:.0f}s")
            for v in sorted(model.versions, key=int)
        ]
    results = []
    for line in done.stdout.splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict) and raw.get("model") == model.name:
            results.append(
                CheckResult(
                    model.name,
                    raw.get("version"),
                    bool(raw.get("ok")),
                    float(raw.get("seconds") or 0.0),
                    raw.get("error"),
                    describe_signature(model),
                )
            )
    if not results:  # the subprocess died before it could say anything (a crash in native code, say)
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        results.append(
            CheckResult(
                model.name, None, False, error=f"the loading process exited with {done.returncode}: {tail}"
            )
        )
    return results


def check_configs(root: Path, only: list[str] | None = None) -> dict[str, ModelConfig]:
    """Return every model's config, or raise one :class:`ConfigError` listing each refused one."""
    models, errors = scan_repository(root, only)
    if errors:
        raise ConfigError("\n".join(str(errors[name]) for name in sorted(errors)))
    return models
