"""Which pods of this node are in the mesh, and what to do about it (pure; ZDS.md section 7).

`PodView.from_manifest` reads the few fields the agent needs from a stored Pod manifest.
`enrollment_problem(pod, ns_labels, node=..., excluded=...)` says why a pod is NOT enrolled
(None = enroll it), with istio-cni's rule (chart default `ambient.enablementSelectors`):

- pod label `istio.io/dataplane-mode=ambient`, or namespace label `...=ambient` and the pod
  label not `none`;
- never: `hostNetwork` pods, pods with a sidecar (`sidecar.istio.io/status`), node proxy
  pods (`app=ztunnel`), waypoints (`gateway.istio.io/managed`; their template also says
  `none`), pods in an excluded namespace (default `kube-system`);
- only pods of THIS node that run (phase Running) and have an IP; terminal pods
  (Succeeded/Failed) are removed.

`reconcile(desired, enrolled, running)` compares what should be enrolled with what is and
returns the actions in a stable order (removals first, then enrolments, by uid).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DATAPLANE_MODE = "istio.io/dataplane-mode"
AMBIENT = "ambient"
NONE = "none"
REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"
REDIRECTION_ENABLED = "enabled"
REDIRECTION_PENDING = "pending"
SIDECAR_STATUS = "sidecar.istio.io/status"
WAYPOINT_LABEL = "gateway.istio.io/managed"
DEFAULT_EXCLUDED = frozenset({"kube-system"})
TERMINAL = ("Succeeded", "Failed")

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class PodView:
    """What the agent knows of a pod (from its manifest)."""

    uid: str
    name: str
    namespace: str
    node: str = ""
    service_account: str = "default"
    phase: str = ""
    ips: tuple[str, ...] = ()
    host_network: bool = False
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, compare=False)

    @classmethod
    def from_manifest(cls, m: Mapping[str, Any]) -> PodView:
        meta = m.get("metadata") or {}
        spec = m.get("spec") or {}
        status = m.get("status") or {}
        ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
        if not ips and status.get("podIP"):
            ips = [str(status["podIP"])]
        return cls(
            uid=str(meta.get("uid") or ""),
            name=str(meta.get("name") or ""),
            namespace=str(meta.get("namespace") or "default"),
            node=str(spec.get("nodeName") or ""),
            service_account=str(spec.get("serviceAccountName") or "default"),
            phase=str(status.get("phase") or ""),
            ips=tuple(ips),
            host_network=bool(spec.get("hostNetwork")),
            labels=MappingProxyType(dict(meta.get("labels") or {})),
            annotations=MappingProxyType(dict(meta.get("annotations") or {})),
        )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def redirection(self) -> str:
        return self.annotations.get(REDIRECTION_ANNOTATION, "")

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL


def mesh_problem(
    pod: PodView,
    ns_labels: Mapping[str, str],
    *,
    excluded: Collection[str] = DEFAULT_EXCLUDED,
) -> str | None:
    """Why the pod's labels keep it out of the mesh (None: it belongs in the mesh).
    Phase and node are not looked at (the CNI event asks before the pod runs)."""
    mode = pod.labels.get(DATAPLANE_MODE)
    if pod.namespace in excluded:
        return f"namespace {pod.namespace} is excluded"
    if pod.host_network:
        return "hostNetwork pod"
    if SIDECAR_STATUS in pod.annotations:
        return "pod has a sidecar"
    if pod.labels.get("app") == "ztunnel":
        return "node proxy pod"
    if WAYPOINT_LABEL in pod.labels:
        return "waypoint pod"
    if mode == NONE:
        return f"pod label {DATAPLANE_MODE}=none"
    if mode == AMBIENT or ns_labels.get(DATAPLANE_MODE) == AMBIENT:
        return None
    return f"neither the pod nor namespace {pod.namespace} has {DATAPLANE_MODE}=ambient"


def enrollment_problem(
    pod: PodView,
    ns_labels: Mapping[str, str],
    *,
    node: str,
    excluded: Collection[str] = DEFAULT_EXCLUDED,
) -> str | None:
    """Why the running pod is not enrolled now (None: enroll it)."""
    if pod.node != node:
        return f"pod runs on node {pod.node or '(unscheduled)'}, not {node}"
    if pod.phase != "Running":
        return f"pod phase is {pod.phase or 'unknown'}, not Running"
    if not pod.ips:
        return "pod has no IP yet"
    return mesh_problem(pod, ns_labels, excluded=excluded)


def desired(
    pods: Collection[PodView],
    namespaces: Mapping[str, Mapping[str, str]],
    *,
    node: str,
    excluded: Collection[str] = DEFAULT_EXCLUDED,
) -> dict[str, PodView]:
    """The pods of `node` that should be enrolled, by uid (`namespaces`: name -> labels)."""
    return {
        p.uid: p
        for p in pods
        if p.uid
        and enrollment_problem(p, namespaces.get(p.namespace, _EMPTY), node=node, excluded=excluded)
        is None
    }


@dataclass(frozen=True)
class Enroll:
    pod: PodView


@dataclass(frozen=True)
class Remove:
    """Take the pod out: delete its rules only if it still runs (its netns is alive)."""

    pod: PodView
    still_running: bool


Action = Enroll | Remove


def reconcile(
    want: Mapping[str, PodView],
    enrolled: Mapping[str, PodView],
    running: Collection[str] = (),
    stay: Collection[str] = (),
) -> list[Action]:
    """Actions that make `enrolled` equal to `want`. `running`: uids of pods that still run
    on this node (a removed pod that still runs gets its rules deleted). `stay`: enrolled
    pods that are not in `want` yet may keep their enrolment (a pod the CNI event enrolled
    before it reached Running)."""
    actions: list[Action] = [
        Remove(enrolled[uid], uid in running)
        for uid in sorted(enrolled)
        if uid not in want and uid not in stay
    ]
    actions += [Enroll(want[uid]) for uid in sorted(want) if uid not in enrolled]
    return actions


def plan(
    pods: Collection[PodView],
    namespaces: Mapping[str, Mapping[str, str]],
    enrolled: Mapping[str, PodView],
    *,
    node: str,
    excluded: Collection[str] = DEFAULT_EXCLUDED,
) -> list[Action]:
    """`reconcile` over the store's pods and namespaces: new enrolments need a Running pod
    with an IP on this node; an enrolled pod leaves when it is gone, terminal, on another
    node or no longer selected (labels, namespace excluded, ...)."""
    want = desired(pods, namespaces, node=node, excluded=excluded)
    mine = [p for p in pods if p.uid and p.node == node and not p.terminal]
    running = {p.uid for p in mine}
    stay = {
        p.uid
        for p in mine
        if mesh_problem(p, namespaces.get(p.namespace, _EMPTY), excluded=excluded) is None
    }
    return reconcile(want, enrolled, running, stay)


__all__ = [
    "AMBIENT",
    "DATAPLANE_MODE",
    "DEFAULT_EXCLUDED",
    "REDIRECTION_ANNOTATION",
    "REDIRECTION_ENABLED",
    "REDIRECTION_PENDING",
    "Action",
    "Enroll",
    "PodView",
    "Remove",
    "desired",
    "enrollment_problem",
    "mesh_problem",
    "plan",
    "reconcile",
]
