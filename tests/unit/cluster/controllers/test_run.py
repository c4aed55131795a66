"""`run_controllers` against a real SQLite store in a temporary directory, with a second
store connection playing the kubelet (as the node processes do). No root needed."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster.controllers import run_controllers
from ketch.cluster.controllers.meta import fmt_time
from ketch.store import ConflictError, ListResult, Manifest, MemoryStore, SqliteStore
from ketch.util.tasks import spawn
from tests.unit.cluster.controllers.sim import deployment_manifest, node_manifest


async def eventually(check: Callable[[], Any], what: str, within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


class Kubelet:
    """Marks bound pods Running/Ready with an IP, through its own store connection."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.next_ip = 10

    def ready_all(self) -> int:
        done = 0
        for m in self.store.list("Pod", "default").items:
            node = m["spec"].get("nodeName")
            status = m.get("status") or {}
            if not node or status.get("phase") == "Running":
                continue
            self.next_ip += 1
            n = 1 if node == "node1" else 2
            ip = f"10.244.{n}.{self.next_ip}"
            conds = [c for c in status.get("conditions") or [] if c["type"] != "Ready"]
            conds.append(
                {
                    "type": "Ready",
                    "status": "True",
                    "lastTransitionTime": fmt_time(dt.datetime.now(dt.UTC)),
                }
            )
            status.update(phase="Running", podIP=ip, podIPs=[{"ip": ip}], conditions=conds)
            m["status"] = status
            try:
                self.store.apply([m])
                done += 1
            except ConflictError:
                pass
        return done


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore]]:
    path = tmp_path / "ketch.db"
    controller_store = SqliteStore(path)
    user_store = SqliteStore(path)
    user_store.apply([node_manifest("node1"), node_manifest("node2")])
    stop = asyncio.Event()
    task = spawn(run_controllers(controller_store, stop), "test-controllers")
    try:
        yield controller_store, user_store
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        assert not any(t.name == "controllers-watch" for t in threading.enumerate())
        controller_store.close()
        user_store.close()


def edit(store: SqliteStore, kind: str, name: str, change: Callable[[Manifest], None]) -> Manifest:
    """Read-modify-write with compare-and-swap, retried on conflict (as `ketch` commands do)."""
    for _ in range(50):
        m = store.get(kind, "default", name)
        change(m)
        try:
            return store.apply([m])[0]
        except ConflictError:
            continue
    raise AssertionError(f"{kind} {name}: 50 conflicts in a row")


def slice_endpoints(store: SqliteStore) -> list[dict[str, Any]]:
    slices = store.list("EndpointSlice", "default", "kubernetes.io/service-name=web").items
    return [ep for s in slices for ep in s["endpoints"]]


def one_slice(store: SqliteStore) -> list[Manifest] | None:
    slices = store.list("EndpointSlice", "default").items
    return slices if len(slices) == 1 else None


def ready_ips(store: SqliteStore) -> set[str]:
    return {ep["addresses"][0] for ep in slice_endpoints(store) if ep["conditions"]["ready"]}


def pods(store: SqliteStore) -> list[Manifest]:
    return store.list("Pod", "default").items


async def test_deployment_service_scale_and_delete(
    cluster: tuple[SqliteStore, SqliteStore],
) -> None:
    _, store = cluster
    kubelet = Kubelet(store)
    svc: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"app": "web"},
            "clusterIP": "10.96.0.20",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    store.apply([deployment_manifest(replicas=3), svc])

    bound = await eventually(
        lambda: len([p for p in pods(store) if p["spec"].get("nodeName")]) == 3 and pods(store),
        "3 pods bound",
    )
    assert sorted(p["spec"]["nodeName"] for p in bound) == ["node1", "node1", "node2"]
    assert slice_endpoints(store) == [] or not ready_ips(store)

    await eventually(
        lambda: (
            kubelet.ready_all() == 0
            and all(p["status"].get("phase") == "Running" for p in pods(store))
        ),
        "the kubelet to mark every pod Ready",
    )
    ips = {p["status"]["podIP"] for p in pods(store)}
    await eventually(lambda: ready_ips(store) == ips, "the slice to list the 3 ready pods")
    # (the empty placeholder slice goes right after the real one is written)
    (slice_,) = await eventually(lambda: one_slice(store), "one slice")
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    await eventually(
        lambda: (
            (store.get("Deployment", "default", "web").get("status") or {}).get("availableReplicas")
            == 3
        ),
        "deployment status availableReplicas=3",
    )

    # A pod turns not ready (failing readiness probe): it leaves the ready endpoints.
    victim = pods(store)[0]
    victim["status"]["conditions"] = [
        {
            "type": "Ready",
            "status": "False",
            "lastTransitionTime": fmt_time(dt.datetime.now(dt.UTC)),
        }
    ]
    store.apply([victim])
    await eventually(
        lambda: ready_ips(store) == ips - {victim["status"]["podIP"]}, "not-ready pod out"
    )

    # Scale to 1: the slice shrinks with the pods.
    edit(store, "Deployment", "web", lambda m: m["spec"].update(replicas=1))
    await eventually(lambda: len(pods(store)) == 1, "scale down to 1 pod")
    (survivor,) = pods(store)
    assert survivor["metadata"]["name"] != victim["metadata"]["name"]  # not-ready pods go first
    await eventually(
        lambda: (
            [ep["targetRef"]["name"] for ep in slice_endpoints(store)]
            == [survivor["metadata"]["name"]]
        ),
        "slice to list only the surviving pod",
    )

    # Delete the Deployment: its ReplicaSet and pods are collected.
    store.delete("Deployment", "default", "web")
    await eventually(
        lambda: not store.list("ReplicaSet", "default").items and not pods(store),
        "ReplicaSet and pods deleted with their Deployment",
    )
    store.delete("Service", "default", "web")
    await eventually(
        lambda: not store.list("EndpointSlice", "default").items, "slices deleted with the Service"
    )


async def test_bad_objects_do_not_stop_the_controllers(
    cluster: tuple[SqliteStore, SqliteStore],
) -> None:
    _, store = cluster
    broken = deployment_manifest("broken")
    broken["spec"]["replicas"] = "three"  # written past validation, as a buggy writer might
    store.apply([broken, deployment_manifest("good", replicas=1)])
    await eventually(
        lambda: [p for p in pods(store) if p["metadata"]["name"].startswith("good-")],
        "the good deployment's pod",
    )
    assert store.list("ReplicaSet", "default", "app=broken").items == []


class GatedStore(MemoryStore):
    """A MemoryStore whose Pod listing blocks until the test opens the gate, and which
    records whether it was used after the controllers returned."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.closed = False
        self.used_after_close = False

    def list(
        self, kind: str | None = None, namespace: str | None = None, selector: str | None = None
    ) -> ListResult:
        if self.closed:
            self.used_after_close = True
        if kind == "Pod" and not self.gate.is_set():
            self.entered.set()
            self.gate.wait(10)
        return super().list(kind, namespace, selector)


async def test_stop_waits_for_a_sync_in_flight() -> None:
    store = GatedStore()
    store.apply([node_manifest("node1"), deployment_manifest(replicas=1)])
    stop = asyncio.Event()
    task = spawn(run_controllers(store, stop), "test-controllers")
    await eventually(store.entered.is_set, "a sync to be in flight")
    stop.set()
    await asyncio.sleep(0.3)
    assert not task.done()  # still waiting for the blocked sync
    store.gate.set()
    await asyncio.wait_for(task, 10)
    store.closed = True
    await asyncio.sleep(0.3)
    assert not store.used_after_close
