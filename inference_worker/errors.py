"""The one exception that carries an error code: raised wherever a request is refused, on either side."""

from __future__ import annotations

from inference_worker.protocol import ErrorCode


class CodedError(Exception):
    """A request that cannot be served, with the code to answer it with (one HTTP status per code).

    ``code`` is an :class:`ErrorCode` on the wire; the gateway may add reasons of its own (plain strings).
    """

    code: ErrorCode | str = ErrorCode.INTERNAL

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code) if code in ErrorCode.__members__ else code
        self.message = message
