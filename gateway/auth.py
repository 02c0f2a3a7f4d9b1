"""Bearer-token authentication (RFC 6750): the check of one ``Authorization`` header, no I/O."""

from __future__ import annotations

import hmac


def bearer_token(header: str) -> str | None:
    """Return the token of ``Bearer <token>`` (the scheme in any case, RFC 7235), else None."""
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = credentials.strip(" ")
    return token or None


def authorized(header: str, expected: str) -> bool:
    """Return whether ``header`` carries the bearer token ``expected`` (compared in constant time)."""
    token = bearer_token(header)
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())
