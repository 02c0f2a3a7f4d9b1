"""What each endpoint does, apart from HTTP: parse, validate, ask the dispatcher, build the answer."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial, wraps
from typing import Any, Concatenate, ParamSpec, TypeVar

from gateway import afterwork, generate, kserve_v1, torchserve, torchserve_management, trace_settings
from gateway.classification import top_classes
from gateway.client import BodyLease, DispatcherClient, InferReply
from gateway.client_shm import ClientRegions
from gateway.codec import (
    Body,
    InferRequest,
    Placement,
    RegionSlice,
    Tensor,
    decode_content,
    dumps,
    handler_parameters,
    header_length_value,
    infer_response,
    loads,
    parse_infer_request,
)
from gateway.config import GatewayConfig
from gateway.errors import Conflict, Forbidden, InvalidArgument, NotFound, Unavailable
from gateway.metrics import request_metrics
from gateway.models import ModelCatalog
from gateway.predict import output_values, predict_input, predict_output
from gateway.response_cache import ResponseCache
from gateway.trace import RequestTrace
from gateway.tracing import Tracing
from gateway.triton import model_stats, repository_index, server_ready, unavailable_reason
from gateway.validation import bytes_input, check_inputs, output_plan, raw_input, sole_input
from inference_worker import log_settings, shm
from inference_worker.errors import CodedError
from inference_worker.protocol import BYTES, ErrorCode, Parameters, StatusReply
from inference_worker.repository import ModelConfig
from inference_worker.shm import fixed_nbytes
from inference_worker.strings import StringLimits

P = ParamSpec("P")
R = TypeVar("R")
LARGE_BODY = 64 << 10  # JSON bytes past which parsing goes through Gateway.parsing (large_parses at once)
_UNBOUNDED: AbstractContextManager[None] = nullcontext()  # reusable: it holds nothing

log = logging.getLogger("torchgate.gateway")


def rechecked(method: Callable[Concatenate[Gateway, P], R]) -> Callable[Concatenate[Gateway, P], R]:
    """Run a request method of :class:`Gateway` (one taking the request's trace) through
    :meth:`Gateway.rechecking`."""

    @wraps(method)
    def run(gateway: Gateway, /, *args: P.args, **kwargs: P.kwargs) -> R:
        trace = next(a for a in (*args, *kwargs.values()) if isinstance(a, RequestTrace))
        return gateway.rechecking(trace, lambda: method(gateway, *args, **kwargs))

    return run


class Gateway:
    """One gateway process's state: the model catalog, the dispatcher client and the settings."""

    def __init__(
        self,
        config: GatewayConfig,
        client: DispatcherClient | None = None,
        catalog: ModelCatalog | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog or ModelCatalog(
            config.model_repository, config.rescan_interval, config.model_names, self.status_or_none
        )
        self.client = client or DispatcherClient(
            config.dispatcher,
            status_ttl=config.status_ttl,
            status_timeout=config.status_timeout,
            poll_interval=config.poll_interval,
            unresponsive_after=config.unresponsive_after,
            idle=afterwork.run_pending,
        )
        self.limits = StringLimits(config.max_bytes_elements, config.max_bytes_element_size)
        self.regions = ClientRegions(config.client_shm_dir or None)
        self.tracing = Tracing(config.trace_dir) if config.trace_dir else None
        self.cache = ResponseCache(config.response_cache_bytes) if config.response_cache_bytes else None
        log_settings.watch(config.log_settings or None)
        self._large_parses = threading.BoundedSemaphore(config.large_parses)

    def rechecking(self, trace: RequestTrace, run: Callable[[], R]) -> R:
        """Return ``run()``, run once more when the gateway itself refused the request (400 or 404, before
        any worker saw it: ``trace`` has not begun) and, by a fresh status, the workers serve a config this
        process had not read yet: say, a load another gateway process, or the gRPC front, answered a moment
        ago. The request is then checked against the config the workers now run."""
        models = self.catalog.models
        try:
            return run()
        except (InvalidArgument, NotFound):
            if trace.model:
                raise
            self.catalog.follow(max_age=0)
            if self.catalog.models is models:  # read again meanwhile (by this request or another): rerun
                raise
        return run()

    def parsing(self, size: int) -> AbstractContextManager[None]:
        """Bound how many bodies over ``LARGE_BODY`` are parsed at once (the objects they build, in
        memory)."""
        return _UNBOUNDED if size <= LARGE_BODY else self._large_parse()

    @contextmanager
    def _large_parse(self) -> Iterator[None]:
        if not self._large_parses.acquire(timeout=self.config.default_timeout):
            raise Unavailable(
                f"{self.config.large_parses} large request bodies are being parsed; retry later"
            )
        try:
            yield
        finally:
            self._large_parses.release()

    def deadline(self, timeout_us: int | None) -> float:
        """Return the unix time a request must be answered by: its timeout, bounded by ``max_timeout``."""
        timeout = (  # compared as integers: a huge timeout_us must not overflow a float
            self.config.default_timeout
            if not timeout_us
            else min(timeout_us, int(self.config.max_timeout * 1e6)) / 1e6
        )
        return time.time() + timeout

    @rechecked
    def infer(
        self,
        model_name: str,
        version: str | None,
        body: bytes | bytearray | memoryview,  # memoryview: in a segment
        trace: RequestTrace,
        *,
        content_encoding: str | None = None,
        header_length: str | None = None,
    ) -> Body:
        """Answer ``POST /v2/models/{m}[/versions/{v}]/infer``; ``trace`` learns the request's id and
        reply."""
        model, resolved = self.catalog.get(model_name, version)
        body = decode_content(body, content_encoding, self.config.max_body_bytes)
        given = header_length_value(header_length)
        json_bytes = len(body) if given is None else given
        with self.parsing(min(json_bytes, len(body))):  # binary tensor data builds no objects
            request = parse_infer_request(
                body, header_length, trace.header_id, self.limits, self.config.max_json_values
            )
        with self.regions_read(request, model):
            inputs = (
                [raw_input(request, model, self.limits)]
                if request.raw is not None
                else check_inputs(request, model, self.limits)
            )
            answered, outputs = self.run_infer(model, resolved, bool(version), request, inputs, trace)
        return infer_response(model.name, answered, request.id, outputs)

    @rechecked
    def generate(
        self,
        model_name: str,
        version: str | None,
        body: bytes,
        trace: RequestTrace,
        *,
        content_encoding: str | None = None,
    ) -> dict[str, Any]:
        """Answer Triton's generate extension (:mod:`gateway.generate`): the flat request read as the infer
        request it stands for, checked and run as one; its answer flat too."""
        model, resolved = self.catalog.get(model_name, version)
        body = decode_content(body, content_encoding, self.config.max_body_bytes)
        with self.parsing(len(body)):
            document = generate.infer_document(loads(body, self.config.max_json_values), model)
            request = parse_infer_request(
                dumps(document), None, trace.header_id, self.limits, self.config.max_json_values
            )
        inputs = check_inputs(request, model, self.limits)
        answered, outputs = self.run_infer(model, resolved, bool(version), request, inputs, trace)
        return generate.response(model.name, answered, [tensor for tensor, _ in outputs])

    @contextmanager
    def regions_read(self, request: InferRequest, model: ModelConfig) -> Iterator[None]:
        """Within it, the inputs a client left in its shared-memory regions are in the request (see
        :meth:`read_regions`); the segment they were copied into is given back when it ends, unless the
        request took it over."""
        lease = self.read_regions(request, model)
        try:
            yield
        finally:
            if lease is not None:
                self.client.release_body(lease)

    def read_regions(self, request: InferRequest, model: ModelConfig) -> BodyLease | None:
        """Fill in the inputs a client left in its shared-memory regions (:mod:`gateway.client_shm`): at
        most ``max_body_bytes`` in all, as a body. Large numeric ones are copied straight into a segment
        they then travel in (as a binary body is received into one, gateway/body.py): return its lease,
        which :meth:`DispatcherClient.release_body` gives back once the request is answered."""
        if not request.in_regions:
            return None
        room, lease, at = self.config.max_body_bytes, None, {}
        wanted = [(i, w) for i, w in request.in_regions.items() if request.inputs[i].datatype != BYTES]
        end = 0
        for index, where in wanted:  # each 64-byte aligned, as the worker maps them
            at[index], end = end, end + -(-where.byte_size // 64) * 64
        if shm.MIN_BYTES <= end <= room:
            lease = self.client.lease_body(end, 0, reply_room(model, end))
        try:
            for index, where in request.in_regions.items():
                given = request.inputs[index]
                into = lease.view[at[index] : at[index] + where.byte_size] if lease and index in at else None
                data = self.regions.read(where, room, f"input {given.name!r}", into)
                room -= len(data)
                request.inputs[index] = Tensor(given.name, given.datatype, given.shape, data)
        except BaseException:
            if lease is not None:
                self.client.release_body(lease)
            raise
        return lease

    def begin(
        self,
        trace: RequestTrace,
        model: ModelConfig,
        version: str,
        tensors: list[Tensor],
        body_id: str | None = None,
    ) -> None:
        """Name the request's model version and batch in its ``trace``; choose whether it is traced."""
        trace.begin(model, version, tensors, body_id)
        if log.isEnabledFor(logging.DEBUG):  # log_verbose_level > 0 (Triton's logging extension)
            shapes = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)
            log.debug(
                "gateway: request %s to %s version %s: %s", trace.request_id, model.name, version, shapes
            )
        if self.tracing is not None and (trace_id := self.tracing.sample(model.name)):
            trace.start_timeline(trace_id)

    def run_infer(
        self,
        model: ModelConfig,
        resolved: str,
        pinned: bool,
        request: InferRequest,
        inputs: list[Tensor],
        trace: RequestTrace,
    ) -> tuple[str | None, list[tuple[Tensor, Placement]]]:
        """Run a parsed infer request whose ``inputs`` fit ``model`` (version ``resolved``, asked for by the
        client when ``pinned``); return the version that ran and each output with how it goes back: as
        binary data or not, or the client's shared-memory region it was written to. Shared by every
        transport of the protocol (HTTP here, :mod:`gateway.grpc_server`)."""
        plan = output_plan(request, model)
        self.begin(trace, model, resolved, inputs, request.id)
        names = [p.name for p in plan]
        # outputs for a client's regions go there straight from the segment they come back in
        sinks: dict[str, Callable[[memoryview], memoryview]] = {}
        written: set[str] = set()
        for planned in plan:
            if planned.region is not None:
                sinks[planned.name] = partial(self._into_region, planned.name, planned.region, written)
        reply = self.call(
            model,
            resolved,
            resolved if pinned else None,
            inputs,
            names if request.outputs else [],
            self.deadline(request.timeout_us),
            trace,
            request.priority,
            reply_bytes=reply_bytes(model, inputs),
            parameters=request.parameters,
            sinks=sinks,
        )
        trace.finish(reply.version, reply.worker, reply.stats)
        answers: list[tuple[Tensor, Placement]] = []
        for tensor, planned in zip(_pick(reply, names), plan, strict=True):
            if planned.region is not None:
                if tensor.name not in written:  # it came in frames
                    self.regions.write(planned.region, tensor.data, f"output {tensor.name!r}")
                answers.append((tensor, planned.region))
            elif planned.classes:
                answers.append((self._classes(tensor, planned.classes, model), planned.binary))
            else:
                answers.append((tensor, planned.binary))
        return reply.version or None, answers

    def call(
        self,
        model: ModelConfig,
        resolved: str,
        asked: str | None,
        inputs: list[Tensor],
        outputs: list[str],
        deadline: float,
        trace: RequestTrace,
        priority: int = 0,
        *,
        reply_bytes: int = 0,
        parameters: Parameters | None = None,
        sinks: dict[str, Callable[[memoryview], memoryview]] | None = None,
    ) -> InferReply:
        """Run a request of ``model`` (version ``asked``, None: the default, which is ``resolved``) on a
        worker, or answer it from the response cache when the model enables one and the server has one;
        withdraw it if its client goes away meanwhile (``trace.gone``)."""
        cache = self.cache if model.response_cache else None
        began = time.perf_counter() if cache is not None else 0.0
        # what tells the files the workers loaded this version from from earlier ones (as they announced it):
        # none known, no answer is told from an old one's
        files = self._served_files(model.name, resolved) if cache is not None else None
        if cache is None or files is None:
            return self.client.infer(
                model.name,
                asked,
                inputs,
                outputs,
                deadline,
                trace.request_id,
                priority,
                reply_bytes=reply_bytes,
                parameters=parameters,
                sinks=sinks,
                gone=trace.gone,
            )
        key = ResponseCache.key(model.name, f"{resolved}:{files}", inputs, parameters or {})
        kept = cache.get(key)
        if kept is not None:
            request_metrics().observe_cache(model.name, resolved, True, time.perf_counter() - began)
            return InferReply(model.name, resolved, "cache", kept, {})
        looked = time.perf_counter() - began
        # every output, and none written into a client's region on the way: the answer is kept whole; run on
        # the version the key names, whatever the dispatcher's default is by now
        reply = self.client.infer(
            model.name,
            resolved,
            inputs,
            [],
            deadline,
            trace.request_id,
            priority,
            reply_bytes=reply_bytes,
            parameters=parameters,
            gone=trace.gone,
        )
        began = time.perf_counter()
        if reply.version in ("", resolved):
            cache.put(key, reply.outputs)
        request_metrics().observe_cache(model.name, resolved, False, looked + time.perf_counter() - began)
        return reply

    def _served_files(self, model: str, version: str) -> str | None:
        """Return the stamp of the files the workers loaded ``model`` ``version`` from, by the dispatcher's
        status (:func:`inference_worker.repository.files_stamp`); None when it is not known."""
        status = self.status_or_none()
        files = status.signatures(model).get(version, {}).get("files") if status is not None else None
        return files if isinstance(files, str) and files else None

    def _into_region(self, name: str, where: RegionSlice, written: set[str], data: memoryview) -> memoryview:
        """Write an output into the client's region it is asked in; note it ``written``."""
        placed = self.regions.write(where, data, f"output {name!r}")
        written.add(name)
        return placed

    def _classes(self, tensor: Tensor, count: int, model: ModelConfig) -> Tensor:
        """Return an output's top ``count`` classes (Triton's classification extension), with its labels."""
        labels = next((spec.labels for spec in model.outputs if spec.name == tensor.name), ())
        return top_classes(tensor, count, model.max_batch_size > 0, labels, self.limits.max_elements)

    @rechecked
    def predict(
        self, body: bytes, trace: RequestTrace, *, content_encoding: str | None = None
    ) -> dict[str, Any]:
        """Answer the seed's ``POST /predict``: ``{"input": ...}`` -> ``{"output": ...}``."""
        body = decode_content(body, content_encoding, self.config.max_body_bytes)
        with self.parsing(len(body)):
            doc = loads(body, self.config.max_json_values)
        if not isinstance(doc, dict) or "input" not in doc:
            raise InvalidArgument('the body must be a JSON object with an "input" field')
        name, version = doc.get("model"), doc.get("version")
        if name is not None and not isinstance(name, str):
            raise InvalidArgument('"model" must be a string')
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if version is not None and not isinstance(version, str):
            raise InvalidArgument('"version" must be a string or an integer')
        raw_parameters = doc.get("parameters", {})
        if not isinstance(raw_parameters, dict):
            raise InvalidArgument('"parameters" must be a JSON object')
        parameters = handler_parameters(raw_parameters)
        model = self.catalog.get(name)[0] if name is not None else self.catalog.only()
        resolved = self.catalog.get(model.name, version)[1] if version else None
        with self.parsing(len(body)):
            tensor, whole = predict_input(doc["input"], model, self.limits)
        running = resolved or self.catalog.get(model.name)[1]
        self.begin(trace, model, running, [tensor])
        reply = self.call(
            model,
            running,
            resolved,
            [tensor],
            [],
            self.deadline(None),
            trace,
            parameters=parameters,
        )
        trace.finish(reply.version, reply.worker, reply.stats)
        return predict_output(_pick(reply, [s.name for s in model.outputs]), model, whole)

    @rechecked
    def v1_predict(
        self, model_name: str, body: bytes, trace: RequestTrace, *, content_encoding: str | None = None
    ) -> dict[str, Any]:
        """Answer KServe's v1 ``POST /v1/models/{m}:predict``: ``{"instances": [...]}`` ->
        ``{"predictions": [...]}``."""
        model, resolved = self.catalog.get(model_name)
        body = decode_content(body, content_encoding, self.config.max_body_bytes)
        with self.parsing(len(body)):
            tensor, count = kserve_v1.instances_input(
                loads(body, self.config.max_json_values), model, self.limits
            )
        self.begin(trace, model, resolved, [tensor])
        reply = self.call(model, resolved, None, [tensor], [], self.deadline(None), trace)
        trace.finish(reply.version, reply.worker, reply.stats)
        outputs = _pick(reply, [s.name for s in model.outputs])
        return {"predictions": kserve_v1.predictions(outputs, model, count)}

    @rechecked
    def predictions(
        self,
        model_name: str,
        version: str | None,
        body: bytes | bytearray,
        trace: RequestTrace,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        parameters: Parameters | None = None,
    ) -> Any:
        """Answer TorchServe's ``/predictions/{m}[/{v}]``: a raw, multipart or JSON body for the only
        input; ``parameters`` (its query string) and a multipart body's other text fields go to the model's
        handler."""
        model = self.single_input_model(model_name, version)
        body = decode_content(body, content_encoding, self.config.max_body_bytes)
        data, fields = torchserve.body_data(
            body, content_type, sole_input(model, "/predictions").name, self.config.max_body_bytes
        )
        return self.predictions_of(model_name, version, data, trace, {**(parameters or {}), **fields})

    def single_input_model(self, model_name: str, version: str | None) -> ModelConfig:
        """Return the model TorchServe's inference API names, which must have one input (besides optional
        ones)."""
        model, _ = self.catalog.get(model_name, version)
        sole_input(model, "/predictions")
        return model

    @rechecked
    def predictions_of(
        self,
        model_name: str,
        version: str | None,
        data: bytes | bytearray,
        trace: RequestTrace,
        parameters: Parameters,
    ) -> Any:
        """Run TorchServe's prediction on ``data`` (the input, taken out of its request); answer as
        ``/predictions`` does. Shared by HTTP and TorchServe's gRPC API (:mod:`gateway.torchserve_grpc`)."""
        model = self.single_input_model(model_name, version)
        resolved = self.catalog.get(model_name, version)[1]
        if sole_input(model, "/predictions").datatype == BYTES:
            tensor, whole = bytes_input([bytes(data)], model, self.limits), False
        else:
            with self.parsing(len(data)):
                tensor, whole = predict_input(loads(data, self.config.max_json_values), model, self.limits)
        self.begin(trace, model, resolved, [tensor])
        reply = self.call(
            model,
            resolved,
            resolved if version else None,
            [tensor],
            [],
            self.deadline(None),
            trace,
            parameters=handler_parameters(parameters),
        )
        trace.finish(reply.version, reply.worker, reply.stats)
        values = output_values(_pick(reply, [s.name for s in model.outputs]), model, whole)
        return torchserve.answer(values)

    # -- health -----------------------------------------------------------------------------------------

    def draining(self) -> bool:
        """Whether this host is being drained (``torchgate drain`` wrote its drain file)."""
        return bool(self.config.drain_file) and os.path.exists(self.config.drain_file)

    def status_or_none(self, max_age: float | None = None) -> StatusReply | None:
        """Return the dispatcher's status, or None when it does not answer."""
        try:
            return self.client.status(max_age)
        except CodedError:
            return None

    def ready(self) -> tuple[bool, str]:
        """Return whether every model has a ready worker, and why not.

        A cached "not ready" is checked again with a fresh status, so a server that became ready a moment ago
        (as another gateway process may already have said) is not reported otherwise.
        """
        status = self.status_or_none()
        if status is None:
            return False, "the dispatcher does not answer"
        ok, why = server_ready(status, self.catalog.models)
        if not ok and (status := self.status_or_none(max_age=0)) is not None:
            ok, why = server_ready(status, self.catalog.models)
        return ok, why

    def health(self) -> str:
        """Return TorchServe's ``/ping`` status: ``Healthy`` when every model has a ready worker, ``Partial
        Healthy`` when some has, ``Unhealthy`` when none has (or the dispatcher does not answer)."""
        if self.ready()[0]:
            return "Healthy"
        status = self.status_or_none()
        if status is not None and any(status.model_ready(name) for name in self.catalog.models):
            return "Partial Healthy"
        return "Unhealthy"

    def model_ready(self, model_name: str, version: str | None) -> tuple[bool, ModelConfig, str]:
        """Return whether a worker serves the model (version), the model, and why not."""
        model, resolved = self.catalog.get(model_name, version)
        version = resolved if version else None
        why = "the dispatcher does not answer"
        for max_age in (None, 0.0):  # a cached "not ready" is checked again with a fresh status
            status = self.status_or_none(max_age)
            if status is None:
                return False, model, why
            if status.model_ready(model.name, version):
                return True, model, ""
            why = unavailable_reason(status, model.name, version)
        return False, model, why

    def status(self) -> StatusReply:
        """Return the dispatcher's status, fresh (statistics must never run backwards across processes), or
        503."""
        try:
            return self.client.status(max_age=0)
        except CodedError as exc:
            raise Unavailable(f"statistics are unavailable: {exc.message}") from None

    def control(self, action: str, model_name: str, body: bytes = b"") -> None:
        """Load (again, from disk) or unload a model on every slot that serves it, one slot at a time.

        ``body`` is the request's: its parameters are checked (:func:`control_parameters`).
        """
        self._allow_control(action)
        control_parameters(body, action)
        if action == "load":
            self.catalog.check(model_name)  # what is on disk, before any worker is asked
        if model_name not in self.catalog.models and not self._served_now(model_name, action):
            raise NotFound(f"unknown model {model_name!r}")
        try:
            reply = self.client.control(action, model_name, self.config.control_timeout)
        finally:
            self.catalog.follow(max_age=0)  # what the workers now run, whether the job succeeded or not
        # Answer once no front can still hold a status from before the job ended (each reuses one for
        # status_ttl): every request sent after this answer, to any front, is checked against (and any cached
        # answer keyed by) what the workers now run.
        time.sleep(self.client.status_ttl)
        if not reply.ok:
            raise InvalidArgument(f"{action} of model {model_name!r} failed: {reply.error}")

    def _allow_control(self, action: str) -> None:
        if self.config.model_control != "explicit":
            raise Forbidden(
                f"model control is off: start the server with --model-control explicit to {action} models"
            )

    def _served_now(self, model_name: str, action: str) -> bool:
        """Whether an unload may go ahead for a model this catalog lacks: workers still serve it (say, its
        folder was removed from the repository)."""
        if action != "unload":
            return False
        status = self.status_or_none(max_age=0)
        return status is not None and model_name in status.models

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        self.catalog.follow(max_age=0)
        models = self.catalog.rescan()
        return repository_index(models, self.status_or_none(), ready_only)

    # -- TorchServe's management API ----------------------------------------------------------------------

    def registered(self) -> list[str]:
        """Return the models TorchServe's management API calls registered: those not unloaded on request."""
        status = self.status_or_none(max_age=0)  # another gateway process may have unloaded one a moment ago
        unloaded = set(status.unloaded) if status is not None else set()
        return sorted(name for name in self.catalog.models if name not in unloaded)

    def describe(self, model_name: str, version: str | None) -> list[dict[str, Any]]:
        """Return ``GET /models/{name}[/{version}|/all]``: its default version, one version, or every one."""
        model, resolved = self.catalog.get(
            model_name, None if version == torchserve_management.ALL_VERSIONS else version
        )
        status = self.status_or_none(max_age=0)
        if status is not None and model.name in status.unloaded:
            raise NotFound(f"Model not found: {model.name} (unregistered; POST /models?url={model.name})")
        versions = (
            sorted(model.versions, key=int) if version == torchserve_management.ALL_VERSIONS else [resolved]
        )
        return torchserve_management.describe(model, versions, status)

    def register(self, args: dict[str, str]) -> str:
        """Load the model ``POST /models`` names (model control); return TorchServe's status message."""
        name = torchserve_management.register_target(args)
        self._allow_control("load")
        before = self.status_or_none(max_age=0)
        if before is not None and name in before.models and name not in before.unloaded:
            _, version = self.catalog.get(name)
            raise Conflict(f"Model version {version} is already registered for model {name}")
        try:
            self.control("load", name)
        except InvalidArgument:
            try:  # as TorchServe: a register that fails leaves the model unregistered
                self.control("unload", name)
            except CodedError:
                log.warning("gateway: model %s: could not unregister it after its failed register", name)
            raise
        model, version = self.catalog.get(name)
        status = self.status_or_none(max_age=0)
        workers = status.ready_count(name, version) if status is not None else 0
        return f'Model "{model.name}" Version: {version} registered with {workers} initial workers'

    def unregister(self, model_name: str, version: str | None) -> str:
        """Unload a model (``DELETE /models/{name}[/{version}]``); return TorchServe's status message."""
        model, _ = self.catalog.get(model_name, version)
        if version is not None and len(model.versions) > 1:
            raise InvalidArgument(
                f"model {model.name!r} has versions {', '.join(sorted(model.versions, key=int))}: unregister "
                f"unloads every version of a model here (DELETE /models/{model.name})"
            )
        if model.name not in self.registered():
            raise NotFound(f"Model not found: {model.name} (already unregistered)")
        self.control("unload", model.name)
        return f'Model "{model.name}" unregistered'

    def trace_setting(self, model: str | None, update: Any = None) -> dict[str, Any]:
        """Answer Triton's trace setting request for ``model`` (or the server): change the settings with
        ``update`` (a POST's body), then return them."""
        name = self.catalog.get(model)[0].name if model else ""
        if self.tracing is None:
            if update:
                raise InvalidArgument(trace_settings.NO_FILE)
            return trace_settings.response(trace_settings.new_document(""), name)
        if update is not None:
            return self.tracing.update(name, update)
        return self.tracing.setting(name)

    def log_setting(self, update: Any = None) -> dict[str, Any]:
        """Answer Triton's log setting request: change the server's settings with ``update`` (a POST's
        body), then return them."""
        path = self.config.log_settings
        if update is not None:
            if not path:
                raise InvalidArgument(
                    "the log settings are shared through the file `torchgate serve` gives every process "
                    f"({log_settings.ENV}); this gateway has none"
                )
            return log_settings.update(path, update)
        return log_settings.read(path or None)

    def model_stats(self, model: str | None, version: str | None) -> dict[str, Any]:
        """Return Triton's statistics document for every model, one model, or one of its versions."""
        resolved = None
        if model is not None:
            _, resolved = self.catalog.get(model, version)
        cache = request_metrics().cache_counts()
        return model_stats(self.catalog.models, self.status(), model, resolved if version else None, cache)


CONTROL_BODY = 64 << 10  # the largest body a load or unload request may have (it holds no files here)
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})  # no ensembles: nothing depends on a model


