"""The harness every process test and benchmark uses: ports, command lines, one stack, one load generator.

Tests and benchmarks import this package, never each other; ``tests/conftest.py`` only wires it to pytest.
"""

from __future__ import annotations

from harness.load import HttpLoad, Outcome, call
from harness.models import (
    DIGIT,
    DIGIT_BODY,
    DIGIT_ROW,
    DIGITS_BODY,
    copy_digits,
    signature,
    slow_body,
    slow_repository,
    write_linear_model,
    write_masked_model,
    write_offset_model,
    write_python_model,
    write_scale_model,
    write_sleeper_model,
    write_slow_model,
    write_unloadable_model,
)
from harness.probes import grpc_health_check
from harness.procs import (
    DEFAULT_REPOSITORY,
    ROOT,
    Processes,
    Usage,
    children,
    free_port,
    run,
    run_on_a_full_disk,
    usage,
    wait_for,
    wait_settled,
)
from harness.stack import Stack, short_dir
from harness.wire import (
    Answer,
    Client,
    assert_all_match,
    dispatcher_status,
    outputs,
    ready_workers,
    send_digits,
)

__all__ = [
    "DEFAULT_REPOSITORY",
    "DIGIT",
    "DIGITS_BODY",
    "DIGIT_BODY",
    "DIGIT_ROW",
    "Answer",
    "ROOT",
    "Client",
    "HttpLoad",
    "grpc_health_check",
    "Outcome",
    "Processes",
    "run_on_a_full_disk",
    "Stack",
    "Usage",
    "assert_all_match",
    "call",
    "children",
    "copy_digits",
    "signature",
    "dispatcher_status",
    "free_port",
    "outputs",
    "ready_workers",
    "run",
    "send_digits",
    "short_dir",
    "slow_body",
    "slow_repository",
    "usage",
    "wait_for",
    "wait_settled",
    "write_linear_model",
    "write_masked_model",
    "write_offset_model",
    "write_python_model",
    "write_scale_model",
    "write_sleeper_model",
    "write_slow_model",
    "write_unloadable_model",
]
