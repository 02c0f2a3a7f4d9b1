"""Read Prometheus' text format in tests: samples as (name, labels) -> value, and sums over label subsets."""

from __future__ import annotations

import re
from collections.abc import Mapping

import requests

Sample = tuple[str, frozenset[tuple[str, str]]]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> dict[Sample, float]:
    """Return every sample of a scrape; fail on a line that is not a comment or a sample."""
    samples: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def types(text: str) -> dict[str, str]:
    """Return each family's declared type, by the name on its ``# TYPE`` line."""
    return {
        parts[2]: parts[3]
        for line in text.splitlines()
        if (parts := line.split()) and line.startswith("# TYPE")
    }


def total(samples: Mapping[Sample, float], name: str, **labels: str) -> float:
    """Return the sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def scrape(base_url: str, timeout: float = 10.0) -> tuple[str, dict[Sample, float]]:
    response = requests.get(f"{base_url}/metrics", timeout=timeout)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text, parse(response.text)