def control_parameters(body: bytes, action: str) -> dict[str, Any]:
    """Return a load or unload request's ``parameters`` (Triton's model repository extension), refusing
    what this server would otherwise ignore: a load that overrides the config or the files (edit the
    repository instead), or an unknown parameter."""
    if not body.strip():
        return {}
    doc = loads(body)
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise InvalidArgument(f"a {action} request's body must be a JSON object, with 'parameters' an object")
    for key in params:
        if action == "load" and (key == "config" or key.startswith("file:")):
            raise InvalidArgument(
                f"load parameter {key!r}: overriding a model's config or files in the request is not "
                "supported; edit its config and version folders in the model repository, then load it"
            )
        if action == "load" or key not in UNLOAD_PARAMETERS:
            raise InvalidArgument(f"unknown {action} parameter {key!r}")
    if not isinstance(params.get("unload_dependents", False), bool):
        raise InvalidArgument("unload parameter 'unload_dependents' must be true or false")
    return dict(params)


def _pick(reply: InferReply, names: list[str]) -> list[Tensor]:
    """Return the reply's outputs in the order of ``names``; a missing one is the worker's fault (500)."""
    by_name = {t.name: t for t in reply.outputs}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CodedError(ErrorCode.INTERNAL, f"the worker returned no output {missing[0]!r}")
    return [by_name[n] for n in names]


