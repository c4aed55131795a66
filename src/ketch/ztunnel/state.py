"""The node proxy's view of the mesh: typed workloads, services and policies, and an immutable
snapshot (`ProxyState`) with the indexes the data path needs.

The types mirror Istio's xDS resources (`istio.workload.Workload`, `istio.workload.Service`,
`istio.security.Authorization`) field for field, so the control-plane client converts each
proto into exactly one of these at the edge and nothing else flows inward. Every object is
validated on construction: an invalid workload or policy cannot exist.

`ProxyState` is never mutated. A delta from the control plane (or a reloaded config file)
builds a new snapshot with `with_changes()`; the listeners keep using the snapshot they
started a connection with and pick up the new one for the next decision.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType
from typing import TypeAlias, TypeVar

from ketch.identity.spiffe import InvalidSpiffeId, SpiffeId
from ketch.ztunnel import ZtunnelError

IpAddr: TypeAlias = IPv4Address | IPv6Address
IpNet: TypeAlias = IPv4Network | IPv6Network
_T = TypeVar("_T")

HBONE_PORT = 15008
DEFAULT_ROOT_NAMESPACE = "istio-system"
DEFAULT_TRUST_DOMAIN = "cluster.local"


class StateError(ZtunnelError, ValueError):
    """A workload, service or policy is invalid, or a snapshot would be inconsistent."""


def _frozen_map(m: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(m))


def _check_port(what: str, port: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise StateError(f"{what}: port {port!r} is not in {low}..65535")


def _require(what: str, value: str) -> None:
    if not value:
        raise StateError(f"{what} must not be empty")


def format_authority(ip: IpAddr, port: int) -> str:
    """HBONE `:authority` form: `ip:port`, IPv6 as `[addr]:port`."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


# --------------------------------------------------------------------------- workloads


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
        _require("namespaced hostname namespace", self.namespace)
        _require("namespaced hostname hostname", self.hostname)

    @classmethod
    def parse(cls, key: str) -> NamespacedHostname:
        """Parse Istio's `namespace/hostname` key."""
        ns, sep, host = key.partition("/")
        if not sep or not ns or not host:
            raise StateError(f"{key!r} is not a service key of the form <namespace>/<hostname>")
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
        _check_port("waypoint hbone_port", self.hbone_port)

    def __str__(self) -> str:
        return f"{self.destination}:{self.hbone_port}"


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

    def __post_init__(self) -> None:
        _require("workload uid", self.uid)
        _require(f"workload {self.uid}: name", self.name)
        _require(f"workload {self.uid}: namespace", self.namespace)
        if len(set(self.addresses)) != len(self.addresses):
            raise StateError(f"workload {self.uid}: duplicate address in {self.addresses}")
        for a in self.addresses:
            if not isinstance(a, IPv4Address | IPv6Address):
                raise StateError(f"workload {self.uid}: address {a!r} is not an IP address")
        try:
            _ = self.identity
        except InvalidSpiffeId as e:
            raise StateError(f"workload {self.uid}: {e}") from e
        services: dict[str, Mapping[int, int]] = {}
        for key, ports in self.services.items():
            NamespacedHostname.parse(key)
            for sp, tp in ports.items():
                _check_port(f"workload {self.uid}: service {key}", sp)
                _check_port(f"workload {self.uid}: service {key} target", tp)
            services[key] = MappingProxyType(dict(ports))
        object.__setattr__(self, "services", MappingProxyType(services))
        object.__setattr__(self, "labels", _frozen_map(self.labels))
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


# --------------------------------------------------------------------------- services


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
        _check_port("service port", self.service_port)
        _check_port("service target port", self.target_port, allow_zero=True)


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
        _require("service name", self.name)
        _require(f"service {self.name}: namespace", self.namespace)
        _require(f"service {self.namespace}/{self.name}: hostname", self.hostname)
        seen: set[int] = set()
        for p in self.ports:
            if p.service_port in seen:
                raise StateError(f"service {self.key}: port {p.service_port} listed twice")
            seen.add(p.service_port)
        if len(set(self.vips)) != len(self.vips):
            raise StateError(f"service {self.key}: duplicate VIP in {self.vips}")
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


