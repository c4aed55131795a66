"""Well-known ports of the ambient data plane (Istio's numbers, REFERENCE.md "Components and
ports"). Shared by the control plane (what it advertises) and the node proxy (what it
listens on). `ketch.netns.constants` carries the same numbers for the kernel rules; a unit
test keeps the two equal.
"""

from __future__ import annotations

from typing import Final

#: Outbound capture listener inside each pod netns.
OUTBOUND_PORT: Final = 15001
#: Inbound plaintext capture listener inside each pod netns.
INBOUND_PLAINTEXT_PORT: Final = 15006
#: Inbound HBONE (mTLS HTTP/2 CONNECT) listener; also the default waypoint HBONE port.
HBONE_PORT: Final = 15008
#: Ports whose use as a destination is a self-call: a connection to them is a loop.
SELF_PORTS: Final = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})
#: Node proxy admin (localhost), Prometheus metrics, readiness.
ADMIN_PORT: Final = 15000
METRICS_PORT: Final = 15020
READINESS_PORT: Final = 15021
#: Control plane gRPC (certificates, xDS), as istiod.
CONTROL_PLANE_GRPC_PORT: Final = 15012
