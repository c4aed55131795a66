"""The names of the xDS contract between the control plane and the node proxies (type URLs,
the syncz debug type) and the package's exception family."""

from __future__ import annotations

from typing import Final

#: Workloads and services (a oneof `Address`), keyed by workload uid or `namespace/hostname`.
ADDRESS_TYPE: Final = "type.googleapis.com/istio.workload.Address"
#: L4 authorization policies, keyed by `namespace/name`.
AUTHORIZATION_TYPE: Final = "type.googleapis.com/istio.security.Authorization"
#: Bare `istio.workload.Workload` messages (istiod serves them to waypoints; ztunnel never
#: subscribes). Named here so a server can recognise and refuse it explicitly.
WORKLOAD_TYPE: Final = "type.googleapis.com/istio.workload.Workload"
#: istioctl proxy-status asks istiod for this debug type (a plain DiscoveryRequest) and gets
#: one `ClientConfig` per connected proxy with the per-type sync status.
SYNCZ_TYPE: Final = "istio.io/debug/syncz"

#: The types a node proxy subscribes to, in istiod's push order (Address before
#: Authorization: a workload may name a policy before it arrives).
NODE_PROXY_TYPES: Final = (ADDRESS_TYPE, AUTHORIZATION_TYPE)


class XdsError(Exception):
    """Base of the xDS package's errors."""


class Rejected(XdsError):
    """One resource could not be accepted. `str()` is ztunnel's NACK item `<name>: <reason>`;
    `reason` is written for the operator reading `istioctl proxy-status` or the logs."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class UnknownType(XdsError):
    """A request names a type URL this server does not serve (the caller reports it, e.g. as
    an INVALID_ARGUMENT status, and ends the stream)."""

    def __init__(self, type_url: str, served: tuple[str, ...]) -> None:
        super().__init__(
            f"type {type_url!r} is not served here (served: {', '.join(served) or 'none'})"
        )
        self.type_url = type_url
