"""Which pod `ketch logs` / `ketch exec` mean: `NAME`, `pod/NAME`, `deploy/NAME`, ... (pure).

As kubectl does: a bare name or `pod/NAME` (`po/`, `pods/`) is that pod; a workload
reference (`deploy/`, `deployment/`, `deployments/`, `rs/`, `replicaset/`, `replicasets/`)
stands for one of the pods its selector matches, the best one to look at first (kubectl's
"by logging" order): scheduled to a node, Running before Unknown before Pending, ready,
more restarts (its logs are the interesting ones), then the oldest; the name breaks ties.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

POD_KINDS = {"pod": "Pod", "pods": "Pod", "po": "Pod"}
WORKLOAD_KINDS = {
    "deploy": "Deployment",
    "deployment": "Deployment",
    "deployments": "Deployment",
    "rs": "ReplicaSet",
    "replicaset": "ReplicaSet",
    "replicasets": "ReplicaSet",
}


class PodRefError(ValueError):
    """The reference cannot be understood; the message says what is accepted."""


@dataclass(frozen=True)
class PodRef:
    kind: str  # "Pod", "Deployment" or "ReplicaSet"
    name: str


def parse(text: str) -> PodRef:
    """`NAME` or `TYPE/NAME` (`TYPE` with an optional `.apps` group, any case)."""
    if "/" not in text:
        if not text:
            raise PodRefError("empty pod name")
        return PodRef("Pod", text)
    kind, _, name = text.partition("/")
    kind = kind.lower().removesuffix(".apps")
    if not name or "/" in name:
        raise PodRefError(f"{text!r}: expected NAME or TYPE/NAME, e.g. deploy/web or pod/web-1")
    if kind in POD_KINDS:
        return PodRef("Pod", name)
    if kind in WORKLOAD_KINDS:
        return PodRef(WORKLOAD_KINDS[kind], name)
    raise PodRefError(
        f"{text!r}: cannot pick a pod of a {kind!r}; use pod/NAME, deploy/NAME or rs/NAME"
    )


_PHASE_RANK = {"Running": 0, "Unknown": 1, "Pending": 2}


def _ready(status: Mapping[str, Any]) -> bool:
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _max_restarts(status: Mapping[str, Any]) -> int:
    counts = [
        int(c.get("restartCount") or 0)
        for c in status.get("containerStatuses") or []
        if isinstance(c, dict)
    ]
    return max(counts, default=0)


def _key(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    created = str(meta.get("creationTimestamp") or "")
    return (
        0 if spec.get("nodeName") else 1,
        _PHASE_RANK.get(str(status.get("phase")), 3),
        0 if _ready(status) else 1,
        -_max_restarts(status),
        created == "",  # no creation time last
        created,  # RFC 3339 UTC strings sort by time: the oldest first
        str(meta.get("name") or ""),
    )


def best_pod(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod to show first (see the module docstring), or None if there is none."""
    return min(pods, key=_key, default=None)
