"""The suite's own set-up: ``make test`` runs two xdist workers with ``--dist loadgroup``, each file's tests
on one worker (tests/conftest.py gives each file a group), so a module-scoped deployment starts once and its
tests see what the ones before them did."""

from __future__ import annotations

import pytest


def test_xdist_keeps_a_files_tests_on_one_worker(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by xdist's --dist loadgroup")
    # xdist groups by a suffix it adds to each test's id; with pytest 9.2 the suffix is lost and every test
    # goes to either worker (pytest-dev/pytest-xdist#1386): pyproject.toml keeps pytest below 9.2
    assert request.node.nodeid.endswith("@tests/test_suite_grouping.py"), request.node.nodeid
