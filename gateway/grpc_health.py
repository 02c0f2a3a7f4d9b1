"""gRPC's standard health checking protocol (``grpc.health.v1.Health/Check``), which Kubernetes' ``grpc``
probes, ``grpc_health_probe`` and load balancers call, as Triton serves it beside its inference service.

``Check`` answers SERVING when the server is ready (every model has a ready worker, not draining), else
NOT_SERVING; for the whole server (``service`` empty) or the inference service by name; any other name is
NOT_FOUND, as the protocol says. It needs no bearer token: a kubelet probe sends no metadata, and the answer
says no more than ``/v2/health/live`` does with a 200 or 503. ``Watch`` is not served (UNIMPLEMENTED).

The two messages and the enum are built here as :mod:`gateway.grpc_messages` builds the inference service's:
no generated code, a descriptor pool of their own. No I/O.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "grpc.health.v1"
SERVICE = f"{PACKAGE}.Health"
# HealthCheckResponse.ServingStatus
UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN = 0, 1, 2, 3

_F = descriptor_pb2.FieldDescriptorProto


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Return ``grpc/health/v1/health.proto`` (the messages and ``Check``) as protobuf's description of it."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="torchgate/grpc_health.proto", package=PACKAGE, syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(
        name="service", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="service"
    )
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for name, number in (("UNKNOWN", UNKNOWN), ("SERVING", SERVING), ("NOT_SERVING", NOT_SERVING)):
        status.value.add(name=name, number=number)
    status.value.add(name="SERVICE_UNKNOWN", number=SERVICE_UNKNOWN)
    response.field.add(
        name="status",
        number=1,
        type=_F.TYPE_ENUM,
        type_name=f".{PACKAGE}.HealthCheckResponse.ServingStatus",
        label=_F.LABEL_OPTIONAL,
        json_name="status",
    )
    service = proto.service.add(name="Health")
    service.method.add(
        name="Check",
        input_type=f".{PACKAGE}.HealthCheckRequest",
        output_type=f".{PACKAGE}.HealthCheckResponse",
    )
    return proto


POOL = descriptor_pool.DescriptorPool()
FILE = POOL.Add(file_descriptor())
Request: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.HealthCheckRequest"))
Response: Any = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.HealthCheckResponse"))


def status(service: str, known: frozenset[str], ready: bool) -> int | None:
    """Return the serving status of ``service`` ("" is the whole server), or None when it is not one of
    ``known`` (the call then fails with NOT_FOUND)."""
    if service and service not in known:
        return None
    return SERVING if ready else NOT_SERVING
