"""Why a request failed, and the one table that turns each reason into an HTTP status.

Every error body is ``{"error": "<message>"}`` (tritonclient reports anything else as a decoding error).
A refusal is a :class:`~inference_worker.errors.CodedError` (the one error class of both sides); the classes
below name the gateway's reasons. Other exceptions become a 500 whose details go only to the log.
"""

from __future__ import annotations

import logging

import orjson

from inference_worker.errors import CodedError
from inference_worker.protocol import ErrorCode

log = logging.getLogger("torchgate.gateway")

# Gateway-only reasons beside the wire's ErrorCode values.
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
UNAUTHENTICATED = "UNAUTHENTICATED"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
FORBIDDEN = "FORBIDDEN"
UNSUPPORTED = "UNSUPPORTED"  # Triton's TRITONSERVER_ERROR_UNSUPPORTED: a request for what it does not do
CONFLICT = "CONFLICT"  # TorchServe's ConflictStatusException: registering a model already registered
NOT_IMPLEMENTED = "NOT_IMPLEMENTED"  # KServe's NotImplementedError: a verb the model server does not serve

STATUS: dict[str, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.RESOURCE_EXHAUSTED: 500,
    ErrorCode.INTERNAL: 500,
    ErrorCode.DECLINED: 503,  # never answered as such: the gateway sends a declined request to the dispatcher
    ErrorCode.CANCELLED: 499,  # nginx's "client closed request": its client has gone; logs and metrics see it
    PAYLOAD_TOO_LARGE: 413,
    UNAUTHENTICATED: 401,
    METHOD_NOT_ALLOWED: 405,
    FORBIDDEN: 403,
    UNSUPPORTED: 400,
    CONFLICT: 409,
    NOT_IMPLEMENTED: 501,
}


class Refusal(CodedError):
    """A :class:`CodedError` whose code is its class's: ``InvalidArgument("why")``."""

    def __init__(self, message: str) -> None:
        super().__init__(type(self).code, message)


class InvalidArgument(Refusal):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(Refusal):
    code = ErrorCode.NOT_FOUND


class Unavailable(Refusal):
    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(Refusal):
    code = ErrorCode.DEADLINE_EXCEEDED


class Cancelled(Refusal):
    code = ErrorCode.CANCELLED


class PayloadTooLarge(Refusal):
    code = PAYLOAD_TOO_LARGE


class Unauthenticated(Refusal):
    code = UNAUTHENTICATED


class Unsupported(Refusal):
    code = UNSUPPORTED


class Forbidden(Refusal):
    code = FORBIDDEN


class Conflict(Refusal):
    code = CONFLICT


class NotImplementedHere(Refusal):
    code = NOT_IMPLEMENTED


def http_status(code: str) -> int:
    """Return the HTTP status of an error code; unknown codes are 500."""
    return STATUS.get(code, 500)


def error_body(message: str) -> bytes:
    """Return the JSON body every error carries."""
    return orjson.dumps({"error": message})


def error_headers(code: str, retry_after: int) -> dict[str, str]:
    """Return the extra headers of an error: ``Retry-After`` on 503."""
    if http_status(code) == 503:
        return {"Retry-After": str(retry_after)}
    if http_status(code) == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}


def describe_unexpected(exc: BaseException, where: str) -> str:
    """Log an unexpected exception with its traceback and return the short message a client may see."""
    log.error("gateway: unexpected %s in %s", type(exc).__name__, where, exc_info=exc)
    return "internal error in the gateway; see the server log"
