"""Which nodes exist and which workloads run where: the facts node authorization needs.

The CA asks, per request (so a deleted Node or a moved Pod takes effect at once):
`node_exists(node)` and `has_workload(node, namespace, service_account)`.
`StoreNodeDirectory` answers from the config store; `InMemoryNodeDirectory` is for tests and
standalone mode.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

from ketch.store.base import NotFoundError, Store

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class NodeDirectory(Protocol):
    def node_exists(self, name: str) -> bool: ...

    def has_workload(self, node: str, namespace: str, service_account: str) -> bool: ...


class PodsOnNode:
    """The (namespace, service account) pairs of `node`'s pods, as a container that asks
    `directory.has_workload` on every `in` (what `authorize_csr` takes as `pods_on_node`)."""

    def __init__(self, directory: NodeDirectory, node: str) -> None:
        self._directory = directory
        self._node = node

    def __contains__(self, item: object) -> bool:
        if not (isinstance(item, tuple) and len(item) == 2):
            return False
        namespace, service_account = item
        return self._directory.has_workload(self._node, str(namespace), str(service_account))


class InMemoryNodeDirectory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: set[str] = set()
        self._pods: dict[tuple[str, str], tuple[str, str, str]] = {}

    def add_node(self, name: str) -> None:
        with self._lock:
            self._nodes.add(name)

    def remove_node(self, name: str) -> None:
        with self._lock:
            self._nodes.discard(name)

    def add_pod(
        self, node: str, namespace: str, name: str, service_account: str = "default"
    ) -> None:
        with self._lock:
            self._pods[(namespace, name)] = (node, namespace, service_account)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def node_exists(self, name: str) -> bool:
        with self._lock:
            return name in self._nodes

    def has_workload(self, node: str, namespace: str, service_account: str) -> bool:
        with self._lock:
            return (node, namespace, service_account) in set(self._pods.values())


def pod_placement(pod: dict[str, Any]) -> tuple[str, str, str] | None:
    """(node, namespace, service account) of a live, scheduled Pod manifest, else None."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    node = spec.get("nodeName")
    if not node or status.get("phase") in TERMINAL_PHASES:
        return None
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    return str(node), str(meta.get("namespace") or "default"), str(sa)


class StoreNodeDirectory:
    """Reads Node and Pod manifests from a `ketch.store.Store` on every question."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def node_exists(self, name: str) -> bool:
        try:
            self._store.get("Node", "", name)
        except NotFoundError:
            return False
        return True

    def has_workload(self, node: str, namespace: str, service_account: str) -> bool:
        pods = self._store.list("Pod", namespace).items
        return any(pod_placement(p) == (node, namespace, service_account) for p in pods)
