"""Kubelet behaviour that needs no namespaces: waiting for its Node, ignoring other nodes'
pods, and reporting pods it cannot parse (memory store, no root)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster.backoff import BackoffPolicy
from ketch.cluster.kubelet import Kubelet
from ketch.cluster.layout import ClusterLayout
from ketch.store.memory import MemoryStore
from ketch.util.tasks import spawn


def node(cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDR": cidr},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.1"}]},
    }


async def eventually(check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_waits_for_a_usable_node_and_stops_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ketch")
    store = MemoryStore()
    kubelet = Kubelet(store, ClusterLayout(tmp_path, "u"), "n1", backoff=BackoffPolicy(0.1, 0.1))
    stop = asyncio.Event()
    task = spawn(kubelet.run(stop), "kubelet")
    await eventually(lambda: "is not in the store yet" in caplog.text)
    store.apply([node("10.244.1.0/31")])
    await eventually(lambda: "unusable spec.podCIDR" in caplog.text)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert kubelet.ipam is None
    assert not [r for r in caplog.records if r.exc_info]


async def test_invalid_and_foreign_pods(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ketch")
    store = MemoryStore()
    store.apply([node("10.244.1.0/24")])
    kubelet = Kubelet(store, ClusterLayout(tmp_path, "u"), "n1", backoff=BackoffPolicy(0.1, 0.1))
    stop = asyncio.Event()
    task = spawn(kubelet.run(stop), "kubelet")
    try:
        await eventually(lambda: kubelet.ipam is not None)
        store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "bad", "namespace": "default"},
                    "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "other", "namespace": "default"},
                    "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "nginx"}]},
                },
            ]
        )

        def bad_status() -> dict[str, Any]:
            return dict(store.get("Pod", "default", "bad").get("status") or {})

        await eventually(lambda: bad_status().get("reason") == "InvalidPod")
        assert bad_status()["phase"] == "Failed"
        assert "spec.containers.0.command" in bad_status()["message"]
        assert "cannot pull images" in bad_status()["message"]
        await asyncio.sleep(0.3)
        assert "status" not in store.get("Pod", "default", "other")
        assert kubelet.pods == {}
        rv = store.get("Pod", "default", "bad")["metadata"]["resourceVersion"]
        await asyncio.sleep(0.3)  # its own write does not make it write again
        assert store.get("Pod", "default", "bad")["metadata"]["resourceVersion"] == rv
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert caplog.text.count("the pod is invalid") == 1
    assert not [r for r in caplog.records if r.exc_info]


class RacingStore(MemoryStore):
    """Another writer changes the Pod just before the kubelet's first status write lands."""

    raced = False

    def apply(self, objects: Any, *, create_only: bool = False) -> list[dict[str, Any]]:
        first = objects[0]
        if first.get("kind") == "Pod" and "status" in first and not self.raced:
            self.raced = True
            other = self.get("Pod", first["metadata"]["namespace"], first["metadata"]["name"])
            other["metadata"].setdefault("labels", {})["touched"] = "yes"
            super().apply([other])
        return super().apply(objects, create_only=create_only)


async def test_status_write_survives_a_conflict(tmp_path: Path) -> None:
    store = RacingStore()
    store.apply([node("10.244.1.0/24")])
    kubelet = Kubelet(store, ClusterLayout(tmp_path, "u"), "n1", backoff=BackoffPolicy(0.1, 0.1))
    stop = asyncio.Event()
    task = spawn(kubelet.run(stop), "kubelet")
    try:
        store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "hn", "namespace": "default"},
                    "spec": {
                        "nodeName": "n1",
                        "hostNetwork": True,  # refused without touching the network: no root
                        "containers": [{"name": "c", "command": ["true"]}],
                    },
                }
            ]
        )

        def stored() -> dict[str, Any]:
            return store.get("Pod", "default", "hn")

        await eventually(lambda: (stored().get("status") or {}).get("phase") == "Failed")
        assert store.raced
        assert stored()["metadata"]["labels"] == {"touched": "yes"}  # the other write kept
        assert stored()["status"]["reason"] == "HostNetworkUnsupported"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
