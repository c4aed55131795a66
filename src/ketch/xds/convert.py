"""Mesh model <-> xDS protos, validated at the edge.

Encoding (`workload_to_proto`, `service_to_proto`, `authorization_to_proto`, `to_address`)
is what the control plane does before a push. Decoding (`address_from_proto`,
`authorization_from_proto`) is what the node proxy does with each resource of a response:
anything the mesh model cannot hold raises `Rejected(name, reason)`, never another exception,
so the caller can NACK exactly that resource and keep the rest (ztunnel's
`TryFrom<XdsWorkload>` plus `handle_single_resource`).

Wire facts (XDS.md section 8): IPs are raw 4/16-byte strings; service VIPs and waypoint
addresses are `NetworkAddress{network, address}`; `trust_domain` is omitted when it is
`cluster.local` and defaulted back on decode (an empty `service_account` means `default`, as
ztunnel); authorization IPs are `Address{bytes, prefix length}`; ports are uint32 and must fit
1..65535.

What the xDS form does not carry, so a round trip drops it: `Workload.labels` and
`Authorization.selector` (istiod resolves selectors itself and names the policies in
`Workload.authorization_policies`), `GatewayAddress.identity`, and the network of a service
VIP or waypoint address (the mesh model has none; `service_to_proto(network=...)` sets it).
Proto fields the mesh model has no place for (load balancing, extensions, capacity, ...) are
ignored on decode.

Versions: `version_of` hashes the deterministic serialization with BLAKE2b-64. istiod uses
xxhash64 of the marshaled Address; clients treat versions as opaque strings, so only
equality matters.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import TypeAlias, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import DecodeError, Message

from ketch.identity.spiffe import InvalidSpiffeId, SpiffeId
from ketch.mesh import (
    DEFAULT_TRUST_DOMAIN,
    Action,
    AppProtocol,
    Authorization,
    Clause,
    GatewayAddress,
    HealthStatus,
    IpAddr,
    IpNet,
    Locality,
    Match,
    MatchKind,
    MeshError,
    NamespacedHostname,
    Rule,
    Scope,
    Service,
    ServiceAccountMatch,
    ServicePort,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadType,
)
from ketch.proto.gen.istio.security import authorization_pb2 as sec
from ketch.proto.gen.istio.workload import workload_pb2 as wl
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, Rejected

__all__ = [
    "AddressObject",
    "Snapshot",
    "address_from_proto",
    "authorization_from_proto",
    "authorization_to_proto",
    "decode_all",
    "resource_name",
    "service_to_proto",
    "snapshot",
    "to_address",
    "to_any",
    "version_of",
    "workload_to_proto",
]

AddressObject: TypeAlias = Workload | Service
#: What a server pushes for one type: resource name -> (version, packed resource).
Snapshot: TypeAlias = dict[str, tuple[str, any_pb2.Any]]

_M = TypeVar("_M", bound=Message)


class _Invalid(Exception):
    """Internal: a decode step failed; turned into `Rejected` with the resource name."""


# -- names and versions -------------------------------------------------------------------


def resource_name(obj: Workload | Service | Authorization) -> str:
    """The xDS resource name: workload uid, service `namespace/hostname`, policy
    `namespace/name`."""
    if isinstance(obj, Workload):
        return obj.uid
    return obj.key  # Service.key = namespace/hostname, Authorization.key = namespace/name


def version_of(message: Message) -> str:
    """Opaque version of a resource: hex BLAKE2b-64 of its deterministic serialization
    (istiod: hex xxhash64; clients only compare versions for equality)."""
    data = message.SerializeToString(deterministic=True)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def to_any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def snapshot(
    objects: Iterable[Workload | Service | Authorization], *, network: str = ""
) -> Snapshot:
    """name -> (version, Any) for a set of mesh objects, ready for `ServerStream.respond`.
    Workloads and services share one snapshot (type Address); policies form another.
    `network`: the network of service VIPs (see `service_to_proto`)."""
    out: Snapshot = {}
    for obj in objects:
        msg: Message = (
            authorization_to_proto(obj)
            if isinstance(obj, Authorization)
            else to_address(obj, network=network)
        )
        out[resource_name(obj)] = (version_of(msg), to_any(msg))
    return out


# -- encode: mesh -> proto ----------------------------------------------------------------


def _ip_bytes(ip: IpAddr) -> bytes:
    return ip.packed


def _gateway_to_proto(g: GatewayAddress, network: str) -> wl.GatewayAddress:
    out = wl.GatewayAddress(hbone_mtls_port=g.hbone_port)
    if isinstance(g.destination, NamespacedHostname):
        out.hostname.namespace = g.destination.namespace
        out.hostname.hostname = g.destination.hostname
    else:
        out.address.network = network
        out.address.address = _ip_bytes(g.destination)
    return out


def workload_to_proto(w: Workload) -> wl.Workload:
    out = wl.Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        addresses=[_ip_bytes(a) for a in w.addresses],
        hostname=w.hostname,
        network=w.network,
        tunnel_protocol=wl.TunnelProtocol.Value(w.protocol.name),
        trust_domain="" if w.trust_domain == DEFAULT_TRUST_DOMAIN else w.trust_domain,
        service_account=w.service_account,
        node=w.node,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_type=wl.WorkloadType.Value(w.workload_type.name),
        workload_name=w.workload_name,
        authorization_policies=list(w.authorization_policies),
        status=wl.WorkloadStatus.Value(w.status.name),
        cluster_id=w.cluster_id,
    )
    if w.waypoint is not None:
        out.waypoint.CopyFrom(_gateway_to_proto(w.waypoint, w.network))
    for key, ports in sorted(w.services.items()):
        out.services[key].ports.extend(
            wl.Port(service_port=sp, target_port=tp) for sp, tp in sorted(ports.items())
        )
    if w.locality != Locality():
        out.locality.region = w.locality.region
        out.locality.zone = w.locality.zone
        out.locality.subzone = w.locality.subzone
    return out


def service_to_proto(s: Service, *, network: str = "") -> wl.Service:
    """`network` is the network the VIPs (and an IP waypoint) are reachable on; the mesh model
    does not carry it (istiod: the cluster's network)."""
    out = wl.Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        addresses=[wl.NetworkAddress(network=network, address=_ip_bytes(v)) for v in s.vips],
        ports=[
            wl.Port(
                service_port=p.service_port,
                target_port=p.target_port,
                app_protocol=wl.AppProtocol.Value(p.app_protocol.name),
            )
            for p in s.ports
        ],
        subject_alt_names=[san.uri for san in s.subject_alt_names],
    )
    if s.waypoint is not None:
        out.waypoint.CopyFrom(_gateway_to_proto(s.waypoint, network))
    return out


