"""The model signatures the gateway validates against, read from the model repository (no torch).

The repository is read once at start-up, again on ``POST /v2/repository/index``, and, at most once per
``rescan_interval``, when a request names a model or version that is not known yet.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from gateway.errors import InvalidArgument, NotFound
from inference_worker.repository import ConfigError, ModelConfig, scan_repository

log = logging.getLogger("torchgate.gateway")


class ModelCatalog:
    """The current model configurations; lookups are lock-free, re-scans are serialized and rate-limited."""

    def __init__(self, root: str | Path, rescan_interval: float = 2.0, only: list[str] | None = None) -> None:
        self.root = Path(root)
        self.rescan_interval = rescan_interval
        self.served = only or None  # the models the workers serve; None: every model in the repository
        self.models: dict[str, ModelConfig] = {}
        self.error: str | None = None
        self.errors: dict[str, ConfigError] = {}  # models whose config.toml is refused now, and why
        self._lock = threading.Lock()
        self._last_scan = float("-inf")
        self.rescan()

    def rescan(self) -> dict[str, ModelConfig]:
        """Read the repository again; keep the previous models if it cannot be read, and the previous config
        of a model whose config.toml is refused now (its workers still serve that one)."""
        with self._lock:
            self._last_scan = time.monotonic()
            try:
                models, errors = scan_repository(self.root, self.served)
            except ConfigError as exc:
                self.error = str(exc)
                log.warning("gateway: model repository %s: %s", self.root, exc)
                return self.models
            for name, error in errors.items():
                if name not in self.errors:
                    log.warning("gateway: model %s: %s", name, error)
                if name in self.models:
                    models[name] = self.models[name]
            self.error, self.errors = None, errors
            if set(models) != set(self.models):
                log.info("gateway: models in %s: %s", self.root, ", ".join(sorted(models)) or "none")
            self.models = models  # one reference swap: readers see the old or the new dict, never half
            return models

    def _maybe_rescan(self) -> None:
        if time.monotonic() - self._last_scan >= self.rescan_interval:
            self.rescan()

    def get(self, name: str, version: str | None = None) -> tuple[ModelConfig, str]:
        """Return a model and the version a request runs on (its default if none is named); 404 if unknown."""
        version = _normalize(version)
        model = self.models.get(name)
        if model is None or (version is not None and version not in model.versions):
            self._maybe_rescan()
            model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}")
        if version is None:
            return model, model.default_version
        if version not in model.versions:
            raise NotFound(
                f"unknown version {version!r} of model {name!r}; it has versions "
                + ", ".join(sorted(model.versions, key=int))
            )
        return model, version

    def target(self, name: str, version: str | None) -> tuple[str, str] | None:
        """Return the model and version a request named, or None for an unknown one: what a request that
        failed before it was routed is counted under (an unknown model has no series, as in Triton)."""
        try:
            model, resolved = self.get(name, version)
        except NotFound:
            return None
        return model.name, resolved

    def only(self) -> ModelConfig:
        """Return the single model of the repository, or raise if there is not exactly one."""
        models = self.models
        if len(models) != 1:
            raise InvalidArgument(
                f'name a "model": the server has {len(models)} models (' + ", ".join(sorted(models)) + ")"
            )
        return next(iter(models.values()))


def _normalize(version: str | None) -> str | None:
    """Return a version folder name as the repository keys it ("01" -> "1"); None or "" for the default."""
    if version is None or version == "":
        return None
    if not (version.isascii() and version.isdigit()) or int(version) <= 0:
        raise NotFound(f"unknown version {version!r}: versions are positive integers")
    return str(int(version))
