"""Read a Dockerfile's instructions (continuations joined, comments dropped): enough to test a recipe
offline."""

from __future__ import annotations

import json
import shlex
from pathlib import Path


def instructions(path: Path) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) in order."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def environment(path: Path) -> dict[str, str]:
    """Every ENV the final image sets (KEY=value pairs)."""
    env: dict[str, str] = {}
    for word, rest in instructions(path):
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(path: Path, name: str) -> list[str]:
    """The last ``name`` instruction (ENTRYPOINT, CMD) in exec form; a shell form is an error."""
    found = [rest for word, rest in instructions(path) if word == name]
    assert found, f"{path}: no {name}"
    value = json.loads(found[-1])
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), f"{name} must be in exec form"
    return value


def healthcheck(path: Path) -> list[str]:
    """The HEALTHCHECK's command (exec form after its options)."""
    found = [rest for word, rest in instructions(path) if word == "HEALTHCHECK"]
    assert found, f"{path}: no HEALTHCHECK"
    _, _, command = found[-1].partition("CMD ")
    value = json.loads(command)
    assert isinstance(value, list)
    return value
