"""Node objects of the local cluster: index assignment, manifests, readiness, heartbeat."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from ketch.api.core import Node
from ketch.cluster import nodes
from ketch.cluster.layout import ClusterLayout
from ketch.store import MemoryStore

LAYOUT = ClusterLayout(Path("/tmp/x"), "t")
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("cidr", "index"),
    [
        ("10.244.1.0/24", 1),
        ("10.244.254.0/24", 254),
        ("10.244.0.0/24", None),  # index 0 does not exist
        ("10.244.255.0/24", None),
        ("10.244.3.0/25", None),
        ("10.245.3.0/24", None),
        ("10.244.3.7/24", None),  # host bits: not a network
        ("fd00::/64", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_index_from_cidr(cidr: str | None, index: int | None) -> None:
    assert nodes.index_from_cidr(cidr) == index


@pytest.mark.parametrize(
    ("existing", "count", "expected"),
    [
        ({}, 2, {"node1": 1, "node2": 2}),
        # existing nodes keep their index, even when it is not the "natural" one
        ({"node1": 2, "node2": 1}, 2, {"node2": 1, "node1": 2}),
        # a hole is filled by the lowest free index
        ({"node2": 2}, 3, {"node1": 1, "node2": 2, "node3": 3}),
        ({"node1": 5}, 2, {"node2": 1, "node1": 5}),
        # nodes beyond --nodes that the store has are kept (their pods come back)
        ({"node1": 1, "node2": 2, "node3": 3}, 2, {"node1": 1, "node2": 2, "node3": 3}),
        # a Node without a pod CIDR (e.g. from `ketch node token create`) gets one if wanted
        ({"node1": None, "edge": None}, 1, {"node1": 1}),
    ],
)
def test_assign_indices(
    existing: dict[str, int | None], count: int, expected: dict[str, int]
) -> None:
    got = nodes.assign_indices(existing, nodes.wanted_names(count))
    assert got == expected
    assert list(got.values()) == sorted(got.values())


def test_assign_indices_refuses_duplicate_index() -> None:
    with pytest.raises(nodes.NodeError, match=r"node1 and node2 both have spec.podCIDR 10\.244\.1"):
        nodes.assign_indices({"node1": 1, "node2": 1}, ["node1"])


@pytest.mark.parametrize("count", [0, -1, 255])
def test_wanted_names_bounds(count: int) -> None:
    with pytest.raises(nodes.NodeError, match="1 to 254"):
        nodes.wanted_names(count)


def test_node_manifest_new_is_valid_and_unknown() -> None:
    m = nodes.node_manifest(LAYOUT, "node2", 2, None)
    node = Node.model_validate(m)
    assert node.spec is not None
    assert node.spec.pod_cidr == "10.244.2.0/24"
    assert node.internal_ips() == ["172.18.0.2"]
    assert {"type": "Hostname", "address": "node2"} in m["status"]["addresses"]
    assert m["metadata"]["labels"]["ketch.dev/cluster"] == "t"
    cond = nodes.ready_condition(m)
    assert cond is not None
    assert cond["status"] == "Unknown"
    assert not nodes.is_ready(m)


def test_node_manifest_keeps_existing_fields_and_ready() -> None:
    existing = nodes.with_ready(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node1", "labels": {"zone": "a"}, "resourceVersion": "7"},
            "spec": {"unschedulable": True},
        },
        "True",
        "KetchNodeReady",
        "up",
        T0,
    )
    m = nodes.node_manifest(LAYOUT, "node1", 1, existing)
    assert m["metadata"]["labels"]["zone"] == "a"
    assert m["metadata"]["resourceVersion"] == "7"  # compare-and-swap on write
    assert m["spec"]["unschedulable"] is True
    assert nodes.ready_condition(m) == nodes.ready_condition(existing)
    assert existing["spec"] == {"unschedulable": True}  # input not mutated


def test_with_ready_moves_transition_time_only_on_change() -> None:
    base = nodes.node_manifest(LAYOUT, "node1", 1, None)
    a = nodes.with_ready(base, "True", "R", "m", T0)
    b = nodes.with_ready(a, "True", "R", "m", T0 + dt.timedelta(seconds=10))
    ca, cb = nodes.ready_condition(a), nodes.ready_condition(b)
    assert ca is not None
    assert cb is not None
    assert cb["lastTransitionTime"] == ca["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert cb["lastHeartbeatTime"] == "2026-01-02T03:04:15Z"
    c = nodes.with_ready(b, "False", "S", "m", T0 + dt.timedelta(seconds=20))
    cc = nodes.ready_condition(c)
    assert cc is not None
    assert cc["lastTransitionTime"] == "2026-01-02T03:04:25Z"
    assert [x["type"] for x in c["status"]["conditions"]].count("Ready") == 1


@pytest.mark.parametrize(
    ("status", "age", "ready"),
    [
        ("True", 5, True),
        ("True", 40, True),
        ("True", 41, False),
        ("False", 1, False),
        ("Unknown", 1, False),
    ],
)
def test_is_ready_needs_fresh_heartbeat(status: str, age: int, ready: bool) -> None:
    m = nodes.with_ready(nodes.node_manifest(LAYOUT, "n", 1, None), status, "r", "m", T0)
    assert nodes.is_ready(m, now=T0 + dt.timedelta(seconds=age)) is ready


def test_ensure_nodes_is_stable_across_runs() -> None:
    store = MemoryStore()
    first = nodes.ensure_nodes(store, LAYOUT, 2)
    assert [(n.name, n.index) for n in first] == [("node1", 1), ("node2", 2)]
    # someone heartbeats node2; ketch up again keeps its Ready condition and index
    nodes.heartbeat(store, "node2")
    again = nodes.ensure_nodes(store, LAYOUT, 3)
    assert [(n.name, n.index) for n in again] == [("node1", 1), ("node2", 2), ("node3", 3)]
    m2 = store.get("Node", "", "node2")
    assert nodes.is_ready(m2)
    # fewer --nodes keeps the extra node (state survives)
    assert len(nodes.ensure_nodes(store, LAYOUT, 1)) == 3
    assert [n.name for n in nodes.cluster_nodes(store)] == ["node1", "node2", "node3"]


def test_heartbeat_and_mark_stopped() -> None:
    store = MemoryStore()
    nodes.ensure_nodes(store, LAYOUT, 2)
    assert nodes.heartbeat(store, "missing") is None
    nodes.heartbeat(store, "node1")
    assert nodes.is_ready(store.get("Node", "", "node1"))
    assert nodes.mark_stopped(store, ["node1", "node2", "gone"]) == ["node1", "node2"]
    cond = nodes.ready_condition(store.get("Node", "", "node1"))
    assert cond is not None
    assert cond["status"] == "Unknown"
    assert cond["reason"] == "NodeStopped"


async def test_heartbeat_task_beats_then_reports_stopped() -> None:
    store = MemoryStore()
    nodes.ensure_nodes(store, LAYOUT, 1)
    stop = asyncio.Event()
    hb = nodes.Heartbeat(store, "node1", interval=0.05)
    task = asyncio.ensure_future(hb.run(stop))
    for _ in range(200):
        if nodes.is_ready(store.get("Node", "", "node1")):
            break
        await asyncio.sleep(0.01)
    assert nodes.is_ready(store.get("Node", "", "node1"))
    first_rv = store.get("Node", "", "node1")["metadata"]["resourceVersion"]
    for _ in range(200):  # it keeps beating
        if store.get("Node", "", "node1")["metadata"]["resourceVersion"] != first_rv:
            break
        await asyncio.sleep(0.01)
    assert store.get("Node", "", "node1")["metadata"]["resourceVersion"] != first_rv
    stop.set()
    await asyncio.wait_for(task, 5)
    cond = nodes.ready_condition(store.get("Node", "", "node1"))
    assert cond is not None
    assert cond["status"] == "False"
