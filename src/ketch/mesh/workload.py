"""Workloads (xDS `istio.workload.Workload`): a pod as the control plane describes it to
the node proxies, and where its waypoint is reached (`GatewayAddress`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from types import MappingProxyType

from ketch.identity.spiffe import InvalidSpiffeId, SpiffeId
from ketch.mesh.common import (
    DEFAULT_TRUST_DOMAIN,
    IpAddr,
    MeshError,
    check_port,
    frozen_map,
    require,
)
from ketch.mesh.ports import HBONE_PORT


class TunnelProtocol(enum.Enum):
    NONE = "NONE"  # not in the mesh: plain TCP
    HBONE = "HBONE"


class HealthStatus(enum.Enum):
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"


class WorkloadType(enum.Enum):
    DEPLOYMENT = "deployment"
    CRONJOB = "cronjob"
    POD = "pod"
    JOB = "job"


@dataclass(frozen=True, order=True)
class NamespacedHostname:
    """A service named by hostname within a namespace (xDS `NamespacedHostname`)."""

    namespace: str
    hostname: str

    def __post_init__(self) -> None:
        require("namespaced hostname namespace", self.namespace)
        require("namespaced hostname hostname", self.hostname)

    @classmethod
    def parse(cls, key: str) -> NamespacedHostname:
        """Parse Istio's `namespace/hostname` key."""
        ns, sep, host = key.partition("/")
        if not sep or not ns or not host:
            raise MeshError(f"{key!r} is not a service key of the form <namespace>/<hostname>")
        return cls(ns, host)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True)
class GatewayAddress:
    """Where a waypoint is reached (xDS `GatewayAddress`): a workload or service IP, or a
    service hostname; HBONE on `hbone_port`. `identity`, when set, is the identity the waypoint
    must present; otherwise it is the identity of the waypoint workload the address resolves to.
    """

    destination: IpAddr | NamespacedHostname
    hbone_port: int = HBONE_PORT
    identity: SpiffeId | None = None

    def __post_init__(self) -> None:
        check_port("waypoint hbone_port", self.hbone_port)

    def __str__(self) -> str:
        return f"{self.destination}:{self.hbone_port}"


@dataclass(frozen=True)
class Locality:
    """Where a workload runs (xDS `Locality`): empty strings when unknown."""

    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True)
class Workload:
    """One workload (a pod, usually), as the control plane describes it (xDS `Workload`).

    `services` maps a service key `namespace/hostname` to this workload's port map for that
    service: service port -> target port (the control plane resolves named target ports per
    workload there). `authorization_policies` lists `namespace/name` of WORKLOAD_SELECTOR
    policies the control plane attached to it.
    """

    uid: str
    name: str
    namespace: str
    addresses: tuple[IpAddr, ...] = ()
    service_account: str = "default"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    node: str = ""
    protocol: TunnelProtocol = TunnelProtocol.HBONE
    waypoint: GatewayAddress | None = None
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_name: str = ""
    workload_type: WorkloadType = WorkloadType.POD
    status: HealthStatus = HealthStatus.HEALTHY
    cluster_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    services: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    authorization_policies: tuple[str, ...] = ()
    network: str = ""
    hostname: str = ""
    locality: Locality = field(default_factory=Locality)

    def __post_init__(self) -> None:
        require("workload uid", self.uid)
        require(f"workload {self.uid}: name", self.name)
        require(f"workload {self.uid}: namespace", self.namespace)
        if len(set(self.addresses)) != len(self.addresses):
            raise MeshError(f"workload {self.uid}: duplicate address in {self.addresses}")
        for a in self.addresses:
            if not isinstance(a, IPv4Address | IPv6Address):
                raise MeshError(f"workload {self.uid}: address {a!r} is not an IP address")
        try:
            _ = self.identity
        except InvalidSpiffeId as e:
            raise MeshError(f"workload {self.uid}: {e}") from e
        services: dict[str, Mapping[int, int]] = {}
        for key, ports in self.services.items():
            NamespacedHostname.parse(key)
            for sp, tp in ports.items():
                check_port(f"workload {self.uid}: service {key}", sp)
                check_port(f"workload {self.uid}: service {key} target", tp)
            services[key] = MappingProxyType(dict(ports))
        object.__setattr__(self, "services", MappingProxyType(services))
        object.__setattr__(self, "labels", frozen_map(self.labels))
        object.__setattr__(self, "addresses", tuple(self.addresses))
        object.__setattr__(self, "authorization_policies", tuple(self.authorization_policies))

    def __hash__(self) -> int:
        return hash(("workload", self.uid))

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)

    @property
    def key(self) -> str:
        """`namespace/name`, for logs."""
        return f"{self.namespace}/{self.name}"

    def address_for(self, family: int) -> IpAddr | None:
        """The first address of IP version `family` (4 or 6), else the first address."""
        for a in self.addresses:
            if a.version == family:
                return a
        return self.addresses[0] if self.addresses else None