# --------------------------------------------------------------------------- policies


class Scope(enum.Enum):
    GLOBAL = "GLOBAL"
    NAMESPACE = "NAMESPACE"
    WORKLOAD_SELECTOR = "WORKLOAD_SELECTOR"


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True)
class StringMatch:
    kind: MatchKind
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind is MatchKind.PRESENCE and self.value:
            raise StateError("a presence match has no value")

    @classmethod
    def parse(cls, pattern: str) -> StringMatch:
        """Istio's syntax: `*` presence, `*x` suffix, `x*` prefix, else exact."""
        if pattern == "*":
            return cls(MatchKind.PRESENCE)
        if pattern.startswith("*"):
            return cls(MatchKind.SUFFIX, pattern[1:])
        if pattern.endswith("*"):
            return cls(MatchKind.PREFIX, pattern[:-1])
        return cls(MatchKind.EXACT, pattern)

    def matches(self, value: str | None) -> bool:
        """Does `value` match? `None` (no such attribute, e.g. no peer identity) never does."""
        if value is None:
            return False
        match self.kind:
            case MatchKind.PRESENCE:
                return value != ""
            case MatchKind.EXACT:
                return value == self.value
            case MatchKind.PREFIX:
                return value.startswith(self.value)
            case MatchKind.SUFFIX:
                return value.endswith(self.value)

    def __str__(self) -> str:
        match self.kind:
            case MatchKind.PRESENCE:
                return "*"
            case MatchKind.PREFIX:
                return f"{self.value}*"
            case MatchKind.SUFFIX:
                return f"*{self.value}"
            case MatchKind.EXACT:
                return self.value