def to_address(obj: AddressObject, *, network: str = "") -> wl.Address:
    """The `Address` resource for a workload or a service."""
    if isinstance(obj, Workload):
        return wl.Address(workload=workload_to_proto(obj))
    return wl.Address(service=service_to_proto(obj, network=network))


def _string_match_to_proto(m: StringMatch) -> sec.StringMatch:
    match m.kind:
        case MatchKind.EXACT:
            return sec.StringMatch(exact=m.value)
        case MatchKind.PREFIX:
            return sec.StringMatch(prefix=m.value)
        case MatchKind.SUFFIX:
            return sec.StringMatch(suffix=m.value)
        case MatchKind.PRESENCE:
            return sec.StringMatch(presence=empty_pb2.Empty())


def _net_to_proto(n: IpNet) -> sec.Address:
    return sec.Address(address=n.network_address.packed, length=n.prefixlen)


def _sa_to_proto(m: ServiceAccountMatch) -> sec.ServiceAccountMatch:
    return sec.ServiceAccountMatch(namespace=m.namespace, serviceAccount=m.service_account)


def _match_to_proto(m: Match) -> sec.Match:
    return sec.Match(
        namespaces=[_string_match_to_proto(x) for x in m.namespaces],
        not_namespaces=[_string_match_to_proto(x) for x in m.not_namespaces],
        principals=[_string_match_to_proto(x) for x in m.principals],
        not_principals=[_string_match_to_proto(x) for x in m.not_principals],
        source_ips=[_net_to_proto(x) for x in m.source_ips],
        not_source_ips=[_net_to_proto(x) for x in m.not_source_ips],
        destination_ips=[_net_to_proto(x) for x in m.destination_ips],
        not_destination_ips=[_net_to_proto(x) for x in m.not_destination_ips],
        destination_ports=list(m.destination_ports),
        not_destination_ports=list(m.not_destination_ports),
        service_accounts=[_sa_to_proto(x) for x in m.service_accounts],
        not_service_accounts=[_sa_to_proto(x) for x in m.not_service_accounts],
    )


