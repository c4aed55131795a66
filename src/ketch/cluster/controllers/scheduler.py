"""The scheduler's decision, pure: which node a pod runs on, or why it cannot run anywhere.

`schedule(pod, nodes, pods_by_node, now)` filters the nodes the way kube-scheduler's default
filters do for the fields Ketch has (NodeUnschedulable, the not-ready taint, NodeAffinity for
`nodeSelector`), then scores by spreading: the node with the fewest pods wins, ties go to the
first name. Decisions, not writes: `controllers.sync` binds (sets `spec.nodeName` and
`PodScheduled=True`) or records the reason (`PodScheduled=False`).

A node is Ready when its Ready condition is True *and* its `lastHeartbeatTime` is at most
40 s old (kube-controller-manager's node-monitor-grace-period): a node process that died
stops heartbeating, and no new pod goes there.

A pod that names its node (`spec.nodeName`, written by the user) skips scheduling, as in
Kubernetes. If that node does not exist, Kubernetes leaves the pod Pending silently (and its
pod GC later deletes it); Ketch keeps the pod and says why: `PodScheduled=False`, reason
`NodeNotFound`, naming the nodes that exist. A pod that a controller made (it has a
controller reference) and whose node has been gone for 40 s is deleted instead, so its
ReplicaSet replaces it on a node that exists (Kubernetes' pod GC does the same for pods
bound to deleted nodes, after the same quarantine).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ketch.api.core import Node, Pod
from ketch.cluster.controllers.meta import controller_of, find_condition, parse_time

HEARTBEAT_GRACE = dt.timedelta(seconds=40)
ORPHAN_QUARANTINE = dt.timedelta(seconds=40)
HOSTNAME_LABEL = "kubernetes.io/hostname"

# kube-scheduler's wording, so messages read the same as on a real cluster.
NOT_READY = "node(s) were not ready"
CORDONED = "node(s) were unschedulable"
SELECTOR_MISMATCH = "node(s) didn't match Pod's node affinity/selector"


@dataclass(frozen=True)
class Bind:
    """Bind the pod to `node`."""

    node: str


@dataclass(frozen=True)
class Keep:
    """The pod already names an existing node; nothing to do."""

    node: str


@dataclass(frozen=True)
class Unschedulable:
    """No node fits (reason `Unschedulable`) or the named node does not exist
    (`NodeNotFound`); `message` is for `ketch describe pod`."""

    reason: str
    message: str


Decision = Bind | Keep | Unschedulable


def node_is_ready(node: Node, now: dt.datetime) -> bool:
    ready = find_condition(node.status.conditions if node.status else None, "Ready")
    if ready is None or ready.status != "True":
        return False
    beat = parse_time(ready.last_heartbeat_time)
    return beat is not None and now - beat <= HEARTBEAT_GRACE


def node_labels(node: Node) -> dict[str, str]:
    """The node's labels plus `kubernetes.io/hostname`, which every node carries."""
    return {**node.labels, HOSTNAME_LABEL: node.name}


def _misfit(pod: Pod, node: Node, now: dt.datetime) -> str | None:
    """Why `node` cannot take `pod` (the first failing filter), or None if it can."""
    if node.spec is not None and node.spec.unschedulable:
        return CORDONED
    if not node_is_ready(node, now):
        return NOT_READY
    labels = node_labels(node)
    for key, value in (pod.spec.node_selector or {}).items():
        if labels.get(key) != value:
            return SELECTOR_MISMATCH
    return None


def schedule(
    pod: Pod, nodes: Sequence[Node], pods_by_node: Mapping[str, int], now: dt.datetime
) -> Decision:
    """Where `pod` should run. `pods_by_node`: how many live pods each node runs now."""
    names = sorted(n.name for n in nodes)
    if pod.spec.node_name:
        if pod.spec.node_name in names:
            return Keep(pod.spec.node_name)
        return Unschedulable(
            "NodeNotFound",
            f"spec.nodeName names node {pod.spec.node_name!r}, which does not exist "
            f"(nodes: {', '.join(names) or 'none'}); remove spec.nodeName to let the "
            "scheduler choose, or use an existing node",
        )
    if not nodes:
        return Unschedulable(
            "Unschedulable",
            "0/0 nodes are available: no nodes in the cluster (start them with `ketch up`).",
        )
    reasons: Counter[str] = Counter()
    fits: list[Node] = []
    for node in nodes:
        why = _misfit(pod, node, now)
        if why is None:
            fits.append(node)
        else:
            reasons[why] += 1
    if not fits:
        parts = sorted(f"{count} {reason}" for reason, count in reasons.items())
        return Unschedulable(
            "Unschedulable", f"0/{len(nodes)} nodes are available: {', '.join(parts)}."
        )
    best = min(fits, key=lambda n: (pods_by_node.get(n.name, 0), n.name))
    return Bind(best.name)


def should_delete_orphan(pod: Pod, decision: Decision, now: dt.datetime) -> bool:
    """A controller-made pod bound to a node that has been missing for ORPHAN_QUARANTINE."""
    if not (isinstance(decision, Unschedulable) and decision.reason == "NodeNotFound"):
        return False
    if controller_of(pod) is None:
        return False  # the user named the node: keep the pod and say why
    cond = find_condition(pod.status.conditions if pod.status else None, "PodScheduled")
    if cond is None or cond.reason != "NodeNotFound":
        return False
    since = parse_time(cond.last_transition_time)
    return since is not None and now - since >= ORPHAN_QUARANTINE
