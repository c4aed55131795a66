"""Shared integration fixtures: the netns fabric; and every test here is `integration`.

Every test collected under tests/integration gets the `integration` marker here (so
`-m "not integration"` never runs one, and the root conftest requires root for each: skip
locally, fail in CI). tests/unit/test_markers.py checks it.

`fabric` gives each test its own `ketch.netns.fabric.Fabric` with a unique name prefix
(`kn` + random hex), always closed afterwards (processes stopped, namespaces deleted), even
when the test fails. `two_nodes` adds two nodes with one pod each, which is what most
data-path tests want. `unique_prefix()` / `unique_name()` pick names no parallel run uses.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.netns.fabric import Fabric, Node, Pod, free_prefix

_HERE = Path(__file__).resolve().parent


def pytest_itemcollected(item: pytest.Item) -> None:
    if item.path.resolve().is_relative_to(_HERE):
        item.add_marker(pytest.mark.integration)


def unique_prefix(tag: str = "") -> str:
    """A fabric prefix nobody else is using: 'kn' + tag + 6 random hex chars."""
    return free_prefix(f"kn{tag}")


def unique_name(base: str) -> str:
    """A short resource name (netns, link, file) unlikely to collide: base + 6 hex chars."""
    name = f"{base}{secrets.token_hex(3)}"
    while os.path.exists(f"/run/netns/{name}"):
        name = f"{base}{secrets.token_hex(3)}"
    return name


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    """An empty fabric (no nodes yet) with a unique prefix; closed after the test."""
    fab = Fabric(unique_prefix())
    try:
        yield fab
    finally:
        fab.close()


@dataclass(frozen=True)
class TwoNodes:
    """node1 with pod `a`, node2 with pod `b` (10.244.1.2 and 10.244.2.2)."""

    fabric: Fabric
    node1: Node
    node2: Node
    a: Pod
    b: Pod


@pytest.fixture
def two_nodes(fabric: Fabric) -> TwoNodes:
    node1 = fabric.add_node("node1")
    node2 = fabric.add_node("node2")
    return TwoNodes(fabric, node1, node2, fabric.add_pod(node1, "a"), fabric.add_pod(node2, "b"))


def node_http(node: Node, port: int, path: str, *curl: str) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path from inside `node`'s netns (a node proxy's admin,
    metrics or readiness endpoint) with curl: (status, body); status 0 if nothing answered."""
    r = node.run(
        [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            *curl,
            f"http://127.0.0.1:{port}{path}",
        ],
        check=False,
    )
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def two_enrolled_nodes_with_web(fab: Fabric, www: Path) -> tuple[Node, Node, Pod, Pod]:
    """node1 with pod a, node2 with pod b, both with the in-pod redirection rules, and
    Python's http.server on b:8080 serving `www` (an index.html saying "hello from b")."""
    from ketch.netns import install_rules

    n1, n2 = fab.add_node("node1"), fab.add_node("node2")
    a, b = fab.add_pod(n1, "a"), fab.add_pod(n2, "b")
    for p in (a, b):
        install_rules(p.netns)
    www.mkdir()
    (www / "index.html").write_text("hello from b\n")
    b.exec(
        ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", str(www)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    b.wait_for_tcp("127.0.0.1", 8080)
    return n1, n2, a, b