def authorization_to_proto(a: Authorization) -> sec.Authorization:
    """The xDS policy. `a.selector` is not sent: the control plane attaches selector policies
    to workloads through `Workload.authorization_policies`."""
    return sec.Authorization(
        name=a.name,
        namespace=a.namespace,
        scope=sec.Scope.Value(a.scope.name),
        action=sec.Action.Value(a.action.name),
        rules=[
            sec.Rule(
                clauses=[
                    sec.Clause(matches=[_match_to_proto(m) for m in c.matches]) for c in r.clauses
                ]
            )
            for r in a.rules
        ],
        dry_run=a.dry_run,
    )


# -- decode: proto -> mesh ----------------------------------------------------------------


def _unpack(resource: any_pb2.Any | _M, cls: type[_M], type_url: str) -> _M:
    if not isinstance(resource, any_pb2.Any):
        return resource
    if resource.type_url != type_url:
        raise _Invalid(f"resource has type {resource.type_url!r}, expected {type_url!r}")
    msg = cls()
    try:
        msg.ParseFromString(resource.value)
    except DecodeError as e:
        raise _Invalid(f"cannot decode {cls.DESCRIPTOR.full_name}: {e}") from e
    return msg


def _ip(raw: bytes, what: str) -> IpAddr:
    if len(raw) not in (4, 16):
        raise _Invalid(
            f"{what}: an IP address is 4 (IPv4) or 16 (IPv6) raw bytes, got {len(raw)} bytes"
        )
    return ipaddress.ip_address(raw)


