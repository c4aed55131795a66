"""Every user object -> the mesh model the node proxies are sent: one pure function,
`translate_all`, over all of a store's objects (what istiod's ambient index computes from
its informers, XDS.md sections 5-7).

It composes `workloads` (Pod -> Workload, Service -> Service), `policy` (AuthorizationPolicy
-> Authorization) and `peer_authentication` (PeerAuthentication -> istiod's converted
Authorizations and the names each workload carries). The control plane's push diffs two
snapshots to send deltas; nothing here does I/O.

An object that cannot be translated never stops the others: it is left out and a warning
names it (istiod likewise logs and skips). Policy warnings (`policy_warnings`, the ones
`ketch apply` prints) are collected too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ketch.api import (
    AuthorizationPolicy,
    Gateway,
    Namespace,
    Node,
    PeerAuthentication,
    Pod,
    Resource,
    ResourceError,
    Service,
    from_manifest,
)
from ketch.control.translate.peer_authentication import converted_policies
from ketch.control.translate.policy import (
    policy_warnings,
    translate_authorization_policy,
    translate_peer_authentication,
)
from ketch.control.translate.workloads import (
    DEFAULT_CLUSTER_ID,
    DEFAULT_DOMAIN_SUFFIX,
    PolicyIndex,
    locality_for_node,
    service_for,
    service_index,
    waypoint_index,
    workload_for_pod,
)
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    Authorization,
    MeshError,
    Workload,
)
from ketch.mesh import PeerAuthentication as MeshPeerAuthentication
from ketch.mesh import Service as MeshService


@dataclass(frozen=True)
class MeshSnapshot:
    """What the control plane sends, keyed as xDS names them: workloads by uid, services by
    `namespace/hostname`, authorizations by `namespace/name` (AuthorizationPolicies and the
    PeerAuthentication-derived policies). `peer_authentications` are the PeerAuthentications
    in the mesh model, for a node proxy that evaluates them natively (Ketch's standalone
    mode); over xDS only the converted policies travel."""

    workloads: Mapping[str, Workload] = field(default_factory=dict)
    services: Mapping[str, MeshService] = field(default_factory=dict)
    authorizations: Mapping[str, Authorization] = field(default_factory=dict)
    peer_authentications: Mapping[str, MeshPeerAuthentication] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("workloads", "services", "authorizations", "peer_authentications"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


def _ns(obj: Resource) -> str:
    return obj.namespace or "default"


def _ref(obj: Resource) -> str:
    return f"{obj.kind} {_ns(obj)}/{obj.name}"


def _resources(
    objects: Iterable[Resource | Mapping[str, Any]], warnings: list[str]
) -> list[Resource]:
    """Typed objects; manifests (the store keeps manifests) are validated as `ketch apply`
    does, and one that fails is left out with a warning."""
    out: list[Resource] = []
    for o in objects:
        if isinstance(o, Resource):
            out.append(o)
            continue
        try:
            out.append(from_manifest(o, source="store"))
        except ResourceError as e:
            meta = o.get("metadata") if isinstance(o, Mapping) else None
            ref = ""
            if isinstance(meta, Mapping):
                ref = f"{o.get('kind')} {meta.get('namespace') or 'default'}/{meta.get('name')}: "
            warnings.append(f"{ref}not sent to the node proxies: invalid object: {e}")
    return out


def translate_all(
    objects: Iterable[Resource | Mapping[str, Any]],
    *,
    cluster_id: str = DEFAULT_CLUSTER_ID,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
) -> MeshSnapshot:
    """The mesh snapshot of `objects`: typed `ketch.api` resources or manifests, any kinds
    (those that do not matter are ignored).

    The reference translation: the control plane keeps it up to date object by object with
    `incremental.IncrementalMesh`, which is tested to give the same snapshot."""
    warnings: list[str] = []
    namespaces: dict[str, Namespace] = {}
    nodes: dict[str, Node] = {}
    pods: list[Pod] = []
    services: list[Service] = []
    gateways: list[Gateway] = []
    aps: list[AuthorizationPolicy] = []
    pas: list[PeerAuthentication] = []
    for o in _resources(objects, warnings):
        if isinstance(o, Namespace):
            namespaces[o.name] = o
        elif isinstance(o, Node):
            nodes[o.name] = o
        elif isinstance(o, Pod):
            pods.append(o)
        elif isinstance(o, Service):
            services.append(o)
        elif isinstance(o, Gateway):
            gateways.append(o)
        elif isinstance(o, AuthorizationPolicy):
            aps.append(o)
        elif isinstance(o, PeerAuthentication):
            pas.append(o)

    authorizations: dict[str, Authorization] = {}
    for ap in sorted(aps, key=_ref):
        warnings += [f"{_ref(ap)}: {path}: {msg}" for path, msg in policy_warnings(ap)]
        try:
            a = translate_authorization_policy(ap, root_namespace=root_namespace)
        except (MeshError, ValueError) as e:
            warnings.append(f"{_ref(ap)}: not sent to the node proxies: {e}")
            continue
        if a is not None:
            authorizations[a.key] = a
    mesh_pas: dict[str, MeshPeerAuthentication] = {}
    for pa in sorted(pas, key=_ref):
        warnings += [f"{_ref(pa)}: {path}: {msg}" for path, msg in policy_warnings(pa)]
        try:
            m = translate_peer_authentication(pa)
        except (MeshError, ValueError) as e:
            warnings.append(f"{_ref(pa)}: not sent to the node proxies: {e}")
            continue
        mesh_pas[m.key] = m
    for converted in converted_policies(list(mesh_pas.values()), root_namespace=root_namespace):
        authorizations[converted.key] = converted
    index = PolicyIndex.build(authorizations.values(), mesh_pas.values())
    waypoints = waypoint_index(gateways)

    mesh_services: dict[str, MeshService] = {}
    services.sort(key=_ref)
    for svc in services:
        try:
            s = service_for(
                svc,
                namespace=namespaces.get(_ns(svc)),
                waypoints=waypoints,
                domain_suffix=domain_suffix,
            )
        except (MeshError, ValueError) as e:
            warnings.append(f"{_ref(svc)}: not sent to the node proxies: {e}")
            continue
        if s is not None:
            mesh_services[s.key] = s

    # per pod, only the Services of its namespace sharing a label with it are matched
    by_namespace = service_index(services)
    workloads: dict[str, Workload] = {}
    for pod in sorted(pods, key=_ref):
        node = nodes.get(pod.spec.node_name or "")
        candidates = by_namespace.get(_ns(pod))
        try:
            w = workload_for_pod(
                pod,
                namespace=namespaces.get(_ns(pod)),
                services=candidates.matching(pod.labels) if candidates is not None else [],
                policies_index=index,
                cluster_id=cluster_id,
                trust_domain=trust_domain,
                root_namespace=root_namespace,
                node_locality=locality_for_node(node),
                waypoints=waypoints,
                domain_suffix=domain_suffix,
            )
        except (MeshError, ValueError) as e:
            warnings.append(f"{_ref(pod)}: not sent to the node proxies: {e}")
            continue
        if w is not None:
            workloads[w.uid] = w

    return MeshSnapshot(
        workloads=workloads,
        services=mesh_services,
        authorizations=authorizations,
        peer_authentications=mesh_pas,
        warnings=tuple(warnings),
    )
