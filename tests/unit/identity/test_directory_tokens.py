"""Node directory (store-backed) and the bootstrap token store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from ketch.identity.directory import InMemoryNodeDirectory, StoreNodeDirectory
from ketch.identity.errors import BadRequest, TokenError
from ketch.identity.tokens import TokenStore
from ketch.store.base import ListResult, Manifest, NotFoundError, ObjectKey, Store


class FakeStore:
    """Just get/list over manifests: enough for StoreNodeDirectory."""

    def __init__(self, objects: list[Manifest]) -> None:
        self.objects = {ObjectKey.of(o): o for o in objects}

    def get(self, kind: str, namespace: str, name: str) -> Manifest:
        key = ObjectKey(kind, namespace, name)
        if key not in self.objects:
            raise NotFoundError(key)
        return self.objects[key]

    def list(self, kind: str | None = None, namespace: str | None = None) -> ListResult:
        items = [
            o
            for k, o in self.objects.items()
            if (kind is None or k.kind == kind) and (namespace is None or k.namespace == namespace)
        ]
        return ListResult(items=items, revision=1)


def _pod(name: str, node: str | None, sa: str | None = None, phase: str | None = None) -> Manifest:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "x"}]}
    if node:
        spec["nodeName"] = node
    if sa:
        spec["serviceAccountName"] = sa
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    }
    if phase:
        pod["status"] = {"phase": phase}
    return pod


def test_store_directory() -> None:
    store = FakeStore(
        [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}},
            _pod("cart", "node-a", "cart"),
            _pod("web", "node-a"),
            _pod("old", "node-a", "batch", phase="Succeeded"),
            _pod("dead", "node-a", "crashy", phase="Failed"),
            _pod("pending", None, "unscheduled"),
            _pod("pay", "node-b", "payments", phase="Running"),
        ]
    )
    d = StoreNodeDirectory(cast(Store, store))
    assert d.node_exists("node-a")
    assert not d.node_exists("node-b")
    assert d.has_workload("node-a", "shop", "cart")
    assert d.has_workload("node-a", "shop", "default")
    assert not d.has_workload("node-a", "shop", "batch")
    assert not d.has_workload("node-a", "shop", "crashy")
    assert not d.has_workload("node-a", "shop", "unscheduled")
    assert not d.has_workload("node-a", "shop", "payments")
    assert d.has_workload("node-b", "shop", "payments")
    assert not d.has_workload("node-a", "other", "cart")


def test_memory_directory() -> None:
    d = InMemoryNodeDirectory()
    d.add_node("n")
    d.add_pod("n", "ns", "p", "sa")
    assert d.has_workload("n", "ns", "sa")
    d.remove_pod("ns", "p")
    assert not d.has_workload("n", "ns", "sa")
    d.remove_node("n")
    assert not d.node_exists("n")


def test_tokens_one_time_expiring_hashed(tmp_path: Path) -> None:
    now = [1000.0]
    tokens = TokenStore(tmp_path / "nodes.json", clock=lambda: now[0])
    t = tokens.create("node-a", timedelta(seconds=10))
    assert t.startswith("ketch-node-")
    assert t not in (tmp_path / "nodes.json").read_text()
    assert tokens.pending_tokens() == [("node-a", 1010.0)]
    tokens.redeem(t, "node-a")
    with pytest.raises(TokenError, match="already used"):
        tokens.redeem(t, "node-a")
    t2 = tokens.create("node-a", timedelta(seconds=10))
    now[0] += 11
    with pytest.raises(TokenError, match="expired"):
        tokens.redeem(t2, "node-a")
    assert tokens.pending_tokens() == []


def test_tokens_validate_input() -> None:
    tokens = TokenStore()
    with pytest.raises(BadRequest, match="node name"):
        tokens.create("Bad_Name")
    with pytest.raises(BadRequest, match="TTL"):
        tokens.create("n", timedelta(days=30))


def test_node_serials_and_revocation(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "nodes.json")
    tokens.replace_certs("node-a", 1)
    tokens.record_cert("node-a", 2)
    assert tokens.is_current("node-a", 1)
    assert tokens.is_current("node-a", 2)
    tokens.replace_certs("node-a", 3)  # re-join invalidates older certs
    assert not tokens.is_current("node-a", 1)
    reloaded = TokenStore(tmp_path / "nodes.json")
    assert reloaded.is_current("node-a", 3)
    assert reloaded.revoke("node-a")
    assert not reloaded.is_current("node-a", 3)
    assert not reloaded.revoke("node-a")
    assert (tmp_path / "nodes.json").stat().st_mode & 0o777 == 0o600
