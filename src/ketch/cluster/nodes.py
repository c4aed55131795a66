"""Node objects of the local cluster: index assignment, the manifests, the heartbeat.

A node's index n (1-based) fixes its addresses (underlay 172.18.0.n, pods 10.244.n.0/24),
and it is stored in the Node object itself as `spec.podCIDR`: the index of an existing node
is read back from there, so it never changes across `ketch down`/`ketch up` (its pods keep
their addresses' subnet) and every process derives the same addresses from the store.

Readiness follows Kubernetes: the node process updates the `Ready` condition's
`lastHeartbeatTime` every `HEARTBEAT_INTERVAL` seconds while it runs; `ketch down` sets
Ready to Unknown (like the node lifecycle controller does when heartbeats stop), and readers
treat a heartbeat older than `HEARTBEAT_STALE` as not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ketch.api import KINDS
from ketch.api.core import Node
from ketch.cluster.layout import POD_CIDR_TEMPLATE, ClusterLayout
from ketch.store import (
    AlreadyExistsError,
    ConflictError,
    Manifest,
    NotFoundError,
    Store,
    StoreError,
)

log = logging.getLogger("ketch.cluster.nodes")

HEARTBEAT_INTERVAL = 10.0
HEARTBEAT_STALE = 40.0  # Kubernetes' node-monitor-grace-period
MAX_NODES = 254
_NODES_BASE = ipaddress.IPv4Network("10.244.0.0/16")


class NodeError(Exception):
    """A Node object cannot be used as a cluster node; the message says how to fix it."""


def now_rfc3339(now: dt.datetime | None = None) -> str:
    t = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def index_from_cidr(cidr: str | None) -> int | None:
    """10.244.<n>.0/24 -> n; None for anything else (a Node another tool wrote)."""
    if not cidr:
        return None
    try:
        net = ipaddress.IPv4Network(cidr)
    except ValueError:
        return None
    if net.prefixlen != 24 or not net.subnet_of(_NODES_BASE):
        return None
    n = int(net.network_address.packed[2])
    if not 1 <= n <= MAX_NODES or str(net) != POD_CIDR_TEMPLATE.format(n=n):
        return None
    return n


def wanted_names(count: int) -> list[str]:
    """node1..node<count>."""
    if not 1 <= count <= MAX_NODES:
        raise NodeError(f"--nodes {count}: a local cluster has 1 to {MAX_NODES} nodes")
    return [f"node{i}" for i in range(1, count + 1)]


def assign_indices(existing: Mapping[str, int | None], wanted: Sequence[str]) -> dict[str, int]:
    """Indices of the cluster's nodes: every existing Node with an index keeps it (state
    survives down/up, also for nodes beyond `wanted`); every wanted node without one gets
    the lowest free index. Two existing Nodes with the same index are an error."""
    result: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name in sorted(existing):
        idx = existing[name]
        if idx is None:
            continue
        if idx in owner:
            raise NodeError(
                f"Node objects {owner[idx]} and {name} both have spec.podCIDR "
                f"{POD_CIDR_TEMPLATE.format(n=idx)}: delete one (ketch delete node NAME)"
            )
        owner[idx] = name
        result[name] = idx
    free = (i for i in range(1, MAX_NODES + 1) if i not in owner)
    for name in wanted:
        if name not in result:
            try:
                result[name] = next(free)
            except StopIteration:
                raise NodeError(f"no free node index for {name} (at most {MAX_NODES})") from None
    return dict(sorted(result.items(), key=lambda kv: kv[1]))


def ready_condition(m: Manifest) -> dict[str, Any] | None:
    for cond in (m.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond
    return None


def is_ready(m: Manifest, now: dt.datetime | None = None, stale: float = HEARTBEAT_STALE) -> bool:
    """Ready=True with a heartbeat no older than `stale` seconds."""
    cond = ready_condition(m)
    if cond is None or cond.get("status") != "True":
        return False
    beat = parse_time(cond.get("lastHeartbeatTime"))
    if beat is None:
        return False
    age = ((now or dt.datetime.now(dt.UTC)) - beat).total_seconds()
    return age <= stale


def with_ready(
    m: Manifest, status: str, reason: str, message: str, now: dt.datetime | None = None
) -> Manifest:
    """A copy of Node `m` with its Ready condition set (heartbeat = now; the transition
    time moves only when the status changes)."""
    out = copy.deepcopy(m)
    st = out.setdefault("status", {}) or {}
    out["status"] = st
    stamp = now_rfc3339(now)
    conds = [c for c in st.get("conditions") or [] if c.get("type") != "Ready"]
    old = ready_condition(m)
    transition = (
        old.get("lastTransitionTime")
        if old is not None and old.get("status") == status and old.get("lastTransitionTime")
        else stamp
    )
    conds.append(
        {
            "type": "Ready",
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": transition,
        }
    )
    st["conditions"] = conds
    return out


def node_manifest(
    layout: ClusterLayout, name: str, index: int, existing: Manifest | None
) -> Manifest:
    """The Node `name` with this cluster's spec.podCIDR and addresses; labels, other
    conditions and the Ready condition of `existing` are kept (the node process reports
    readiness, not `ketch up`)."""
    m: Manifest = (
        copy.deepcopy(existing)
        if existing
        else {"apiVersion": KINDS["Node"].api_version, "kind": "Node", "metadata": {"name": name}}
    )
    meta = m.setdefault("metadata", {})
    labels = dict(meta.get("labels") or {})
    labels.setdefault("kubernetes.io/hostname", name)
    labels["ketch.dev/cluster"] = layout.name
    meta["labels"] = labels
    cidr = str(layout.pod_cidr(index))
    spec = dict(m.get("spec") or {})
    spec["podCIDR"] = cidr
    spec["podCIDRs"] = [cidr]
    m["spec"] = spec
    status = dict(m.get("status") or {})
    status["addresses"] = [
        {"type": "InternalIP", "address": str(layout.node_ip(index))},
        {"type": "Hostname", "address": name},
    ]
    m["status"] = status
    if ready_condition(m) is None:
        m = with_ready(m, "Unknown", "NodeStarting", "the node process has not reported yet")
    Node.model_validate(m)  # validated before it is written
    return m


# --- store I/O --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNode:
    name: str
    index: int


def existing_indices(store: Store) -> dict[str, int | None]:
    """name -> index (from spec.podCIDR) of every Node in the store."""
    return {
        m["metadata"]["name"]: index_from_cidr((m.get("spec") or {}).get("podCIDR"))
        for m in store.list("Node").items
    }


def ensure_nodes(store: Store, layout: ClusterLayout, count: int) -> list[ClusterNode]:
    """Write (or complete) Node node1..node<count>, keep every existing cluster node, and
    return the cluster's nodes by index."""
    existing = existing_indices(store)
    indices = assign_indices(existing, wanted_names(count))
    for name, index in indices.items():
        _update(store, name, functools.partial(_complete, layout, name, index))
    return [ClusterNode(n, i) for n, i in indices.items()]


