"""Pull the metric names out of PromQL expressions (enough of PromQL for dashboards), for tests."""

from __future__ import annotations

import re

KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")
_NUMBER = re.compile(r"^\d")


def metric_names(expr: str) -> set[str]:
    """Return the metric names ``expr`` selects; raise ValueError if its brackets do not balance."""
    text = _STRING.sub('""', expr)
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ValueError(f"unbalanced parentheses in {expr!r}")
    if depth or text.count("{") != text.count("}") or text.count("[") != text.count("]"):
        raise ValueError(f"unbalanced brackets in {expr!r}")
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", text))
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or _NUMBER.match(name):
            continue
        names.add(name)
    return names


def label_values_metric(query: str) -> str | None:
    """Return the metric of a Grafana ``label_values(metric, label)`` variable query, if it is one."""
    match = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*\w+\s*\)\s*", query)
    return match.group(1) if match else None
