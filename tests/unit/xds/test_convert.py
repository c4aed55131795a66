"""mesh <-> xDS protos: every field survives a round trip (through bytes, as on the wire),
and hostile input is rejected with `Rejected(name, reason)`, never another exception."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from google.protobuf import any_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.mesh import (
    Action,
    Authorization,
    Clause,
    GatewayAddress,
    Match,
    NamespacedHostname,
    Rule,
    Scope,
    Service,
    ServicePort,
    StringMatch,
    Workload,
)
from ketch.proto.gen.istio.security import authorization_pb2 as sec
from ketch.proto.gen.istio.workload import workload_pb2 as wl
from ketch.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    Rejected,
    address_from_proto,
    authorization_from_proto,
    authorization_to_proto,
    decode_all,
    resource_name,
    snapshot,
    to_address,
    to_any,
    version_of,
    workload_to_proto,
)
from tests.unit.xds import strategies as s


def _wire(msg: wl.Address | sec.Authorization) -> any_pb2.Any:
    """Pack and go through bytes, as a resource does on the wire."""
    packed = any_pb2.Any()
    packed.ParseFromString(to_any(msg).SerializeToString())
    return packed


@given(s.workloads)
def test_workload_round_trip(w: Workload) -> None:
    assert address_from_proto(_wire(to_address(w)), resource_name(w)) == w


@given(s.services)
def test_service_round_trip(svc: Service) -> None:
    assert address_from_proto(_wire(to_address(svc, network="net1")), svc.key) == svc


@given(s.authorizations)
def test_authorization_round_trip(a: Authorization) -> None:
    assert authorization_from_proto(_wire(authorization_to_proto(a)), a.key) == a


def test_wire_details() -> None:
    w = Workload(
        uid="Kubernetes//Pod/default/web-1",
        name="web-1",
        namespace="default",
        addresses=(ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("fd00::5")),
        waypoint=GatewayAddress(NamespacedHostname("default", "wp.default.svc.cluster.local")),
        network="net1",
    )
    msg = workload_to_proto(w)
    assert list(msg.addresses) == [bytes([10, 0, 0, 5]), ipaddress.ip_address("fd00::5").packed]
    assert msg.trust_domain == ""  # cluster.local is omitted, as istiod
    assert msg.waypoint.hostname.hostname == "wp.default.svc.cluster.local"
    assert msg.waypoint.hbone_mtls_port == 15008
    assert not msg.HasField("locality")
    svc = Service(
        "web",
        "default",
        "web.default.svc.cluster.local",
        vips=(ipaddress.ip_address("10.96.0.1"),),
        ports=(ServicePort(80, 8080),),
    )
    addr = to_address(svc, network="net1")
    assert addr.service.addresses[0].network == "net1"
    assert addr.service.addresses[0].address == bytes([10, 96, 0, 1])
    assert resource_name(svc) == "default/web.default.svc.cluster.local"
    assert resource_name(w) == w.uid
    pol = Authorization(
        "deny",
        "ns",
        Scope.NAMESPACE,
        Action.DENY,
        (
            Rule(
                (
                    Clause(
                        (
                            Match(
                                destination_ips=(ipaddress.ip_network("10.0.0.1/32"),),
                                principals=(StringMatch.parse("*"),),
                            ),
                        )
                    ),
                )
            ),
        ),
    )
    p = authorization_to_proto(pol)
    m = p.rules[0].clauses[0].matches[0]
    assert (m.destination_ips[0].address, m.destination_ips[0].length) == (bytes([10, 0, 0, 1]), 32)
    assert m.principals[0].WhichOneof("match_type") == "presence"
    assert resource_name(pol) == "ns/deny"


def test_versions_are_stable_and_content_based() -> None:
    a = Authorization("a", "ns", Scope.GLOBAL, Action.ALLOW)
    b = Authorization("a", "ns", Scope.GLOBAL, Action.DENY)
    va = version_of(authorization_to_proto(a))
    assert va == version_of(authorization_to_proto(a))
    assert len(va) == 16
    assert int(va, 16) >= 0
    assert va != version_of(authorization_to_proto(b))
    snap = snapshot([a])
    assert snap["ns/a"][0] == va
    assert snap["ns/a"][1].type_url == AUTHORIZATION_TYPE


def _wl(**kw: object) -> wl.Address:
    base: dict[str, object] = {"uid": "u1", "name": "n", "namespace": "ns"}
    base.update(kw)
    return wl.Address(workload=wl.Workload(**base))  # type: ignore[arg-type]


def _pol(**match: object) -> sec.Authorization:
    return sec.Authorization(
        name="p",
        namespace="ns",
        rules=[sec.Rule(clauses=[sec.Clause(matches=[sec.Match(**match)])])],
    )  # type: ignore[arg-type]


HOSTILE_ADDRESSES: list[tuple[str, any_pb2.Any | wl.Address, str | None, str]] = [
    (
        "5-byte ip",
        _wl(addresses=[b"\x01\x02\x03\x04\x05"]),
        None,
        "4 (IPv4) or 16 (IPv6) raw bytes, got 5",
    ),
    ("empty uid", _wl(uid=""), None, "empty uid"),
    ("unknown tunnel", _wl(tunnel_protocol=7), None, "unknown tunnel_protocol value 7"),
    ("legacy mtls", _wl(tunnel_protocol=2), None, "LEGACY_ISTIO_MTLS is not supported"),
    ("unknown workload type", _wl(workload_type=9), None, "unknown workload_type value 9"),
    ("unknown status", _wl(status=5), None, "unknown status value 5"),
    (
        "service port 70000",
        _wl(services={"ns/h": wl.PortList(ports=[wl.Port(service_port=70000, target_port=1)])}),
        None,
        "port 70000 is not in 1..65535",
    ),
    ("bad service key", _wl(services={"nokey": wl.PortList()}), None, "namespace>/<hostname>"),
    (
        "waypoint port 0",
        _wl(waypoint=wl.GatewayAddress(address=wl.NetworkAddress(address=b"\x0a\x00\x00\x01"))),
        None,
        "hbone_mtls_port: port 0",
    ),
    (
        "waypoint without destination",
        _wl(waypoint=wl.GatewayAddress(hbone_mtls_port=15008)),
        None,
        "neither a hostname nor an address",
    ),
    ("bad service account", _wl(service_account="Not_Valid"), None, "invalid service account"),
    ("empty address", wl.Address(), "x", "neither a workload nor a service"),
    ("name mismatch", _wl(), "other", "does not match its content"),
    (
        "garbage any",
        any_pb2.Any(type_url=ADDRESS_TYPE, value=b"\xff\xff\xff\xff"),
        "g",
        "cannot decode istio.workload.Address",
    ),
    (
        "wrong type",
        any_pb2.Any(type_url=AUTHORIZATION_TYPE, value=b""),
        "g",
        "expected 'type.googleapis.com/istio.workload.Address'",
    ),
    (
        "service app protocol",
        wl.Address(
            service=wl.Service(
                name="s",
                namespace="ns",
                hostname="h",
                ports=[wl.Port(service_port=80, app_protocol=42)],
            )
        ),
        None,
        "unknown app_protocol value 42",
    ),
    (
        "service vip 3 bytes",
        wl.Address(
            service=wl.Service(
                name="s",
                namespace="ns",
                hostname="h",
                addresses=[wl.NetworkAddress(address=b"abc")],
            )
        ),
        None,
        "got 3 bytes",
    ),
    (
        "service port 0",
        wl.Address(
            service=wl.Service(
                name="s", namespace="ns", hostname="h", ports=[wl.Port(service_port=0)]
            )
        ),
        None,
        "port 0 is not in 1..65535",
    ),
    (
        "service target 65536",
        wl.Address(
            service=wl.Service(
                name="s",
                namespace="ns",
                hostname="h",
                ports=[wl.Port(service_port=80, target_port=65536)],
            )
        ),
        None,
        "port 65536",
    ),
    (
        "bad SAN",
        wl.Address(
            service=wl.Service(
                name="s", namespace="ns", hostname="h", subject_alt_names=["dns:foo"]
            )
        ),
        None,
        "not a workload SPIFFE ID",
    ),
    (
        "service no hostname",
        wl.Address(service=wl.Service(name="s", namespace="ns")),
        None,
        "hostname must not be empty",
    ),
]


@pytest.mark.parametrize(
    ("case", "resource", "name", "reason"), HOSTILE_ADDRESSES, ids=[c[0] for c in HOSTILE_ADDRESSES]
)
def test_hostile_address_is_rejected(
    case: str, resource: any_pb2.Any | wl.Address, name: str | None, reason: str
) -> None:
    with pytest.raises(Rejected) as e:
        address_from_proto(resource, name)
    assert reason in e.value.reason
    # The rejection names the resource: the given name, else the one its content implies.
    if name is not None:
        assert e.value.name == name
    elif isinstance(resource, wl.Address) and resource.WhichOneof("type") == "workload":
        assert e.value.name == (resource.workload.uid or "<unnamed>")
    elif isinstance(resource, wl.Address):
        assert e.value.name == f"{resource.service.namespace}/{resource.service.hostname}"
    assert str(e.value) == f"{e.value.name}: {e.value.reason}"


HOSTILE_POLICIES: list[tuple[str, sec.Authorization | any_pb2.Any, str]] = [
    (
        "unknown scope",
        sec.Authorization(name="p", namespace="ns", scope=5),
        "unknown scope value 5",
    ),
    (
        "unknown action",
        sec.Authorization(name="p", namespace="ns", action=3),
        "unknown action value 3",
    ),
    ("empty name", sec.Authorization(namespace="ns"), "authorization name must not be empty"),
    ("port 0", _pol(destination_ports=[0]), "port 0 is not in 1..65535"),
    ("port 65536", _pol(not_destination_ports=[65536]), "port 65536"),
    ("ip 5 bytes", _pol(source_ips=[sec.Address(address=b"12345", length=32)]), "got 5 bytes"),
    (
        "prefix 33",
        _pol(destination_ips=[sec.Address(address=b"\x0a\x00\x00\x00", length=33)]),
        "prefix length 33 is longer than 32",
    ),
    (
        "empty string match",
        _pol(principals=[sec.StringMatch()]),
        "string match with no exact/prefix/suffix/presence",
    ),
    (
        "empty sa",
        _pol(service_accounts=[sec.ServiceAccountMatch(namespace="ns")]),
        "service account match name must not be empty",
    ),
    (
        "garbage any",
        any_pb2.Any(type_url=AUTHORIZATION_TYPE, value=b"\x0a\xff"),
        "cannot decode istio.security.Authorization",
    ),
]


@pytest.mark.parametrize(
    ("case", "resource", "reason"), HOSTILE_POLICIES, ids=[c[0] for c in HOSTILE_POLICIES]
)
def test_hostile_authorization_is_rejected(
    case: str, resource: sec.Authorization | any_pb2.Any, reason: str
) -> None:
    with pytest.raises(Rejected) as e:
        authorization_from_proto(resource, "ns/p" if isinstance(resource, any_pb2.Any) else None)
    assert reason in e.value.reason


def _decode_or_reason(decode: Callable[[], object]) -> str | None:
    """None if the input decoded, else the rejection reason (any other exception fails)."""
    try:
        decode()
    except Rejected as e:
        return e.reason
    return None


@settings(max_examples=300)
@given(st.binary(max_size=64), st.sampled_from([ADDRESS_TYPE, AUTHORIZATION_TYPE]))
def test_random_bytes_decode_or_reject(data: bytes, type_url: str) -> None:
    packed = any_pb2.Any(type_url=type_url, value=data)
    decode = address_from_proto if type_url == ADDRESS_TYPE else authorization_from_proto
    assert _decode_or_reason(lambda: decode(packed)) != ""


@settings(max_examples=100)
@given(s.workloads, st.data())
def test_mutated_wire_bytes_decode_or_reject(w: Workload, data: st.DataObject) -> None:
    raw = bytearray(to_any(to_address(w)).value)
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    packed = any_pb2.Any(type_url=ADDRESS_TYPE, value=bytes(raw))
    assert _decode_or_reason(lambda: address_from_proto(packed)) != ""


def test_decode_defaults_and_lenient_forms() -> None:
    got = address_from_proto(_wl(service_account="", trust_domain=""))
    assert isinstance(got, Workload)
    assert got.identity.uri == "spiffe://cluster.local/ns/ns/sa/default"
    svc = address_from_proto(
        wl.Address(
            service=wl.Service(
                name="s",
                namespace="ns",
                hostname="h",
                ports=[wl.Port(service_port=443, target_port=8443, app_protocol=wl.TLS)],
            )
        )
    )
    assert isinstance(svc, Service)
    assert svc.ports[0].app_protocol.name == "UNKNOWN"  # TCP/TLS are opaque to the proxy
    pol = authorization_from_proto(
        _pol(source_ips=[sec.Address(address=bytes([10, 1, 2, 3]), length=8)])
    )
    # Host bits past the prefix are ignored, as ztunnel's IpNet.
    assert pol.rules[0].clauses[0].matches[0].source_ips == (ipaddress.ip_network("10.0.0.0/8"),)


def test_decode_all_keeps_good_and_reports_bad() -> None:
    good = Authorization("a", "ns", Scope.GLOBAL, Action.ALLOW)
    bad = any_pb2.Any(type_url=AUTHORIZATION_TYPE, value=b"\xff")
    ok, rejected = decode_all(
        AUTHORIZATION_TYPE, [("ns/a", to_any(authorization_to_proto(good))), ("ns/b", bad)]
    )
    assert ok == {"ns/a": good}
    assert set(rejected) == {"ns/b"}
    _, rejected = decode_all("type.googleapis.com/other", [("x", bad)])
    assert "not one Ketch decodes" in rejected["x"]
