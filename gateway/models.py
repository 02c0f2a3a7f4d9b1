"""The model signatures the gateway validates against, read from the model repository (no torch).

The repository is read once at start-up, again on ``POST /v2/repository/index`` and before a load, and, at
most once per ``rescan_interval``, when a request names a model or version that is not known yet; those reads
add new models and drop models gone from disk that no worker serves (a model whose folder is removed is served
until it is unloaded, as in Triton). A known model's config changes once workers serve another one:
each worker announces the config text it loaded, config.toml or Triton's config.pbtxt (in its signatures,
which the dispatcher's status carries), and the catalog reads that text. So every gateway process and the
gRPC front validate against the config the workers run, whichever of them asked for a load, never against an
edit not loaded yet (or whose load failed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import InvalidArgument, NotFound
from inference_worker.protocol import StatusReply
from inference_worker.repository import (
    ConfigError,
    ModelConfig,
    has_config,
    load_model_config,
    scan_repository,
)

log = logging.getLogger("torchgate.gateway")

Served = Callable[[float | None], "StatusReply | None"]
"""Return the dispatcher's status (what the workers serve: ``models``, name -> version -> ``signature``...;
what they failed to load: ``unavailable``), at most ``max_age`` seconds old (None: the usual age); None when
the dispatcher does not answer."""


class ModelCatalog:
    """The current model configurations; lookups are lock-free, re-reads are serialized and rate-limited.

    ``served`` tells what the workers serve; without it (a catalog alone, in tests), every re-scan reads
    known models again too.
    """

    def __init__(
        self,
        root: str | Path,
        rescan_interval: float = 2.0,
        only: list[str] | None = None,
        served: Served | None = None,
    ) -> None:
        self.root = Path(root)
        self.rescan_interval = rescan_interval
        self.names = only or None  # the models the workers serve; None: every model in the repository
        self.models: dict[str, ModelConfig] = {}
        self.error: str | None = None
        self.errors: dict[str, ConfigError] = {}  # models whose config is refused now, and why
        self._served = served
        self._followed: StatusReply | None = None  # the status last compared with
        self._tried: dict[str, tuple[str, frozenset[str]]] = {}  # model -> the served config and versions
        self._lock = threading.Lock()
        self._last_scan = float("-inf")
        self.rescan()

    def rescan(self) -> dict[str, ModelConfig]:
        """Read the repository again: add new models, drop those gone. Keep the previous models if it cannot
        be read, the previous config of a model whose config.toml is refused now (its workers still serve
        that one), and, when what workers serve is followed, the config of every known model (what they
        loaded: an edit counts once they have loaded it, :meth:`follow`), its folder gone or not while they
        serve it (as Triton serves a loaded model until it is unloaded)."""
        with self._lock:
            self._last_scan = time.monotonic()
            try:
                models, errors = scan_repository(self.root, self.names)
            except ConfigError as exc:
                self.error = str(exc)
                log.warning("gateway: model repository %s: %s", self.root, exc)
                return self.models
            for name, error in errors.items():
                if name not in self.errors:
                    log.warning("gateway: model %s: %s", name, error)
            for name, model in self.models.items():
                if name in errors or (self._served is not None and (name in models or self._serving(name))):
                    models[name] = model
            self.error, self.errors = None, errors
            if set(models) != set(self.models):
                log.info("gateway: models in %s: %s", self.root, ", ".join(sorted(models)) or "none")
            self.models = models  # one reference swap: readers see the old or the new dict, never half
            return models

    def check(self, name: str) -> None:
        """Raise :class:`InvalidArgument` if model ``name``'s config.toml on disk is refused now (before it
        is loaded); adopt nothing: what workers load is read by :meth:`follow` once they serve it."""
        self.rescan()  # a model added since is known from now on; one refused now is in errors
        if name in self.errors:
            raise InvalidArgument(f"cannot load model {name!r}: {self.errors[name]}")

    def follow(self, max_age: float | None = None) -> bool:
        """Read each model whose workers serve a config, or versions, other than this catalog's: from the
        config text they loaded, with the versions they serve or failed to load (whatever the folder holds
        now), as a status at most ``max_age`` seconds old says; drop a model no longer served whose folder
        is gone; return whether any was read or dropped."""
        status = self._served(max_age) if self._served is not None else None
        if status is None or status is self._followed:  # the same status as last time: nothing new
            return False
        with self._lock:  # callers with the same status wait here for its reading, then find it read
            if status is self._followed:
                return False
            changed: dict[str, tuple[str, frozenset[str]]] = {}
            for name in status.models:
                served = status.signatures(name)
                text = next(
                    (t for sig in served.values() if isinstance(t := sig.get("config"), str) and t), None
                )
                if text is None or (self.names and name not in self.names):
                    continue  # its folder may be gone: what the workers loaded is read all the same
                versions = frozenset(v for v in served if _is_version(v)) | _failed_versions(status, name)
                known = self.models.get(name)
                if known is not None and known.source == text and set(known.versions) == versions:
                    continue
                if self._tried.get(name) != (text, versions):  # once: this host may refuse the text
                    changed[name] = self._tried[name] = (text, versions)
            before = self._followed
            dropped = [  # unloaded, or their workers gone, with their folder removed: gone from every front
                name
                for name in self.models
                if name not in status.models
                and before is not None
                and name in before.models
                and not has_config(self.root / name)
            ]
            if not changed and not dropped:
                self._followed = status
                return False
            models, errors, read = dict(self.models), dict(self.errors), bool(dropped)
            for name in dropped:
                del models[name]
                log.info("gateway: model %s: no longer served, and its folder is gone; dropped", name)
            for name, (text, versions) in sorted(changed.items()):
                try:
                    models[name] = load_model_config(self.root / name, text, versions)
                except ConfigError as exc:
                    log.warning("gateway: model %s: the config its workers loaded is refused: %s", name, exc)
                    continue
                errors.pop(name, None)
                read = True
                log.info("gateway: model %s: its workers serve a new config or versions; read", name)
            self.models, self.errors = models, errors  # reference swaps, as in rescan
            self._followed = status  # last: whoever finds this status followed finds its models read
            return read

    def _serving(self, name: str) -> bool:
        """Whether workers served model ``name`` in the status last followed."""
        followed = self._followed
        return followed is not None and name in followed.models

    def _maybe_rescan(self) -> None:
        if time.monotonic() - self._last_scan >= self.rescan_interval:
            self.rescan()

    def get(
        self, name: str, version: str | None = None, max_age: float | None = None
    ) -> tuple[ModelConfig, str]:
        """Return a model and the version a request runs on (its default if none is named); 404 if unknown.

        A model whose workers serve another config is read again first, as a status at most ``max_age``
        seconds old says (None: the client's ``status_ttl``)."""
        self.follow(max_age)
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
    if not (version.isascii() and version.isdigit()) or len(version.lstrip("0")) > 32 or int(version) <= 0:
        raise NotFound(f"unknown version {version!r}: versions are positive integers")
    return str(int(version))


def _failed_versions(status: StatusReply, name: str) -> frozenset[str]:
    """Return the versions of model ``name`` some worker failed to load (they are listed, unavailable)."""
    return frozenset(
        entry["version"]
        for entry in status.unavailable
        if isinstance(entry, dict) and entry.get("model") == name and _is_version(entry.get("version"))
    )


def _is_version(version: Any) -> bool:
    return isinstance(version, str) and version.isascii() and version.isdigit() and int(version) > 0
