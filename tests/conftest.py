"""Shared test configuration.

Tests marked `integration` (every test under tests/integration) need root: network
namespaces, veth, iptables, real control-plane processes. Tests may also carry `prereq`
marks (`tests.prereq.needs_tool("envoy")`, ...). A missing prerequisite skips the test with
the reason locally, and fails it in CI (`CI` set, or `KETCH_REQUIRE_ALL=1`): see tests/prereq.py.
"""

from __future__ import annotations

import pytest

from tests import prereq


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture runs, so a missing prerequisite never surfaces as an odd
    # fixture error (e.g. EPERM from `ip netns add`).
    if item.get_closest_marker("integration") is not None:
        prereq.require_root()
        prereq.require_netns()
    prereq.check_marks(item)