@dataclass(frozen=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        _require("service account match namespace", self.namespace)
        _require("service account match name", self.service_account)

    def matches(self, identity: SpiffeId | None) -> bool:
        return (
            identity is not None
            and identity.namespace == self.namespace
            and identity.service_account == self.service_account
        )


@dataclass(frozen=True)
class Match:
    """One xDS `Match`: every non-empty field must hold; values within a field are OR'd;
    a `not_` field excludes what it matches."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    source_ips: tuple[IpNet, ...] = ()
    not_source_ips: tuple[IpNet, ...] = ()
    destination_ips: tuple[IpNet, ...] = ()
    not_destination_ips: tuple[IpNet, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for p in (*self.destination_ports, *self.not_destination_ports):
            _check_port("authorization match", p)

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class Clause:
    """The matches of a clause are OR'd."""

    matches: tuple[Match, ...]


@dataclass(frozen=True)
class Rule:
    """The clauses of a rule are AND'd; a rule with no clauses matches every connection."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True)
class Authorization:
    """An L4 authorization policy (xDS `Authorization`). Rules are OR'd; a policy with no
    rules matches nothing. `selector` (when the policy came from YAML) selects workloads in
    the policy's namespace (or all namespaces for the root namespace); policies from xDS are
    attached to workloads by `Workload.authorization_policies` instead."""

    name: str
    namespace: str
    scope: Scope
    action: Action
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False
    selector: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        _require("authorization name", self.name)
        _require(f"authorization {self.name}: namespace", self.namespace)
        if self.selector is not None:
            if self.scope is not Scope.WORKLOAD_SELECTOR:
                raise StateError(
                    f"authorization {self.key}: a selector needs scope WORKLOAD_SELECTOR"
                )
            object.__setattr__(self, "selector", _frozen_map(self.selector))

    def __hash__(self) -> int:
        return hash(("authorization", self.namespace, self.name))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class MtlsMode(enum.Enum):
    UNSET = "UNSET"  # inherit from the parent level
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True)
class PeerAuthentication:
    """PeerAuthentication reduced to what the node proxy enforces. `port_modes` is keyed by
    the workload's (target) port, as in Istio's `portLevelMtls`."""

    name: str
    namespace: str
    mode: MtlsMode = MtlsMode.UNSET
    selector: Mapping[str, str] | None = None
    port_modes: Mapping[int, MtlsMode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require("peer authentication name", self.name)
        _require(f"peer authentication {self.name}: namespace", self.namespace)
        if self.port_modes and self.selector is None:
            raise StateError(
                f"peer authentication {self.key}: port-level mTLS needs a workload selector"
            )
        for p in self.port_modes:
            _check_port(f"peer authentication {self.key}", p)
        if self.selector is not None:
            object.__setattr__(self, "selector", _frozen_map(self.selector))
        object.__setattr__(self, "port_modes", MappingProxyType(dict(self.port_modes)))

    def __hash__(self) -> int:
        return hash(("peerauthentication", self.namespace, self.name))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes matchLabels: every selector label present with the same value."""
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class ProxyState:
    """An immutable, validated snapshot with lookup indexes.

    Invariants checked on construction: workload uids, workload addresses, service VIPs and
    service keys are unique, and no IP is both a workload address and a service VIP.
    """

    workloads: Mapping[str, Workload] = field(default_factory=dict)  # by uid
    services: Mapping[str, Service] = field(default_factory=dict)  # by "ns/hostname"
    policies: Mapping[str, Authorization] = field(default_factory=dict)  # by "ns/name"
    peer_authentications: Mapping[str, PeerAuthentication] = field(default_factory=dict)
    root_namespace: str = DEFAULT_ROOT_NAMESPACE

    _by_address: Mapping[IpAddr, Workload] = field(init=False, repr=False, compare=False)
    _by_vip: Mapping[IpAddr, Service] = field(init=False, repr=False, compare=False)
    _endpoints: Mapping[str, tuple[Workload, ...]] = field(init=False, repr=False, compare=False)
    # policies by namespace: (namespace-wide or global, with a selector); sorted by key
    _policies_by_ns: Mapping[str, tuple[tuple[Authorization, ...], tuple[Authorization, ...]]] = (
        field(init=False, repr=False, compare=False)
    )
    _global_policies: tuple[Authorization, ...] = field(init=False, repr=False, compare=False)
    _peer_authn_by_ns: Mapping[str, tuple[PeerAuthentication, ...]] = field(
        init=False, repr=False, compare=False
    )
    # policies_for() results for this snapshot's own workloads (the snapshot never changes)
    _policy_cache: dict[str, tuple[Authorization, ...]] = field(
        init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        workloads: Iterable[Workload] = (),
        services: Iterable[Service] = (),
        policies: Iterable[Authorization] = (),
        peer_authentications: Iterable[PeerAuthentication] = (),
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> ProxyState:
        """A snapshot from lists; duplicates (same uid/key) are an error."""
        return cls(
            workloads=_unique("workload uid", ((w.uid, w) for w in workloads)),
            services=_unique("service", ((s.key, s) for s in services)),
            policies=_unique("authorization policy", ((p.key, p) for p in policies)),
            peer_authentications=_unique(
                "peer authentication", ((p.key, p) for p in peer_authentications)
            ),
            root_namespace=root_namespace,
        )

    def __post_init__(self) -> None:
        _require("root namespace", self.root_namespace)
        for name, m in (
            ("workloads", self.workloads),
            ("services", self.services),
            ("policies", self.policies),
            ("peer_authentications", self.peer_authentications),
        ):
            object.__setattr__(self, name, MappingProxyType(dict(m)))
        for uid, w in self.workloads.items():
            if uid != w.uid:
                raise StateError(f"workload indexed as {uid!r} has uid {w.uid!r}")
        for k, s in self.services.items():
            if k != s.key:
                raise StateError(f"service indexed as {k!r} has key {s.key!r}")
        for k, p in self.policies.items():
            if k != p.key:
                raise StateError(f"policy indexed as {k!r} has key {p.key!r}")
        for k, pa in self.peer_authentications.items():
            if k != pa.key:
                raise StateError(f"peer authentication indexed as {k!r} has key {pa.key!r}")

        by_address: dict[IpAddr, Workload] = {}
        for w in self.workloads.values():
            for a in w.addresses:
                other = by_address.get(a)
                if other is not None:
                    raise StateError(
                        f"address {a} is claimed by workloads {other.key} ({other.uid}) and "
                        f"{w.key} ({w.uid}); is a deleted pod still in the config?"
                    )
                by_address[a] = w
        by_vip: dict[IpAddr, Service] = {}
        for s in self.services.values():
            for v in s.vips:
                if v in by_vip:
                    raise StateError(f"VIP {v} is claimed by services {by_vip[v].key} and {s.key}")
                if v in by_address:
                    raise StateError(
                        f"VIP {v} of service {s.key} is also the address of workload "
                        f"{by_address[v].key}"
                    )
                by_vip[v] = s
        endpoints: dict[str, list[Workload]] = {}
        for w in sorted(self.workloads.values(), key=lambda w: w.uid):
            if w.status is not HealthStatus.HEALTHY:
                continue
            for key in w.services:
                endpoints.setdefault(key, []).append(w)
        wide: dict[str, list[Authorization]] = {}
        selecting: dict[str, list[Authorization]] = {}
        global_policies = []
        for key in sorted(self.policies):
            p = self.policies[key]
            if p.scope is Scope.GLOBAL:
                global_policies.append(p)
            elif p.scope is Scope.NAMESPACE:
                wide.setdefault(p.namespace, []).append(p)
            elif p.selector is not None:
                selecting.setdefault(p.namespace, []).append(p)
        object.__setattr__(
            self,
            "_policies_by_ns",
            MappingProxyType(
                {
                    ns: (tuple(wide.get(ns, ())), tuple(selecting.get(ns, ())))
                    for ns in wide.keys() | selecting.keys()
                }
            ),
        )
        object.__setattr__(self, "_global_policies", tuple(global_policies))
        pa_by_ns: dict[str, list[PeerAuthentication]] = {}
        for pa in sorted(self.peer_authentications.values(), key=lambda p: p.name):
            pa_by_ns.setdefault(pa.namespace, []).append(pa)
        object.__setattr__(
            self, "_peer_authn_by_ns", MappingProxyType({k: tuple(v) for k, v in pa_by_ns.items()})
        )
        object.__setattr__(self, "_policy_cache", {})
        object.__setattr__(self, "_by_address", MappingProxyType(by_address))
        object.__setattr__(self, "_by_vip", MappingProxyType(by_vip))
        object.__setattr__(
            self, "_endpoints", MappingProxyType({k: tuple(v) for k, v in endpoints.items()})
        )

    # ---- lookups

    def workload_by_uid(self, uid: str) -> Workload | None:
        return self.workloads.get(uid)

    def workload_by_address(self, ip: IpAddr) -> Workload | None:
        return self._by_address.get(ip)

    def service_by_vip(self, ip: IpAddr) -> Service | None:
        return self._by_vip.get(ip)

    def service_by_hostname(self, namespace: str, hostname: str) -> Service | None:
        return self.services.get(f"{namespace}/{hostname}")

    def endpoints(self, service: Service) -> tuple[Workload, ...]:
        """Healthy workloads that list `service` in their `services`, ordered by uid."""
        return self._endpoints.get(service.key, ())

    def services_of(self, workload: Workload) -> tuple[Service, ...]:
        """The known services `workload` is an endpoint of."""
        return tuple(self.services[k] for k in sorted(workload.services) if k in self.services)

    def policies_for(self, workload: Workload) -> tuple[Authorization, ...]:
        """The authorization policies that apply to `workload`: global ones (root namespace,
        or scope GLOBAL), its namespace's namespace-wide ones, and selector policies that
        select it (by label, or attached by name through `authorization_policies`).
        Ordered by key so evaluation and its report are deterministic."""
        own = self.workloads.get(workload.uid) is workload
        if own and workload.uid in self._policy_cache:
            return self._policy_cache[workload.uid]
        found = {p.key: p for p in self._global_policies}
        for ns in {workload.namespace, self.root_namespace}:
            wide, selecting = self._policies_by_ns.get(ns, ((), ()))
            found.update((p.key, p) for p in wide)
            found.update(
                (p.key, p)
                for p in selecting
                if p.selector is not None and selector_matches(p.selector, workload.labels)
            )
        for key in workload.authorization_policies:
            p = self.policies.get(key)
            if p is not None and p.scope is Scope.WORKLOAD_SELECTOR:
                found[key] = p
        result = tuple(found[k] for k in sorted(found))
        if own:
            self._policy_cache[workload.uid] = result
        return result

    def mtls_mode(self, workload: Workload, port: int) -> tuple[MtlsMode, str | None]:
        """The effective PeerAuthentication mode for `workload` on (target) `port`, and the
        key of the policy that set it (None: the default, PERMISSIVE).

        Precedence as Istio: a selecting policy in the workload's namespace, then the
        namespace-wide policy, then the mesh-wide one (root namespace, no selector). UNSET
        inherits from the next level; a port-level mode beats the policy's own mode. Several
        candidates at one level: the first by name wins (Istio takes the oldest).
        """
        local = self._peer_authn_by_ns.get(workload.namespace, ())
        root = self._peer_authn_by_ns.get(self.root_namespace, ())
        levels = [
            [
                p
                for p in local
                if p.selector is not None and selector_matches(p.selector, workload.labels)
            ],
            [p for p in local if p.selector is None],
            [p for p in root if p.selector is None],
        ]
        for level in levels:
            if not level:
                continue
            p = level[0]
            mode = p.port_modes.get(port, MtlsMode.UNSET)
            if mode is MtlsMode.UNSET:
                mode = p.mode
            if mode is not MtlsMode.UNSET:
                return mode, p.key
        return MtlsMode.PERMISSIVE, None

    # ---- deltas

    def with_changes(
        self,
        *,
        upsert_workloads: Iterable[Workload] = (),
        remove_workloads: Iterable[str] = (),
        upsert_services: Iterable[Service] = (),
        remove_services: Iterable[str] = (),
        upsert_policies: Iterable[Authorization] = (),
        remove_policies: Iterable[str] = (),
        upsert_peer_authentications: Iterable[PeerAuthentication] = (),
        remove_peer_authentications: Iterable[str] = (),
    ) -> ProxyState:
        """A new snapshot: removals (by uid / `ns/hostname` / `ns/name`; unknown keys are
        ignored, as xDS removals of unknown names are) then upserts. Raises `StateError` if
        the result is inconsistent; `self` is unchanged either way."""
        workloads = dict(self.workloads)
        services = dict(self.services)
        policies = dict(self.policies)
        pas = dict(self.peer_authentications)
        for uid in remove_workloads:
            workloads.pop(uid, None)
        for k in remove_services:
            services.pop(k, None)
        for k in remove_policies:
            policies.pop(k, None)
        for k in remove_peer_authentications:
            pas.pop(k, None)
        workloads.update((w.uid, w) for w in upsert_workloads)
        services.update((s.key, s) for s in upsert_services)
        policies.update((p.key, p) for p in upsert_policies)
        pas.update((p.key, p) for p in upsert_peer_authentications)
        return ProxyState(
            workloads=workloads,
            services=services,
            policies=policies,
            peer_authentications=pas,
            root_namespace=self.root_namespace,
        )


def _unique(what: str, items: Iterable[tuple[str, _T]]) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for k, v in items:
        if k in out:
            raise StateError(f"{what} {k!r} appears twice")
        out[k] = v
    return out
