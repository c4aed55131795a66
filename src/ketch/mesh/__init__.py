"""The mesh model both planes share: what the control plane computes from user objects and
pushes to the proxies, and what the node proxy enforces. Types mirror Istio's xDS resources
(`istio.workload.Workload`/`Service`, `istio.security.Authorization`) field for field and are
validated on construction, so an invalid object cannot exist.

Imports: only `ketch.identity.spiffe` and `ketch.labels` (docs/architecture.md).
"""

from __future__ import annotations

from ketch.mesh.authorization import (
    Action,
    Authorization,
    Clause,
    Match,
    MatchKind,
    MtlsMode,
    PeerAuthentication,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    selector_matches,
)
from ketch.mesh.common import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    IpAddr,
    IpNet,
    MeshError,
    format_authority,
)
from ketch.mesh.ports import (
    ADMIN_PORT,
    CONTROL_PLANE_GRPC_PORT,
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    METRICS_PORT,
    OUTBOUND_PORT,
    READINESS_PORT,
    SELF_PORTS,
)
from ketch.mesh.service import (
    AppProtocol,
    Service,
    ServicePort,
)
from ketch.mesh.workload import (
    GatewayAddress,
    HealthStatus,
    Locality,
    NamespacedHostname,
    TunnelProtocol,
    Workload,
    WorkloadType,
)

__all__ = [
    "ADMIN_PORT",
    "CONTROL_PLANE_GRPC_PORT",
    "DEFAULT_ROOT_NAMESPACE",
    "DEFAULT_TRUST_DOMAIN",
    "HBONE_PORT",
    "INBOUND_PLAINTEXT_PORT",
    "METRICS_PORT",
    "OUTBOUND_PORT",
    "READINESS_PORT",
    "SELF_PORTS",
    "Action",
    "AppProtocol",
    "Authorization",
    "Clause",
    "GatewayAddress",
    "HealthStatus",
    "IpAddr",
    "IpNet",
    "Locality",
    "Match",
    "MatchKind",
    "MeshError",
    "MtlsMode",
    "NamespacedHostname",
    "PeerAuthentication",
    "Rule",
    "Scope",
    "Service",
    "ServiceAccountMatch",
    "ServicePort",
    "StringMatch",
    "TunnelProtocol",
    "Workload",
    "WorkloadType",
    "format_authority",
    "selector_matches",
]
