"""The MESH column of `ketch get pods -o wide` (pure).

`mesh_status(pod, ns_labels)`: `ambient` when the node agent marked the pod enrolled
(annotation `ambient.istio.io/redirection=enabled`); `pending` when it says `pending`, or
when the enrollment rule (`ketch.agent.enrollment.mesh_problem`, istio-cni's) puts the pod
in the mesh but the node agent has not enrolled it yet (not running yet, no node agent, no
node proxy); `none` otherwise (terminal pods too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ketch.agent.enrollment import (
    REDIRECTION_ENABLED,
    REDIRECTION_PENDING,
    PodView,
    mesh_problem,
)

AMBIENT, PENDING, NONE = "ambient", "pending", "none"


def mesh_status(pod: Mapping[str, Any], ns_labels: Mapping[str, str]) -> str:
    view = PodView.from_manifest(pod)
    if view.terminal:
        return NONE
    if view.redirection == REDIRECTION_ENABLED:
        return AMBIENT
    if view.redirection == REDIRECTION_PENDING:
        return PENDING
    return PENDING if mesh_problem(view, ns_labels) is None else NONE


def namespace_labels(namespaces: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, str]]:
    """Namespace name -> its labels, from the store's Namespace manifests."""
    return {str(m["metadata"]["name"]): dict(m["metadata"].get("labels") or {}) for m in namespaces}
