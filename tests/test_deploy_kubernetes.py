"""Kubernetes and KServe manifests, validated offline: the Kubernetes schemas (kubernetes-validate, strict)
and KServe's CRD schemas (tests/schemas/kserve/, taken from KServe's repository), plus what the schemas cannot
say: probes on the right paths, a stop that outlasts the drain, and an autoscaling metric the server exports.
The gRPC runtime's container is also run as KServe would start it, and probed as Knative probes it.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from deploy.settings import STOP_MARGIN_SECONDS
from deploy.supervisor_conf import DISPATCHER_STOPWAITSECS
from gateway import grpc_health
from gateway.worker_metrics import model_families
from harness import (
    ROOT,
    Processes,
    copy_digits,
    free_port,
    grpc_health_check,
    run,
    short_dir,
    wait_for,
)

KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve"
SCHEMAS = ROOT / "tests" / "schemas" / "kserve"
GATEWAY_STOP_SECONDS = 30 + STOP_MARGIN_SECONDS  # gunicorn's graceful timeout, then SIGKILL


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents(path)}


def strict(schema: Any) -> Any:
    """Reject fields the schema does not name (the API server would silently prune them)."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


@functools.cache
def kserve_validator(name: str) -> jsonschema.protocols.Validator:
    """A validator for one CRD schema (not itself checked against the meta-schema: slow on 600 KB, done by
    KServe)."""
    schema = strict(json.loads(gzip.decompress((SCHEMAS / name).read_bytes())))
    return jsonschema.Draft7Validator(schema)


def kubernetes_errors(docs: list[dict[str, Any]]) -> list[str]:
    """Validate against the Kubernetes schemas kubernetes-validate carries (the newest), unknown fields
    refused."""
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}: {exc.message} at {list(exc.path)}")
    return errors


