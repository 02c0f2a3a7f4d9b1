"""The model versions one worker holds: each loaded on its own, so one that fails leaves the others serving.

A failure (a bad config, a missing package, a broken file, a warm-up error) is logged and kept in
:attr:`Residents.failures`, which the worker sends in READY so the dispatcher can say why a model is not
served. Model control reloads or drops one model; a reload that fails keeps the versions the worker had, as
Triton does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from inference_worker.backends import LoadError, load_model
from inference_worker.batching import Batcher
from inference_worker.compute import Executor
from inference_worker.pipeline import Pipeline, needs_pipeline
from inference_worker.repository import (
    ConfigError,
    ModelConfig,
    files_stamp,
    load_model_config,
    scan_repository,
)

log = logging.getLogger("torchgate.worker")

LOAD, UNLOAD = "load", "unload"

Resident = Executor | Pipeline


class Residents:
    """Loaded model versions and their batch queues, keyed by (model, version), and what could not load."""

    def __init__(self, repository: Path, device: torch.device, tag: str) -> None:
        self.repository, self.device, self.tag = repository, device, tag
        self.executors: dict[tuple[str, str], Resident] = {}
        self.batchers: dict[tuple[str, str], Batcher] = {}
        self.failures: list[dict[str, Any]] = []  # {model, version (None: every version), reason}

    def load_all(self, only: list[str] | None) -> None:
        """Load every model of the repository (or ``only`` those); raise :class:`LoadError` if none loaded.

        A repository that cannot be read at all raises :class:`ConfigError`.
        """
        models, errors = scan_repository(self.repository, only)
        for name, error in errors.items():
            log.error("%s: cannot load %s: %s", self.tag, name, error)
            self.failures.append({"model": name, "version": None, "reason": str(error)})
        for model in models.values():
            loaded, failures = self.load_versions(model)
            self.install(model.name, loaded)
            self.failures.extend(failures)
        if not self.executors:
            raise LoadError("; ".join(f["reason"] for f in self.failures) or "no model to load")

    def load_versions(self, model: ModelConfig) -> tuple[dict[str, Resident], list[dict[str, Any]]]:
        """Load and warm up each version of ``model``; return those that loaded and a failure per other
        one."""
        loaded: dict[str, Resident] = {}
        failures: list[dict[str, Any]] = []
        for version in sorted(model.versions, key=int):
            start = time.monotonic()
            log.info("%s: loading %s version %s on %s", self.tag, model.name, version, self.device)
            files = files_stamp(model, version)  # before they are read: an edit meanwhile shows next time
            try:
                resident: Resident = (
                    Pipeline(model, version, self.device)
                    if needs_pipeline(model)
                    else Executor(model, version, load_model(model, version, self.device), self.device)
                )
                resident.warm_up()
                resident.files = files
            # LoadError names the model; anything else is still this model's fault, SystemExit included (its
            # code called sys.exit(): the worker, and every other model it serves, carry on)
            except (Exception, SystemExit) as exc:
                reason = str(exc) if isinstance(exc, LoadError) else f"{type(exc).__name__}: {exc}"
                log.error("%s: cannot load %s version %s: %s", self.tag, model.name, version, reason)
                failures.append({"model": model.name, "version": version, "reason": reason})
                continue
            loaded[version] = resident
            log.info(
                "%s: loaded %s version %s on %s in %.2fs",
                self.tag,
                model.name,
                version,
                self.device,
                time.monotonic() - start,
            )
        return loaded, failures

    def install(self, name: str, loaded: dict[str, Resident]) -> None:
        """Serve exactly the versions in ``loaded`` of model ``name`` (none: drop the model)."""
        for key in [k for k in self.executors if k[0] == name]:
            del self.executors[key]
            del self.batchers[key]
        for version, resident in loaded.items():
            model = resident.config
            self.executors[(name, version)] = resident
            self.batchers[(name, version)] = Batcher(
                model.max_batch_size, model.max_queue_delay_us, model.preferred_batch_sizes
            )

    def holds(self, name: str) -> bool:
        return any(key[0] == name for key in self.executors)

    def apply(self, action: str, name: str) -> tuple[bool, str]:
        """Load ``name`` again from disk, or drop it; return (ok, why not). Run only what is queued first."""
        if action == UNLOAD:
            self.install(name, {})
            self._forget_failures(name)
            log.info("%s: unloaded %s", self.tag, name)
            return True, ""
        if action != LOAD:
            return False, f"unknown action {action!r}"
        loaded: dict[str, Resident]
        failures: list[dict[str, Any]]
        try:
            model = load_model_config(self.repository / name)
        except ConfigError as exc:
            log.error("%s: cannot load %s: %s", self.tag, name, exc)
            loaded, failures = {}, [{"model": name, "version": None, "reason": str(exc)}]
        else:
            loaded, failures = self.load_versions(model)
        if failures:  # keep serving what it had
            if not self.holds(name):
                self._forget_failures(name)
                self.failures.extend(failures)
            return False, "; ".join(f["reason"] for f in failures)
        self.install(name, loaded)
        self._forget_failures(name)
        return True, ""

    def _forget_failures(self, name: str) -> None:
        self.failures = [f for f in self.failures if f["model"] != name]
