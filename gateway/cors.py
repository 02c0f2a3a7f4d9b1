"""Requests from web pages on other origins (CORS), as TorchServe's ``cors_allowed_origin``; no I/O.

Off unless ``TORCHGATE_CORS_ORIGINS`` names the origins allowed
(``https://app.example.com,http://localhost:3000``) or is ``*`` (any). Then a browser's preflight (``OPTIONS``
with ``Access-Control-Request-Method``) is answered 204 without the bearer token (browsers send none there),
and every answer to an allowed origin, errors included, says so, so a page can read the error too.
"""

from __future__ import annotations

ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding, Inference-Header-Content-Length, X-Request-ID"
EXPOSE_HEADERS = "Inference-Header-Content-Length, X-Request-ID, Retry-After, WWW-Authenticate"
MAX_AGE = "600"  # seconds a browser may keep a preflight's answer


class CorsPolicy:
    """Which origins may call the API from a browser."""

    def __init__(self, origins: str) -> None:
        names = [o.strip().rstrip("/") for o in origins.split(",") if o.strip()]
        self.any = "*" in names
        self.origins = frozenset(names) - {"*"}

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allow_origin(self, origin: str | None) -> str | None:
        """Return the ``Access-Control-Allow-Origin`` for a request from ``origin``; None: not allowed."""
        if not origin or not self.enabled:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def preflight(self, origin: str | None) -> dict[str, str]:
        """Return the headers of the 204 that answers a preflight from ``origin`` (none when not allowed)."""
        allowed = self.allow_origin(origin)
        if allowed is None:
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        }

    def answer(self, origin: str | None) -> dict[str, str]:
        """Return the headers an answer to a request from ``origin`` gets."""
        allowed = self.allow_origin(origin)
        if allowed is None:
            return {"Vary": "Origin"} if self.enabled else {}
        return {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
            "Vary": "Origin",
        }