@pytest.mark.parametrize("path", sorted(KUBERNETES.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_schemas_accept_the_manifests(path: Path) -> None:
    assert kubernetes_errors(documents(path)) == []


def test_kubernetes_validate_rejects_a_misspelt_field() -> None:
    text = (KUBERNETES / "torchgate.yaml").read_text().replace("readinessProbe:", "readynessProbe:")
    errors = kubernetes_errors([doc for doc in yaml.safe_load_all(text) if doc])
    assert len(errors) == 1 and "readynessProbe" in errors[0], errors


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _prestop_wait(container: dict[str, Any]) -> float:
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["torchgate", "drain"], command
    return float(command[command.index("--wait") + 1])


def _stop_budget(container: dict[str, Any]) -> float:
    """Longest stop: preStop wait, what is left of the grace, the gateway's stop, the workers', the
    dispatcher's."""
    env = _env(container)
    grace = float(env.get("TORCHGATE_SERVE_UNREADY_GRACE_SECONDS", "0"))
    drain = float(env.get("TORCHGATE_SERVE_DRAIN_SECONDS", "30"))
    wait = _prestop_wait(container)
    return (
        wait
        + max(0.0, grace - wait)
        + GATEWAY_STOP_SECONDS
        + drain
        + STOP_MARGIN_SECONDS
        + DISPATCHER_STOPWAITSECS
    )


def test_gpu_deployment_probes_and_a_stop_longer_than_the_drain() -> None:
    kinds = by_kind(KUBERNETES / "torchgate.yaml")
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["terminationGracePeriodSeconds"] > _stop_budget(container)
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The PodDisruptionBudget and Service select the Deployment's pods.
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert hpa["minReplicas"] >= 2  # the PDB's maxUnavailable 1 leaves one serving


def test_autoscaling_metric_is_one_the_server_exports() -> None:
    hpa = by_kind(KUBERNETES / "torchgate.yaml")["HorizontalPodAutoscaler"]["spec"]
    (metric,) = hpa["metrics"]
    config = yaml.safe_load(
        by_kind(KUBERNETES / "prometheus-adapter.yaml")["ConfigMap"]["data"]["config.yaml"]
    )
    rules = {rule["name"]["as"]: rule for rule in config["rules"]}
    rule = rules[metric["pods"]["metric"]["name"]]
    series = rule["seriesQuery"].split("{")[0]
    exported = {family.name for family in model_families({"digits": {"1": {"ready": 1, "queued": 0}}})}
    assert series in exported, (series, exported)
    assert {"pod", "namespace"} <= set(rule["resources"]["overrides"])


def test_kserve_schema_accepts_the_serving_runtime() -> None:
    runtime = by_kind(KSERVE / "servingruntime.yaml")["ServingRuntime"]
    kserve_validator("servingruntimes.v1alpha1.json.gz").validate(runtime)
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2", "v1"]  # both are served (gateway/kserve_v1.py)
    (container,) = spec["containers"]
    port = int(_env(container)["TORCHGATE_SERVE_PORT"])
    assert container["ports"][0]["containerPort"] == port == 8080  # where KServe sends traffic
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert "/mnt/models" in container["args"]  # where KServe's storage initializer puts storageUri


def test_kserve_schema_accepts_the_inference_service() -> None:
    service = by_kind(KSERVE / "inferenceservice.yaml")["InferenceService"]
    kserve_validator("inferenceservices.v1beta1.json.gz").validate(service)
    runtime = by_kind(KSERVE / "servingruntime.yaml")["ServingRuntime"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    assert service["spec"]["predictor"]["terminationGracePeriodSeconds"] > _stop_budget(container)


def test_kserve_schema_accepts_the_grpc_serving_runtime() -> None:
    runtime = by_kind(KSERVE / "servingruntime-grpc.yaml")["ServingRuntime"]
    kserve_validator("servingruntimes.v1alpha1.json.gz").validate(runtime)
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["grpc-v2"]
    (container,) = spec["containers"]
    env = _env(container)
    grpc_port = int(env["TORCHGATE_SERVE_GRPC_PORT"])
    # the one port KServe sends traffic to, named for HTTP/2 without TLS, is the gRPC server's
    assert container["ports"] == [{"name": "h2c", "containerPort": grpc_port, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"] == {"port": grpc_port}  # grpc.health.v1, readiness
    assert container["livenessProbe"]["exec"]["command"] == ["torchgate", "probe", "--live"]
    assert "/mnt/models" in container["args"]
    http = by_kind(KSERVE / "servingruntime.yaml")["ServingRuntime"]["spec"]["containers"][0]
    assert (container["image"], container["args"]) == (http["image"], http["args"])


def test_kserve_schema_accepts_the_grpc_inference_service() -> None:
    service = by_kind(KSERVE / "inferenceservice-grpc.yaml")["InferenceService"]
    kserve_validator("inferenceservices.v1beta1.json.gz").validate(service)
    runtime = by_kind(KSERVE / "servingruntime-grpc.yaml")["ServingRuntime"]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert (
        model["protocolVersion"] == "grpc-v2"
        and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    )
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    assert service["spec"]["predictor"]["terminationGracePeriodSeconds"] > _stop_budget(container)


@pytest.mark.processes
def test_the_grpc_runtime_container_serves_grpc_and_answers_its_probes(processes: Processes) -> None:
    """The container as KServe starts it (the image's `torchgate serve`, the runtime's args and env), with
    this host's ports and a copy of `digits` where the storage initializer puts the model repository; probed
    as the runtime says, asked over its h2c port with tritonclient, then stopped as the kubelet stops it."""
    (container,) = by_kind(KSERVE / "servingruntime-grpc.yaml")["ServingRuntime"]["spec"]["containers"]
    with short_dir() as base:
        copy_digits(base / "models")
        args = [str(base / "models") if a == "/mnt/models" else a for a in container["args"]]
        port, grpc_port = free_port(), free_port()
        env = {
            **_env(container),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "TORCHGATE_RUN_DIR": str(base / "run"),
            "TORCHGATE_SERVE_HOST": "127.0.0.1",  # 0.0.0.0 in the pod's own network namespace
            "TORCHGATE_SERVE_PORT": str(port),
            "TORCHGATE_SERVE_GRPC_PORT": str(grpc_port),
            "TORCHGATE_SERVE_CPU_WORKERS": "1",
            "TORCHGATE_SERVE_GPUS": "none",
            "TORCHGATE_SERVE_UNREADY_GRACE_SECONDS": "5",  # the runtime's 10, shorter for the test
        }
        proc = processes.start("serve", ["torchgate", "serve", *args], env=env, cwd=base)

        def probe() -> int | None:
            assert proc.poll() is None, processes.log("serve")
            try:
                return grpc_health_check(grpc_port, timeout=10)
            except grpc.RpcError:  # not listening yet
                return None

        wait_for(lambda: probe() == grpc_health.SERVING, timeout=120, interval=0.2, what="SERVING")
        live = run(container["livenessProbe"]["exec"]["command"], timeout=30, env={**os.environ, **env})
        assert live.returncode == 0, live.stdout + live.stderr
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = grpcclient.InferInput("input", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        assert client.infer("digits", [x], client_timeout=30).as_numpy("output").shape == (1, 10)

        proc.send_signal(signal.SIGTERM)  # the kubelet stopping the pod, after the preStop hook
        wait_for(lambda: probe() == grpc_health.NOT_SERVING, timeout=10, what="NOT_SERVING")
        # still answering meanwhile: the probe takes the pod out before anything stops
        assert client.infer("digits", [x], client_timeout=30).as_numpy("output").shape == (1, 10)
        client.close()
        assert proc.wait(timeout=90) == 0, processes.log("serve")


def test_kserve_schema_rejects_a_misspelt_field() -> None:
    runtime = by_kind(KSERVE / "servingruntime.yaml")["ServingRuntime"]
    runtime["spec"]["protocolVersion"] = ["v2"]  # the field is protocolVersions
    with pytest.raises(jsonschema.ValidationError, match="protocolVersion"):
        kserve_validator("servingruntimes.v1alpha1.json.gz").validate(runtime)