def _port(value: int, what: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise _Invalid(f"{what}: port {value} is not in {low}..65535")
    return value


def _enum(enum: EnumDescriptor, value: int, what: str) -> str:
    """Name of a proto enum value; an unknown number (a newer istiod?) is rejected."""
    known = enum.values_by_number.get(value)
    if known is None:
        raise _Invalid(f"unknown {what} value {value} (is the control plane newer?)")
    return known.name


def _gateway_from_proto(g: wl.GatewayAddress, what: str) -> GatewayAddress:
    port = _port(g.hbone_mtls_port, f"{what} hbone_mtls_port")
    which = g.WhichOneof("destination")
    destination: IpAddr | NamespacedHostname
    if which == "hostname":
        destination = NamespacedHostname(g.hostname.namespace, g.hostname.hostname)
    elif which == "address":
        destination = _ip(g.address.address, f"{what} address")
    else:
        raise _Invalid(f"{what} has neither a hostname nor an address")
    return GatewayAddress(destination, port)


_TUNNEL = {"NONE": TunnelProtocol.NONE, "HBONE": TunnelProtocol.HBONE}
#: TCP and TLS are opaque to the node proxy (no L7 handling): same as UNKNOWN.
_APP_PROTOCOL = {
    "UNKNOWN": AppProtocol.UNKNOWN,
    "HTTP11": AppProtocol.HTTP11,
    "HTTP2": AppProtocol.HTTP2,
    "GRPC": AppProtocol.GRPC,
    "TCP": AppProtocol.UNKNOWN,
    "TLS": AppProtocol.UNKNOWN,
}


def _workload_from_proto(w: wl.Workload) -> Workload:
    if not w.uid:
        raise _Invalid("workload has an empty uid")
    tunnel = _enum(wl.TunnelProtocol.DESCRIPTOR, w.tunnel_protocol, "tunnel_protocol")
    if tunnel not in _TUNNEL:
        raise _Invalid(f"tunnel_protocol {tunnel} is not supported by Ketch (NONE or HBONE)")
    services: dict[str, dict[int, int]] = {}
    for key, plist in w.services.items():
        ports: dict[int, int] = {}
        for p in plist.ports:
            sp = _port(p.service_port, f"service {key} service_port")
            if sp in ports:
                raise _Invalid(f"service {key}: port {sp} listed twice")
            ports[sp] = _port(p.target_port, f"service {key} port {sp} target_port")
        services[key] = ports
    return Workload(
        uid=w.uid,
        name=w.name,
        namespace=w.namespace,
        addresses=tuple(_ip(a, "workload address") for a in w.addresses),
        service_account=w.service_account or "default",
        trust_domain=w.trust_domain or DEFAULT_TRUST_DOMAIN,
        node=w.node,
        protocol=_TUNNEL[tunnel],
        waypoint=_gateway_from_proto(w.waypoint, "waypoint") if w.HasField("waypoint") else None,
        canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision,
        workload_name=w.workload_name,
        workload_type=WorkloadType[
            _enum(wl.WorkloadType.DESCRIPTOR, w.workload_type, "workload_type")
        ],
        status=HealthStatus[_enum(wl.WorkloadStatus.DESCRIPTOR, w.status, "status")],
        cluster_id=w.cluster_id,
        services=services,
        authorization_policies=tuple(w.authorization_policies),
        network=w.network,
        hostname=w.hostname,
        locality=Locality(w.locality.region, w.locality.zone, w.locality.subzone),
    )


def _service_from_proto(s: wl.Service) -> Service:
    ports = tuple(
        ServicePort(
            service_port=_port(p.service_port, "service_port"),
            target_port=_port(p.target_port, f"port {p.service_port} target_port", allow_zero=True),
            app_protocol=_APP_PROTOCOL[
                _enum(wl.AppProtocol.DESCRIPTOR, p.app_protocol, "app_protocol")
            ],
        )
        for p in s.ports
    )
    return Service(
        name=s.name,
        namespace=s.namespace,
        hostname=s.hostname,
        vips=tuple(_ip(a.address, "service address") for a in s.addresses),
        ports=ports,
        subject_alt_names=tuple(SpiffeId.parse(san) for san in s.subject_alt_names),
        waypoint=_gateway_from_proto(s.waypoint, "waypoint") if s.HasField("waypoint") else None,
    )


def _derived_name(msg: wl.Address | sec.Authorization) -> str:
    if isinstance(msg, sec.Authorization):
        return f"{msg.namespace}/{msg.name}"
    which = msg.WhichOneof("type")
    if which == "workload":
        return msg.workload.uid
    if which == "service":
        return f"{msg.service.namespace}/{msg.service.hostname}"
    return ""


def _check_name(given: str | None, msg: wl.Address | sec.Authorization) -> None:
    derived = _derived_name(msg)
    if given is not None and derived != given:
        raise _Invalid(f"resource name does not match its content (content names {derived!r})")


def address_from_proto(
    resource: any_pb2.Any | wl.Address, name: str | None = None
) -> AddressObject:
    """Decode one Address resource (packed in an Any, or already a message). `name` is the
    xDS resource name: when given it must be the one the content implies (uid or
    `namespace/hostname`). Raises `Rejected(name, reason)` for anything invalid."""
    label = name
    try:
        msg = _unpack(resource, wl.Address, ADDRESS_TYPE)
        label = name if name is not None else (_derived_name(msg) or "<unnamed>")
        which = msg.WhichOneof("type")
        if which is None:
            raise _Invalid("address holds neither a workload nor a service")
        _check_name(name, msg)
        if which == "workload":
            return _workload_from_proto(msg.workload)
        return _service_from_proto(msg.service)
    except (_Invalid, MeshError, InvalidSpiffeId) as e:
        raise Rejected(label or "<unnamed>", str(e)) from e


def _string_match_from_proto(m: sec.StringMatch, what: str) -> StringMatch:
    match m.WhichOneof("match_type"):
        case "exact":
            return StringMatch(MatchKind.EXACT, m.exact)
        case "prefix":
            return StringMatch(MatchKind.PREFIX, m.prefix)
        case "suffix":
            return StringMatch(MatchKind.SUFFIX, m.suffix)
        case "presence":
            return StringMatch(MatchKind.PRESENCE)
        case _:
            raise _Invalid(f"{what}: a string match with no exact/prefix/suffix/presence")


def _net_from_proto(a: sec.Address, what: str) -> IpNet:
    ip = _ip(a.address, what)
    if a.length > ip.max_prefixlen:
        raise _Invalid(f"{what}: prefix length {a.length} is longer than {ip.max_prefixlen}")
    # Host bits past the prefix are ignored, as ztunnel's IpNet does.
    return ipaddress.ip_network((ip, a.length), strict=False)


def _match_from_proto(m: sec.Match) -> Match:
    def strings(field: str) -> tuple[StringMatch, ...]:
        return tuple(_string_match_from_proto(x, field) for x in getattr(m, field))

    def nets(field: str) -> tuple[IpNet, ...]:
        return tuple(_net_from_proto(x, field) for x in getattr(m, field))

    def sas(field: str) -> tuple[ServiceAccountMatch, ...]:
        return tuple(ServiceAccountMatch(x.namespace, x.serviceAccount) for x in getattr(m, field))

    def ports(field: str) -> tuple[int, ...]:
        return tuple(_port(p, field) for p in getattr(m, field))

    return Match(
        namespaces=strings("namespaces"),
        not_namespaces=strings("not_namespaces"),
        principals=strings("principals"),
        not_principals=strings("not_principals"),
        service_accounts=sas("service_accounts"),
        not_service_accounts=sas("not_service_accounts"),
        source_ips=nets("source_ips"),
        not_source_ips=nets("not_source_ips"),
        destination_ips=nets("destination_ips"),
        not_destination_ips=nets("not_destination_ips"),
        destination_ports=ports("destination_ports"),
        not_destination_ports=ports("not_destination_ports"),
    )


def authorization_from_proto(
    resource: any_pb2.Any | sec.Authorization, name: str | None = None
) -> Authorization:
    """Decode one Authorization resource; `name` as in `address_from_proto`
    (`namespace/name`). Raises `Rejected(name, reason)` for anything invalid."""
    label = name
    try:
        msg = _unpack(resource, sec.Authorization, AUTHORIZATION_TYPE)
        label = name if name is not None else _derived_name(msg)
        _check_name(name, msg)
        return Authorization(
            name=msg.name,
            namespace=msg.namespace,
            scope=Scope[_enum(sec.Scope.DESCRIPTOR, msg.scope, "scope")],
            action=Action[_enum(sec.Action.DESCRIPTOR, msg.action, "action")],
            rules=tuple(
                Rule(
                    tuple(Clause(tuple(_match_from_proto(m) for m in c.matches)) for c in r.clauses)
                )
                for r in msg.rules
            ),
            dry_run=msg.dry_run,
        )
    except (_Invalid, MeshError, InvalidSpiffeId) as e:
        raise Rejected(label or "<unnamed>", str(e)) from e


def decode_all(
    type_url: str, upserts: Iterable[tuple[str, any_pb2.Any]]
) -> tuple[dict[str, Workload | Service | Authorization], dict[str, str]]:
    """Decode every resource of a response: (name -> object, name -> rejection reason).
    A convenience for `ClientStream.on_response`'s apply callback."""
    good: dict[str, Workload | Service | Authorization] = {}
    bad: dict[str, str] = {}
    for name, packed in upserts:
        try:
            if type_url == AUTHORIZATION_TYPE:
                good[name] = authorization_from_proto(packed, name)
            elif type_url == ADDRESS_TYPE:
                good[name] = address_from_proto(packed, name)
            else:
                bad[name] = f"type {type_url!r} is not one Ketch decodes"
        except Rejected as e:
            bad[name] = e.reason
    return good, bad
