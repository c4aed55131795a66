"""Pods and Services -> the mesh model's `Workload` and `Service`, as istiod derives ztunnel's
WDS resources (istio `pilot/pkg/serviceregistry/ambient/workloads.go`, `services.go`,
`helpers.go`, `pkg/kube/labels`; /work/shared/design/XDS.md sections 5 and 6).

Pure functions: every input is passed in (the pod's namespace, the Services of the cluster,
the policies, the waypoints); `ketch.control.translate.snapshot.translate_all` wires them
together over a store's objects.

Not derived (the api or the mesh model has no field for it; docs/control-plane.md lists
them): deletion (`metadata.deletionTimestamp`: istiod marks a deleting pod UNHEALTHY),
`network_mode` HOST_NETWORK (`spec.hostNetwork`), native/application tunnels, WorkloadEntry,
ServiceEntry and selector-less EndpointSlice workloads, Service `load_balancing`,
`ip_families` and `ingress_use_waypoint`, and the `istio_allow_waypoint_*` policies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import ip_address
from types import MappingProxyType
from typing import Final, Generic, TypeVar

from ketch.api import Gateway, Namespace, Node, Pod, Service, wellknown
from ketch.api.core import ServicePort as ApiServicePort
from ketch.control.translate.peer_authentication import workload_policy_names
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    HBONE_PORT,
    AppProtocol,
    Authorization,
    GatewayAddress,
    HealthStatus,
    IpAddr,
    Locality,
    NamespacedHostname,
    PeerAuthentication,
    Scope,
    ServicePort,
    TunnelProtocol,
    Workload,
    WorkloadType,
    selector_matches,
)
from ketch.mesh import Service as MeshService

DEFAULT_CLUSTER_ID: Final = "Kubernetes"
DEFAULT_DOMAIN_SUFFIX: Final = "cluster.local"

#: Set by istio-cni on a pod once ztunnel serves it; only then is the pod reached over HBONE.
REDIRECTION_ANNOTATION: Final = "ambient.istio.io/redirection"
REDIRECTION_ENABLED: Final = "enabled"
#: Added by the ReplicaSet controller; `<deployment>-<hash>` is the ReplicaSet's name.
POD_TEMPLATE_HASH_LABEL: Final = "pod-template-hash"
#: Node labels for locality (istio `pkg/kube/labels` / `label.TopologySubzone`).
REGION_LABEL: Final = "topology.kubernetes.io/region"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
SUBZONE_LABEL: Final = "topology.istio.io/subzone"
#: `istio.io/use-waypoint: none` opts an object out of its namespace's waypoint.
USE_WAYPOINT_NONE: Final = "none"
#: Waypoint pods carry this label; a waypoint has no waypoint of its own.
MANAGED_GATEWAY_LABEL: Final = "gateway.istio.io/managed"
MANAGED_BY_MESH_CONTROLLER: Final = "istio.io-mesh-controller"

_TERMINAL_PHASES = ("Succeeded", "Failed")


# ----------------------------------------------------------------------- indexes


_T = TypeVar("_T")


class SelectorIndex(Generic[_T]):
    """Objects with a matchLabels selector, for finding those that select a set of labels
    without matching every selector: each object is filed under one `(key, value)` of its
    selector (the smallest), so only objects sharing a label with the workload are matched;
    an empty selector (which selects everything) is always a candidate. `matching` gives
    the same objects, in the same order, as `selector_matches` over all of them."""

    __slots__ = ("_always", "_by_label")

    def __init__(self, entries: Iterable[tuple[_T, Mapping[str, str]]] = ()) -> None:
        self._always: list[tuple[int, _T, Mapping[str, str]]] = []
        self._by_label: dict[tuple[str, str], list[tuple[int, _T, Mapping[str, str]]]] = {}
        for i, (obj, selector) in enumerate(entries):
            if selector:
                self._by_label.setdefault(min(selector.items()), []).append((i, obj, selector))
            else:
                self._always.append((i, obj, selector))

    def matching(self, labels: Mapping[str, str]) -> list[_T]:
        """The objects whose selector matches `labels`, in the order they were given."""
        hits = list(self._always)
        by_label = self._by_label
        if by_label:
            for item in labels.items():
                found = by_label.get(item)
                if found:
                    hits += found
        if len(hits) > 1:
            hits.sort(key=lambda h: h[0])
        return [obj for _, obj, selector in hits if selector_matches(selector, labels)]


def _by_namespace(
    objects: Iterable[tuple[str, _T, Mapping[str, str]]],
) -> dict[str, SelectorIndex[_T]]:
    grouped: dict[str, list[tuple[_T, Mapping[str, str]]]] = {}
    for ns, obj, selector in objects:
        grouped.setdefault(ns, []).append((obj, selector))
    return {ns: SelectorIndex(entries) for ns, entries in grouped.items()}


@dataclass(frozen=True)
class PolicyIndex:
    """The policies a workload may name: selector-scoped Authorizations (translated from
    AuthorizationPolicy, with their `selector`) and the PeerAuthentications (mesh model).
    Indexed by namespace and selector label on construction, so `names_for` looks only at
    the policies of the workload's namespace and the root namespace that share a label."""

    authorizations: tuple[Authorization, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    _authz_index: dict[str, SelectorIndex[Authorization]] = field(
        init=False, repr=False, compare=False, hash=False
    )
    _pas_by_ns: dict[str, list[tuple[int, PeerAuthentication]]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_authz_index",
            _by_namespace(
                (a.namespace, a, a.selector) for a in self.authorizations if a.selector is not None
            ),
        )
        pas: dict[str, list[tuple[int, PeerAuthentication]]] = {}
        for i, pa in enumerate(self.peer_authentications):
            pas.setdefault(pa.namespace, []).append((i, pa))
        object.__setattr__(self, "_pas_by_ns", pas)

    @classmethod
    def build(
        cls,
        authorizations: Iterable[Authorization] = (),
        peer_authentications: Iterable[PeerAuthentication] = (),
    ) -> PolicyIndex:
        return cls(
            tuple(
                a
                for a in authorizations
                if a.scope is Scope.WORKLOAD_SELECTOR and a.selector is not None
            ),
            tuple(peer_authentications),
        )

    def names_for(
        self,
        namespace: str,
        labels: Mapping[str, str],
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> tuple[str, ...]:
        """`Workload.authorization_policies` in istiod's order: the selector-scoped policies
        of `namespace` or the root namespace that select `labels` (sorted), then the
        PeerAuthentication-derived names (sorted)."""
        spaces = (namespace,) if namespace == root_namespace else (namespace, root_namespace)
        names: list[str] = []
        pas: list[tuple[int, PeerAuthentication]] = []
        for ns in spaces:
            index = self._authz_index.get(ns)
            if index is not None:
                names += [a.key for a in index.matching(labels)]
            pas += self._pas_by_ns.get(ns, ())
        if len(spaces) > 1:
            pas.sort(key=lambda p: p[0])  # the given order, as a scan of all of them
        derived = workload_policy_names(
            [pa for _, pa in pas], namespace, labels, root_namespace=root_namespace
        )
        return (*sorted(names), *derived)


#: Waypoints by `namespace/name`, with the traffic they take (`istio.io/waypoint-for`).
WaypointIndex = Mapping[str, wellknown.WaypointFor]

_FOR_WORKLOADS = ("workload", "all")
_FOR_SERVICES = ("service", "all")


def waypoint_index(gateways: Iterable[object]) -> WaypointIndex:
    """The waypoints among Gateway objects (class istio-waypoint)."""
    out: dict[str, wellknown.WaypointFor] = {}
    for g in gateways:
        if isinstance(g, Gateway) and g.is_waypoint:
            out[f"{g.namespace or 'default'}/{g.name}"] = g.waypoint_for
    return MappingProxyType(out)


# ----------------------------------------------------------------------- helpers


def hostname(name: str, namespace: str, domain_suffix: str = DEFAULT_DOMAIN_SUFFIX) -> str:
    """A Service's DNS name `<name>.<ns>.svc.<domain>`."""
    return f"{name}.{namespace}.svc.{domain_suffix}"


def workload_uid(cluster_id: str, namespace: str, name: str) -> str:
    """istiod's uid of a pod workload: `<cluster>//Pod/<ns>/<name>`."""
    return f"{cluster_id}//Pod/{namespace}/{name}"


def workload_name(pod: Pod) -> str:
    """The controller's name (istio `kube.GetDeployMetaFromPod`): a ReplicaSet named
    `<deployment>-<pod-template-hash>` gives the Deployment's name, a Job named
    `<cronjob>-<8-10 digits>` the CronJob's; any other controller its own name; no
    controller, the pod's name. (istiod looks only when the pod has `generateName`, which
    Ketch's ObjectMeta does not carry; a controller reference is taken as the sign.)"""
    owner = next((r for r in pod.metadata.owner_references or [] if r.controller), None)
    if owner is None or not owner.name:
        return pod.name
    if owner.kind == "ReplicaSet":
        pth = pod.labels.get(POD_TEMPLATE_HASH_LABEL, "")
        if pth and owner.name.endswith(pth):
            return owner.name.removesuffix("-" + pth)
    if owner.kind == "Job":
        base, sep, stamp = owner.name.rpartition("-")
        if sep and base and stamp.isdigit() and 8 <= len(stamp) <= 10:
            return base
    return owner.name


@lru_cache(maxsize=1 << 16)
def _parse_ip(text: str) -> IpAddr:
    """`ip_address` of a pod or service address, parsed once per string (addresses are
    immutable; a rebuild parses the same 10000s of them again)."""
    return ip_address(text)


def pod_addresses(pod: Pod) -> tuple[IpAddr, ...]:
    """`status.podIPs`, else `status.podIP`; duplicates dropped, order kept."""
    status = pod.status
    if status is None:
        return ()
    raw = [p.ip for p in status.pod_ips or []] or ([status.pod_ip] if status.pod_ip else [])
    return tuple(dict.fromkeys(_parse_ip(a) for a in raw))


def locality_for_node(node: Node | None) -> Locality | None:
    """A Node's locality from its topology labels (None when it has none)."""
    if node is None:
        return None
    labels = node.labels
    loc = Locality(
        labels.get(REGION_LABEL, ""), labels.get(ZONE_LABEL, ""), labels.get(SUBZONE_LABEL, "")
    )
    return loc if (loc.region or loc.zone or loc.subzone) else None


def app_protocol(port: ApiServicePort) -> AppProtocol:
    """istio `kube.ConvertProtocol` then `toAppProtocolFromProtocol`: `appProtocol` if set,
    else the port name's prefix before `-`; HTTP, HTTP2 and gRPC are told to ztunnel, any
    other protocol is UNKNOWN."""
    if port.protocol == "UDP":
        return AppProtocol.UNKNOWN
    name = (port.app_protocol if port.app_protocol is not None else port.name) or ""
    prefix = name.partition("-")[0].lower()
    if name.lower().startswith("grpc-web"):
        return AppProtocol.UNKNOWN  # GRPCWeb is not one of ztunnel's app protocols
    return {
        "http": AppProtocol.HTTP11,
        "http2": AppProtocol.HTTP2,
        "grpc": AppProtocol.GRPC,
    }.get(prefix, AppProtocol.UNKNOWN)


def _waypoint_name(
    obj_labels: Mapping[str, str], ns_labels: Mapping[str, str], own_namespace: str
) -> tuple[str, str] | None:
    """(namespace, gateway) named by `istio.io/use-waypoint` on the object, else on its
    namespace; `none` on the object opts out. `istio.io/use-waypoint-namespace` beside the
    label names another namespace."""
    for labels in (obj_labels, ns_labels):
        name = labels.get(wellknown.USE_WAYPOINT)
        if name is None:
            continue
        if name == USE_WAYPOINT_NONE:
            return None
        return labels.get(wellknown.USE_WAYPOINT_NAMESPACE) or own_namespace, name
    return None


def _waypoint(
    obj_labels: Mapping[str, str],
    namespace: Namespace | None,
    own_namespace: str,
    waypoints: WaypointIndex | None,
    accepted: tuple[str, ...],
    domain_suffix: str,
) -> GatewayAddress | None:
    named = _waypoint_name(obj_labels, namespace.labels if namespace else {}, own_namespace)
    if named is None:
        return None
    ns, gw = named
    if waypoints is not None:
        # Known waypoints: it must exist and take this kind of traffic (istio.io/waypoint-for)
        kind = waypoints.get(f"{ns}/{gw}")
        if kind is None or kind not in accepted:
            return None
    return GatewayAddress(NamespacedHostname(ns, hostname(gw, ns, domain_suffix)), HBONE_PORT)


def _selects(service: Service, pod: Pod) -> bool:
    selector = service.spec.selector
    return bool(selector) and selector_matches(selector or {}, pod.labels)


def service_index(services: Iterable[Service]) -> dict[str, SelectorIndex[Service]]:
    """Services by namespace (`default` for none), indexed by selector label: the
    candidates for `workload_services` of a pod are `index[pod namespace].matching(labels)`
    (Services without a selector select no pod and are left out)."""
    return _by_namespace(
        (svc.namespace or "default", svc, svc.spec.selector)
        for svc in services
        if svc.spec.selector
    )


def workload_services(
    pod: Pod, services: Sequence[Service], *, domain_suffix: str = DEFAULT_DOMAIN_SUFFIX
) -> dict[str, dict[int, int]]:
    """`Workload.services`: `ns/hostname` -> {service port: target port} for the Services of
    the pod's namespace that select it. Named target ports are resolved against the pod's
    container ports; ports that do not resolve are left out (the service stays listed)."""
    out: dict[str, dict[int, int]] = {}
    pod_ns = pod.namespace or "default"
    for svc in services:
        if (svc.namespace or "default") != pod_ns or not _selects(svc, pod):
            continue
        ports: dict[int, int] = {}
        for p in svc.spec.ports or []:
            target = p.effective_target_port()
            if isinstance(target, str):
                resolved = pod.spec.port_by_name(target)
                if resolved is None:
                    continue
                target = resolved
            ports[p.port] = target
        out[f"{pod_ns}/{hostname(svc.name, pod_ns, domain_suffix)}"] = ports
    return out


# ----------------------------------------------------------------------- the translations


def workload_for_pod(
    pod: Pod,
    *,
    namespace: Namespace | None,
    services: Sequence[Service],
    policies_index: PolicyIndex,
    cluster_id: str = DEFAULT_CLUSTER_ID,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    node_locality: Locality | None = None,
    waypoints: WaypointIndex | None = None,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
) -> Workload | None:
    """The Workload istiod sends for `pod`, or None when it sends none (the pod has
    finished, or has no IP yet). `waypoints`, when given, restricts `istio.io/use-waypoint`
    to existing waypoints for workload/all traffic; without it the label is taken as is."""
    status = pod.status
    if status is not None and status.phase in _TERMINAL_PHASES:
        return None
    addresses = pod_addresses(pod)
    if not addresses:
        return None
    ns = pod.namespace or "default"
    labels = pod.labels
    name = workload_name(pod)
    redirected = pod.annotations.get(REDIRECTION_ANNOTATION) == REDIRECTION_ENABLED
    return Workload(
        uid=workload_uid(cluster_id, ns, pod.name),
        name=pod.name,
        namespace=ns,
        addresses=addresses,
        service_account=pod.spec.service_account_name or "default",
        trust_domain=trust_domain,
        node=pod.spec.node_name or "",
        protocol=TunnelProtocol.HBONE if redirected else TunnelProtocol.NONE,
        waypoint=None
        if labels.get(MANAGED_GATEWAY_LABEL) == MANAGED_BY_MESH_CONTROLLER
        else _waypoint(labels, namespace, ns, waypoints, _FOR_WORKLOADS, domain_suffix),
        canonical_name=wellknown.canonical_service(labels, name),
        canonical_revision=wellknown.canonical_revision(labels),
        workload_name=name,
        workload_type=WorkloadType.POD,
        status=HealthStatus.HEALTHY if pod.is_ready() else HealthStatus.UNHEALTHY,
        cluster_id=cluster_id,
        labels=labels,
        services=workload_services(pod, services, domain_suffix=domain_suffix),
        authorization_policies=policies_index.names_for(ns, labels, root_namespace=root_namespace),
        locality=node_locality or Locality(),
    )


def service_for(
    service: Service,
    *,
    namespace: Namespace | None = None,
    waypoints: WaypointIndex | None = None,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
) -> MeshService | None:
    """The Service istiod sends for a Kubernetes Service (None for ExternalName, which has
    no VIP or endpoints). VIPs are `clusterIPs` (else `clusterIP`); a headless Service has
    none. `waypoints` as for `workload_for_pod`, for service/all waypoints."""
    spec = service.spec
    if spec.type == "ExternalName":
        return None
    ns = service.namespace or "default"
    raw = spec.cluster_ips or ([spec.cluster_ip] if spec.cluster_ip else [])
    vips = tuple(dict.fromkeys(_parse_ip(v) for v in raw if v not in ("", "None")))
    ports: dict[int, ServicePort] = {}
    for p in spec.ports or []:
        # one entry per port number (a TCP and a UDP port may share it): the first
        target = p.effective_target_port()
        ports.setdefault(
            p.port, ServicePort(p.port, target if isinstance(target, int) else 0, app_protocol(p))
        )
    return MeshService(
        name=service.name,
        namespace=ns,
        hostname=hostname(service.name, ns, domain_suffix),
        vips=vips,
        ports=tuple(ports.values()),
        waypoint=_waypoint(service.labels, namespace, ns, waypoints, _FOR_SERVICES, domain_suffix),
    )
