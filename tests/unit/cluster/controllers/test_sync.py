"""The store I/O layer: what the controllers write, and what they never overwrite."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pytest

from ketch.api.core import Service
from ketch.cluster.controllers import sync
from ketch.cluster.controllers.endpoints import desired_slices
from ketch.store import ConflictError, Manifest, MemoryStore
from tests.unit.cluster.controllers.sim import node_manifest

NOW = dt.datetime.now(dt.UTC)


def pod_manifest(name: str, **spec: Any) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "command": ["sleep", "1d"]}], **spec},
    }


def conditions(m: Manifest) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (m.get("status") or {}).get("conditions") or []}


def test_binds_pending_pods_spread_and_sets_pod_scheduled() -> None:
    store = MemoryStore()
    store.apply([node_manifest("node1"), node_manifest("node2")])
    store.apply([pod_manifest(f"p{i}") for i in range(4)])
    assert sync.sync_scheduler(store, NOW) is False
    pods = store.list("Pod").items
    assert sorted(p["spec"]["nodeName"] for p in pods) == ["node1", "node1", "node2", "node2"]
    for p in pods:
        assert conditions(p)["PodScheduled"]["status"] == "True"
        assert p["status"]["phase"] == "Pending"


def test_unschedulable_pod_gets_a_reason_once() -> None:
    store = MemoryStore()
    stale = node_manifest("node1")
    stale["status"]["conditions"][0]["lastHeartbeatTime"] = "2020-01-01T00:00:00Z"
    store.apply([stale, pod_manifest("p", nodeSelector={"disk": "ssd"})])
    sync.sync_scheduler(store, NOW)
    p = store.get("Pod", "default", "p")
    cond = conditions(p)["PodScheduled"]
    assert (cond["status"], cond["reason"]) == ("False", "Unschedulable")
    assert cond["message"] == "0/1 nodes are available: 1 node(s) were not ready."
    rv = p["metadata"]["resourceVersion"]
    sync.sync_scheduler(store, NOW)  # nothing changed: no write
    assert store.get("Pod", "default", "p")["metadata"]["resourceVersion"] == rv
    # the node comes back: the pod is bound and the condition flips
    store.apply([node_manifest("node1")])
    sync.sync_scheduler(store, NOW)
    p = store.get("Pod", "default", "p")
    assert "nodeName" not in p["spec"]  # still: node1 has no disk=ssd label
    assert "didn't match Pod's node affinity/selector" in conditions(p)["PodScheduled"]["message"]


def test_node_not_found_then_node_appears() -> None:
    store = MemoryStore()
    store.apply([node_manifest("node1"), pod_manifest("p", nodeName="node9")])
    sync.sync_scheduler(store, NOW)
    cond = conditions(store.get("Pod", "default", "p"))["PodScheduled"]
    assert (cond["status"], cond["reason"]) == ("False", "NodeNotFound")
    assert "node9" in cond["message"]
    store.apply([node_manifest("node9")])
    sync.sync_scheduler(store, NOW)
    p = store.get("Pod", "default", "p")
    assert p["spec"]["nodeName"] == "node9"
    assert conditions(p)["PodScheduled"]["status"] == "True"


def test_scheduler_keeps_the_kubelets_status_fields() -> None:
    store = MemoryStore()
    store.apply([node_manifest("node1")])
    m = pod_manifest("p", nodeName="ghost")
    m["status"] = {
        "phase": "Pending",
        "hostIP": "172.18.0.1",
        "conditions": [{"type": "Initialized", "status": "True"}],
    }
    store.apply([m])
    sync.sync_scheduler(store, NOW)
    p = store.get("Pod", "default", "p")
    assert p["status"]["hostIP"] == "172.18.0.1"
    assert set(conditions(p)) == {"Initialized", "PodScheduled"}


def test_binding_is_compare_and_swap() -> None:
    store = MemoryStore()
    store.apply([node_manifest("node1"), pod_manifest("p")])
    original_get = store.get

    def racing_get(kind: str, namespace: str, name: str) -> Manifest:
        got = original_get(kind, namespace, name)
        if kind == "Pod":  # someone writes the pod between our read and our write
            original = original_get(kind, namespace, name)
            original.setdefault("metadata", {}).setdefault("annotations", {})["x"] = "y"
            store.apply([original])
        return got

    store.get = racing_get  # type: ignore[method-assign]
    assert sync.sync_scheduler(store, NOW) is True  # conflict reported: run again
    store.get = original_get  # type: ignore[method-assign]
    assert "nodeName" not in store.get("Pod", "default", "p")["spec"]
    assert store.get("Pod", "default", "p")["metadata"]["annotations"] == {"x": "y"}
    sync.sync_scheduler(store, NOW)
    assert store.get("Pod", "default", "p")["spec"]["nodeName"] == "node1"


def test_invalid_objects_are_skipped_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    bad = pod_manifest("bad")
    bad["spec"]["containers"] = [{"name": "c", "image": "nginx"}]  # no command
    store.apply([node_manifest("node1"), bad, pod_manifest("good")])
    with caplog.at_level(logging.WARNING, "ketch.cluster.controllers"):
        sync.sync_scheduler(store, NOW)
        sync.sync_scheduler(store, NOW)
    assert store.get("Pod", "default", "good")["spec"]["nodeName"] == "node1"
    lines = [r.getMessage() for r in caplog.records if "bad" in r.getMessage()]
    assert len(lines) == 1
    assert "skipping invalid Pod default/bad" in lines[0]


def service_manifest(selector: dict[str, str] | None) -> Manifest:
    spec: dict[str, Any] = {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "targetPort": 8080}]}
    if selector is not None:
        spec["selector"] = selector
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


def test_endpoint_sync_follows_readiness_and_leaves_user_slices() -> None:
    store = MemoryStore()
    p = pod_manifest("a", nodeName="node1")
    p["status"] = {
        "phase": "Running",
        "podIP": "10.244.1.5",
        "conditions": [{"type": "Ready", "status": "False"}],
    }
    store.apply([service_manifest({"app": "web"}), p])
    sync.sync_endpoints(store, "default")
    (s,) = store.list("EndpointSlice", "default").items
    assert s["endpoints"][0]["conditions"]["ready"] is False
    p = store.get("Pod", "default", "a")
    p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    store.apply([p])
    sync.sync_endpoints(store, "default")
    (s2,) = store.list("EndpointSlice", "default").items
    assert s2["metadata"]["name"] == s["metadata"]["name"]
    assert s2["endpoints"][0]["conditions"]["ready"] is True
    rv = s2["metadata"]["resourceVersion"]
    sync.sync_endpoints(store, "default")
    assert store.list("EndpointSlice", "default").items[0]["metadata"]["resourceVersion"] == rv

    # selector removed: managed slices go, a user's slice stays
    user = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-user",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"]}],
    }
    svc = store.get("Service", "default", "web")
    del svc["spec"]["selector"]
    store.apply([svc, user])
    sync.sync_endpoints(store, "default")
    assert [m["metadata"]["name"] for m in store.list("EndpointSlice", "default").items] == [
        "web-user"
    ]


def test_deleting_a_service_collects_its_slices() -> None:
    store = MemoryStore()
    store.apply([service_manifest({"app": "web"})])
    sync.sync_endpoints(store, "default")
    assert len(store.list("EndpointSlice", "default").items) == 1
    store.delete("Service", "default", "web")
    sync.sync_gc(store, "default")
    assert store.list("EndpointSlice", "default").items == []


def test_status_write_conflict_propagates() -> None:
    store = MemoryStore()
    store.apply([node_manifest("node1")])
    rs: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "web-x", "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_manifest("t")["spec"]},
        },
    }
    (stored,) = store.apply([rs])
    stale = dict(stored)
    store.apply(
        [
            {
                **stored,
                "spec": {**stored["spec"], "replicas": 0},
                "metadata": {**stored["metadata"], "labels": {"a": "b"}},
            }
        ]
    )
    with pytest.raises(ConflictError):
        sync._write_status(store, stale, {"replicas": 0})


def test_slice_name_held_by_another_services_slice_is_not_overwritten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    (svc,) = store.apply([service_manifest({"app": "web"})])
    (wanted,) = desired_slices(Service.model_validate(svc), [])
    squatter = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": wanted["metadata"]["name"],
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "other"},
        },
        "addressType": "IPv4",
        "endpoints": [],
    }
    store.apply([squatter])
    with caplog.at_level(logging.WARNING, "ketch.cluster.controllers"):
        sync.sync_endpoints(store, "default")  # no AlreadyExistsError, no overwrite
        sync.sync_endpoints(store, "default")
    (only,) = store.list("EndpointSlice", "default").items
    assert only["metadata"]["labels"] == {"kubernetes.io/service-name": "other"}
    assert sum("belongs to another Service" in r.getMessage() for r in caplog.records) == 1
