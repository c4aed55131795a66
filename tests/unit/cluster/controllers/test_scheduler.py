"""The scheduler's decision: spreading, selectors, node readiness, nodeName."""

from __future__ import annotations

import pytest

from ketch.api.base import Condition
from ketch.api.core import Pod
from ketch.cluster.controllers.scheduler import (
    Bind,
    Keep,
    Unschedulable,
    node_is_ready,
    schedule,
    should_delete_orphan,
)
from tests.unit.cluster.controllers.factory import NOW, ago, node, pod, replicaset


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, "a"),  # tie: first name
        ({"a": 1}, "b"),
        ({"a": 1, "b": 1}, "c"),
        ({"a": 2, "b": 1, "c": 1}, "b"),
        ({"a": 0, "b": 5, "c": 0}, "a"),
    ],
)
def test_spreads_to_the_node_with_fewest_pods(counts: dict[str, int], expected: str) -> None:
    nodes = [node("c"), node("a"), node("b")]
    assert schedule(pod("p"), nodes, counts, NOW) == Bind(expected)


def test_spreading_three_replicas_over_two_nodes() -> None:
    nodes = [node("node1"), node("node2")]
    counts: dict[str, int] = {}
    placed = []
    for i in range(5):
        decision = schedule(pod(f"p{i}"), nodes, counts, NOW)
        assert isinstance(decision, Bind)
        counts[decision.node] = counts.get(decision.node, 0) + 1
        placed.append(decision.node)
    assert placed == ["node1", "node2", "node1", "node2", "node1"]


@pytest.mark.parametrize(
    ("nodes", "ready"),
    [
        ([node("a", ready=False)], False),
        ([node("a", heartbeat_age=41)], False),  # stale heartbeat: the node process is gone
        ([node("a", heartbeat_age=39)], True),
        ([node("a", heartbeat_age=-3)], True),  # clocks a little apart
    ],
)
def test_node_readiness_needs_a_fresh_heartbeat(nodes: list, ready: bool) -> None:  # type: ignore[type-arg]
    assert node_is_ready(nodes[0], NOW) is ready


def test_node_without_heartbeat_is_not_ready() -> None:
    n = node("a")
    assert n.status is not None
    assert n.status.conditions is not None
    n.status.conditions[0].last_heartbeat_time = None
    assert not node_is_ready(n, NOW)


def test_skips_not_ready_stale_and_cordoned_nodes() -> None:
    nodes = [
        node("a", ready=False),
        node("b", heartbeat_age=300),
        node("c", unschedulable=True),
        node("d"),
    ]
    assert schedule(pod("p"), nodes, {"d": 10}, NOW) == Bind("d")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"disk": "ssd"}, "b"),
        ({"kubernetes.io/hostname": "a"}, "a"),  # every node carries its hostname label
        ({"disk": "ssd", "zone": "z1"}, "c"),
    ],
)
def test_node_selector(selector: dict[str, str], expected: str) -> None:
    nodes = [
        node("a"),
        node("b", labels={"disk": "ssd"}),
        node("c", labels={"disk": "ssd", "zone": "z1"}),
    ]
    counts = {"b": 0, "c": 3}
    assert schedule(pod("p", node_selector=selector), nodes, counts, NOW) == Bind(expected)


def test_unschedulable_message_counts_reasons_like_kube_scheduler() -> None:
    nodes = [node("a", labels={"disk": "hdd"}), node("b", ready=False)]
    decision = schedule(pod("p", node_selector={"disk": "ssd"}), nodes, {}, NOW)
    assert decision == Unschedulable(
        "Unschedulable",
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) were not ready.",
    )


def test_unschedulable_cordoned_and_counts_merge() -> None:
    nodes = [node("a", unschedulable=True), node("b", ready=False), node("c", ready=False)]
    decision = schedule(pod("p"), nodes, {}, NOW)
    assert isinstance(decision, Unschedulable)
    assert decision.message == (
        "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) were not ready."
    )


def test_no_nodes_at_all() -> None:
    decision = schedule(pod("p"), [], {}, NOW)
    assert isinstance(decision, Unschedulable)
    assert decision.message.startswith("0/0 nodes are available")
    assert "ketch up" in decision.message


def test_pod_with_node_name_is_left_alone_even_on_a_not_ready_node() -> None:
    nodes = [node("a", ready=False), node("b")]
    assert schedule(pod("p", node_name="a"), nodes, {}, NOW) == Keep("a")


def test_pod_naming_a_missing_node_gets_node_not_found() -> None:
    decision = schedule(pod("p", node_name="ghost"), [node("a"), node("b")], {}, NOW)
    assert isinstance(decision, Unschedulable)
    assert decision.reason == "NodeNotFound"
    assert "'ghost'" in decision.message
    assert "a, b" in decision.message


def _node_not_found_for(p: Pod, seconds: float) -> None:
    assert p.status is not None
    p.status.conditions = [
        Condition(
            type="PodScheduled",
            status="False",
            reason="NodeNotFound",
            last_transition_time=ago(seconds),
        )
    ]


@pytest.mark.parametrize(
    ("owned", "gone_for", "expected"),
    [
        (True, 41, True),
        (True, 10, False),  # quarantine: the node may be coming back
        (False, 3600, False),  # the user's own pod: keep it and say why
    ],
)
def test_controller_pods_on_vanished_nodes_are_deleted_after_quarantine(
    owned: bool, gone_for: float, expected: bool
) -> None:
    p = pod("p", node_name="gone", owner=replicaset() if owned else None)
    _node_not_found_for(p, gone_for)
    decision = schedule(p, [node("a")], {}, NOW)
    assert should_delete_orphan(p, decision, NOW) is expected
