"""Shared test configuration.

Tests marked `integration` need root (network namespaces, veth, iptables). CI runs as root
and runs them; elsewhere they are skipped with a reason.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration test: needs root (network namespaces, iptables)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
