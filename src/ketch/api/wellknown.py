"""Well-known label and annotation keys (Istio ambient and Gateway API), in one place.

Values here are the exact strings Istio uses, so that users' YAML carries over unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

# Namespaces and pods join the mesh with this label; `none` on a pod opts it out.
DATAPLANE_MODE: Final = "istio.io/dataplane-mode"
DATAPLANE_MODE_AMBIENT: Final = "ambient"
DATAPLANE_MODE_NONE: Final = "none"
DATAPLANE_MODES: Final = (DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_NONE)

# A namespace, service or pod names the waypoint (a Gateway in the same namespace) it uses.
USE_WAYPOINT: Final = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE: Final = "istio.io/use-waypoint-namespace"

# On a waypoint Gateway: which traffic it handles.
WAYPOINT_FOR: Final = "istio.io/waypoint-for"
WaypointFor = Literal["service", "workload", "all", "none"]
WAYPOINT_FOR_VALUES: Final[tuple[WaypointFor, ...]] = ("service", "workload", "all", "none")
WAYPOINT_FOR_DEFAULT: Final[WaypointFor] = "service"

# Gateway API class and listener that make a Gateway a waypoint.
WAYPOINT_GATEWAY_CLASS: Final = "istio-waypoint"
WAYPOINT_LISTENER_NAME: Final = "mesh"
WAYPOINT_LISTENER_PORT: Final = 15008
WAYPOINT_LISTENER_PROTOCOL: Final = "HBONE"

# AuthorizationPolicy annotation: evaluate and log, never enforce.
DRY_RUN: Final = "istio.io/dry-run"

# Labels used for telemetry (canonical service/revision) when present.
APP: Final = "app"
VERSION: Final = "version"
APP_KUBERNETES_NAME: Final = "app.kubernetes.io/name"
APP_KUBERNETES_VERSION: Final = "app.kubernetes.io/version"
CANONICAL_NAME: Final = "service.istio.io/canonical-name"
CANONICAL_REVISION: Final = "service.istio.io/canonical-revision"

GATEWAY_API_GROUP: Final = "gateway.networking.k8s.io"


def is_ambient(namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    """Whether a pod is captured: its namespace (or the pod itself) says ambient and the pod
    does not opt out with `istio.io/dataplane-mode: none`."""
    pod_mode = pod_labels.get(DATAPLANE_MODE)
    if pod_mode == DATAPLANE_MODE_NONE:
        return False
    if pod_mode == DATAPLANE_MODE_AMBIENT:
        return True
    return namespace_labels.get(DATAPLANE_MODE) == DATAPLANE_MODE_AMBIENT


def canonical_service(labels: Mapping[str, str], workload_name: str) -> str:
    """Istio's canonical service name for telemetry: label, app.kubernetes.io/name, app,
    else the workload name."""
    for key in (CANONICAL_NAME, APP_KUBERNETES_NAME, APP):
        if labels.get(key):
            return labels[key]
    return workload_name


def canonical_revision(labels: Mapping[str, str]) -> str:
    for key in (CANONICAL_REVISION, APP_KUBERNETES_VERSION, VERSION):
        if labels.get(key):
            return labels[key]
    return "latest"