def _complete(layout: ClusterLayout, name: str, index: int, m: Manifest | None) -> Manifest:
    return node_manifest(layout, name, index, m)


def cluster_nodes(store: Store) -> list[ClusterNode]:
    """The nodes of the cluster as stored (those with a 10.244.<n>.0/24 pod CIDR)."""
    return sorted(
        (ClusterNode(n, i) for n, i in existing_indices(store).items() if i is not None),
        key=lambda c: c.index,
    )


def _update(
    store: Store, name: str, change: Callable[[Manifest | None], Manifest | None], tries: int = 20
) -> Manifest | None:
    """Read Node `name`, apply `change` (None: leave it), write with compare-and-swap,
    retry on conflict."""
    for _ in range(tries):
        try:
            current: Manifest | None = store.get("Node", "", name)
        except NotFoundError:
            current = None
        new = change(current)
        if new is None:
            return current
        if current is None:
            new.get("metadata", {}).pop("resourceVersion", None)
        try:
            return store.apply([new], create_only=current is None)[0]
        except (ConflictError, AlreadyExistsError):
            continue
    raise NodeError(f"Node {name} kept changing under us ({tries} conflicts); try again")


def heartbeat(
    store: Store,
    name: str,
    *,
    status: str = "True",
    reason: str = "KetchNodeReady",
    message: str = "ketch node process is running",
) -> Manifest | None:
    """Set Node `name`'s Ready condition (and its heartbeat); None if the Node is gone."""
    return _update(
        store, name, lambda m: None if m is None else with_ready(m, status, reason, message)
    )


def mark_stopped(store: Store, names: Iterable[str]) -> list[str]:
    """`ketch down`: Ready=Unknown on each node (returns the names it marked)."""
    marked = []
    for name in names:
        if heartbeat(
            store,
            name,
            status="Unknown",
            reason="NodeStopped",
            message="ketch down stopped this node; ketch up starts it again",
        ):
            marked.append(name)
    return marked


class Heartbeat:
    """The node process's heartbeat: Ready=True every `interval` seconds while it runs,
    Ready=False when it stops. Store errors are logged and retried at the next beat."""

    def __init__(self, store: Store, node_name: str, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.store = store
        self.node_name = node_name
        self.interval = interval

    async def beat(self) -> bool:
        try:
            found = await asyncio.to_thread(heartbeat, self.store, self.node_name)
        except (StoreError, NodeError) as exc:
            log.warning("heartbeat of node %s not written: %s", self.node_name, exc)
            return False
        if found is None:
            log.warning(
                "Node %s is not in the store (deleted?); ketch up writes it again",
                self.node_name,
            )
            return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        try:
            await asyncio.to_thread(
                heartbeat,
                self.store,
                self.node_name,
                status="False",
                reason="KetchNodeStopped",
                message="the ketch node process stopped",
            )
        except (StoreError, NodeError) as exc:
            log.warning("final status of node %s not written: %s", self.node_name, exc)
