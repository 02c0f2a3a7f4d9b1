"""The error every model repository reader raises, and its "did you mean" hint (no I/O, no torch).

Its own module so that both readers, :mod:`inference_worker.repository` (config.toml) and
:mod:`inference_worker.triton_config` (Triton's config.pbtxt), raise the same error without importing each
other.
"""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A model repository entry that cannot be served."""


def suggest(word: str, choices: list[str], what: str) -> str:
    """Return "(did you mean X?)" for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return ""
    shown = {"table": f"[{close[0]}]", "array": f"[[{close[0]}]]"}.get(what, close[0])
    return f" (did you mean {shown}?)"