def reply_room(model: ModelConfig, input_bytes: int) -> int:
    """Return room enough for the outputs of a request whose inputs take ``input_bytes`` (its batch is at most
    that many samples' worth), before its header is parsed; 0 where a size is not known ahead."""
    batch: tuple[int, ...] = ()
    if model.max_batch_size > 0:
        sizes = {spec.name: fixed_nbytes(spec.datatype, tuple(spec.dims)) for spec in model.inputs}
        if not sizes or any(not size for size in sizes.values()):
            return 0
        # the most samples those bytes can hold: optional inputs may be left out
        required = [size for spec in model.inputs if not spec.optional and (size := sizes[spec.name])]
        per_sample = sum(required) if required else min(size for size in sizes.values() if size)
        batch = (input_bytes // per_sample,)
    total = 0
    for spec in model.outputs:
        size = fixed_nbytes(spec.datatype, batch + tuple(spec.dims))
        if size is None:
            return 0
        total += size + 64
    return total


def reply_bytes(model: ModelConfig, inputs: list[Tensor]) -> int:
    """Return the bytes of all of ``model``'s outputs for these inputs, 0 where a size is not known ahead."""
    batch: tuple[int, ...] = ()
    if model.max_batch_size > 0:
        if not inputs or not inputs[0].shape:
            return 0
        batch = (inputs[0].shape[0],)
    total = 0
    for spec in model.outputs:
        size = fixed_nbytes(spec.datatype, batch + tuple(spec.dims))
        if size is None:
            return 0
        total += size + 64  # each output starts 64-byte aligned
    return total
