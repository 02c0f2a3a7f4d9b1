"""Probing a server as an orchestrator does: gRPC's standard health check, as a kubelet sends it."""

from __future__ import annotations

import grpc

from gateway import grpc_health


def grpc_health_check(port: int, service: str = "", timeout: float = 30.0) -> int:
    """Call ``grpc.health.v1.Health/Check`` on 127.0.0.1:``port`` with no metadata (no token), as a ``grpc``
    probe does; return the status (``grpc_health.SERVING``, ...). Raises :class:`grpc.RpcError` as the call
    does (nothing listening yet, NOT_FOUND for an unknown ``service``)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=grpc_health.Request.SerializeToString,
            response_deserializer=grpc_health.Response.FromString,
        )
        return int(check(grpc_health.Request(service=service), timeout=timeout).status)
