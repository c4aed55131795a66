"""Services (xDS `istio.workload.Service`): virtual IPs and ports in front of the workloads
that list the service."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ketch.identity.spiffe import SpiffeId
from ketch.mesh.common import IpAddr, MeshError, check_port, require
from ketch.mesh.workload import GatewayAddress


class AppProtocol(enum.Enum):
    UNKNOWN = "UNKNOWN"
    HTTP11 = "HTTP11"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"


@dataclass(frozen=True)
class ServicePort:
    """`target_port` 0 means a named target port: resolved per endpoint through the
    workload's `services` port map (as the control plane does)."""

    service_port: int
    target_port: int
    app_protocol: AppProtocol = AppProtocol.UNKNOWN

    def __post_init__(self) -> None:
        check_port("service port", self.service_port)
        check_port("service target port", self.target_port, allow_zero=True)


@dataclass(frozen=True)
class Service:
    """A service (xDS `Service`): virtual IPs in front of the workloads that list it."""

    name: str
    namespace: str
    hostname: str
    vips: tuple[IpAddr, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    subject_alt_names: tuple[SpiffeId, ...] = ()
    waypoint: GatewayAddress | None = None

    def __post_init__(self) -> None:
        require("service name", self.name)
        require(f"service {self.name}: namespace", self.namespace)
        require(f"service {self.namespace}/{self.name}: hostname", self.hostname)
        seen: set[int] = set()
        for p in self.ports:
            if p.service_port in seen:
                raise MeshError(f"service {self.key}: port {p.service_port} listed twice")
            seen.add(p.service_port)
        if len(set(self.vips)) != len(self.vips):
            raise MeshError(f"service {self.key}: duplicate VIP in {self.vips}")
        object.__setattr__(self, "vips", tuple(self.vips))
        object.__setattr__(self, "ports", tuple(self.ports))
        object.__setattr__(self, "subject_alt_names", tuple(self.subject_alt_names))

    @property
    def key(self) -> str:
        """Istio's service key `namespace/hostname` (as used in `Workload.services`)."""
        return f"{self.namespace}/{self.hostname}"

    def port(self, service_port: int) -> ServicePort | None:
        for p in self.ports:
            if p.service_port == service_port:
                return p
        return None
