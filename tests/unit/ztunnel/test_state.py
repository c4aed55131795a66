from __future__ import annotations

from ipaddress import ip_address

import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    Action,
    Authorization,
    GatewayAddress,
    HealthStatus,
    MatchKind,
    MeshError,
    MtlsMode,
    NamespacedHostname,
    PeerAuthentication,
    Scope,
    Service,
    ServicePort,
    StringMatch,
    Workload,
    format_authority,
)
from ketch.ztunnel.state import ProxyState


def wl(uid: str, ip: str, ns: str = "default", **kw: object) -> Workload:
    return Workload(uid=uid, name=uid, namespace=ns, addresses=(ip_address(ip),), **kw)  # type: ignore[arg-type]


def svc(name: str, vip: str, ns: str = "default", **kw: object) -> Service:
    return Service(
        name=name,
        namespace=ns,
        hostname=f"{name}.{ns}.svc.cluster.local",
        vips=(ip_address(vip),),
        ports=(ServicePort(80, 8080),),
        **kw,  # type: ignore[arg-type]
    )


def test_workload_identity_and_immutability() -> None:
    labels = {"app": "a"}
    w = wl("u1", "10.0.0.1", ns="shop", service_account="cart", labels=labels)
    assert w.identity == SpiffeId("cluster.local", "shop", "cart")
    labels["app"] = "changed"
    assert w.labels["app"] == "a"
    with pytest.raises(TypeError):
        w.labels["x"] = "y"  # type: ignore[index]
    assert hash(w) == hash(wl("u1", "10.0.0.9"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uid": ""}, "uid"),
        ({"name": ""}, "name"),
        ({"service_account": "Bad_SA"}, "service account"),
        ({"addresses": (ip_address("10.0.0.1"), ip_address("10.0.0.1"))}, "duplicate"),
        ({"services": {"no-slash": {80: 8080}}}, "namespace>/<hostname"),
        ({"services": {"ns/h": {0: 8080}}}, "port 0"),
    ],
)
def test_invalid_workloads_rejected(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"uid": "u", "name": "n", "namespace": "ns"}
    base.update(kwargs)
    with pytest.raises(MeshError, match=message):
        Workload(**base)  # type: ignore[arg-type]


def test_service_validation() -> None:
    with pytest.raises(MeshError, match="listed twice"):
        Service("s", "ns", "s.ns", ports=(ServicePort(80, 1), ServicePort(80, 2)))
    with pytest.raises(MeshError, match="port"):
        ServicePort(70000, 1)
    assert ServicePort(80, 0).target_port == 0  # named port, resolved per endpoint
    s = svc("web", "10.96.0.1")
    assert s.key == "default/web.default.svc.cluster.local"
    assert s.port(80) == ServicePort(80, 8080)
    assert s.port(81) is None


@pytest.mark.parametrize(
    ("pattern", "kind", "yes", "no"),
    [
        ("*", MatchKind.PRESENCE, "anything", ""),
        ("*.local", MatchKind.SUFFIX, "a.local", "a.remote"),
        ("prod-*", MatchKind.PREFIX, "prod-eu", "dev-eu"),
        ("exact", MatchKind.EXACT, "exact", "exact2"),
    ],
)
def test_string_match(pattern: str, kind: MatchKind, yes: str, no: str) -> None:
    m = StringMatch.parse(pattern)
    assert m.kind is kind
    assert m.matches(yes)
    assert not m.matches(no)
    assert not m.matches(None)
    assert str(m) == pattern


def test_format_authority() -> None:
    assert format_authority(ip_address("10.1.2.3"), 80) == "10.1.2.3:80"
    assert format_authority(ip_address("fd00::1"), 443) == "[fd00::1]:443"


def test_namespaced_hostname_parse() -> None:
    assert NamespacedHostname.parse("ns/a.b") == NamespacedHostname("ns", "a.b")
    with pytest.raises(MeshError):
        NamespacedHostname.parse("nope")


def test_indexes_and_endpoints() -> None:
    web = svc("web", "10.96.0.1")
    a = wl("a", "10.0.0.1", services={web.key: {80: 8080}})
    b = wl("b", "10.0.0.2", services={web.key: {80: 8080}}, status=HealthStatus.UNHEALTHY)
    c = wl("c", "10.0.0.3")
    st = ProxyState.build([c, b, a], [web])
    assert st.workload_by_address(ip_address("10.0.0.3")) is c
    assert st.workload_by_address(ip_address("10.0.0.9")) is None
    assert st.workload_by_uid("a") is a
    assert st.service_by_vip(ip_address("10.96.0.1")) is web
    assert st.service_by_hostname("default", "web.default.svc.cluster.local") is web
    assert st.endpoints(web) == (a,)  # b is unhealthy, c not a member
    assert st.services_of(a) == (web,)
    assert st.services_of(c) == ()


def test_conflicts_rejected() -> None:
    with pytest.raises(MeshError, match="claimed by workloads"):
        ProxyState.build([wl("a", "10.0.0.1"), wl("b", "10.0.0.1")])
    with pytest.raises(MeshError, match="appears twice"):
        ProxyState.build([wl("a", "10.0.0.1"), wl("a", "10.0.0.2")])
    with pytest.raises(MeshError, match="also the address of workload"):
        ProxyState.build([wl("a", "10.0.0.1")], [svc("web", "10.0.0.1")])
    with pytest.raises(MeshError, match=r"VIP 10\.96\.0\.1 is claimed"):
        ProxyState.build([], [svc("web", "10.96.0.1"), svc("api", "10.96.0.1")])


def test_with_changes_is_a_new_snapshot() -> None:
    web = svc("web", "10.96.0.1")
    a = wl("a", "10.0.0.1", services={web.key: {80: 8080}})
    st = ProxyState.build([a], [web])
    a2 = wl("a", "10.0.0.5", services={web.key: {80: 8080}})
    b = wl("b", "10.0.0.1", services={web.key: {80: 8080}})
    st2 = st.with_changes(upsert_workloads=[a2, b])
    # old snapshot untouched
    assert st.workload_by_address(ip_address("10.0.0.1")) is a
    assert st2.workload_by_address(ip_address("10.0.0.1")) is b
    assert st2.workload_by_address(ip_address("10.0.0.5")) is a2
    assert st2.endpoints(web) == (a2, b)
    st3 = st2.with_changes(remove_workloads=["a", "unknown"], remove_services=[web.key])
    assert st3.workload_by_uid("a") is None
    assert st3.service_by_vip(ip_address("10.96.0.1")) is None
    # an inconsistent delta raises and leaves the snapshot usable
    with pytest.raises(MeshError):
        st2.with_changes(upsert_workloads=[wl("c", "10.0.0.1")])


def _authz(name: str, ns: str, scope: Scope, **kw: object) -> Authorization:
    return Authorization(name=name, namespace=ns, scope=scope, action=Action.ALLOW, **kw)  # type: ignore[arg-type]


def test_policies_for_scopes() -> None:
    w = wl(
        "a",
        "10.0.0.1",
        ns="shop",
        labels={"app": "cart"},
        authorization_policies=("shop/attached",),
    )
    st = ProxyState.build(
        [w],
        policies=[
            _authz("global", "istio-system", Scope.GLOBAL),
            _authz("ns-wide", "shop", Scope.NAMESPACE),
            _authz("other-ns", "bank", Scope.NAMESPACE),
            _authz("sel", "shop", Scope.WORKLOAD_SELECTOR, selector={"app": "cart"}),
            _authz("sel-miss", "shop", Scope.WORKLOAD_SELECTOR, selector={"app": "web"}),
            _authz("sel-other-ns", "bank", Scope.WORKLOAD_SELECTOR, selector={"app": "cart"}),
            _authz("root-sel", "istio-system", Scope.WORKLOAD_SELECTOR, selector={"app": "cart"}),
            _authz("attached", "shop", Scope.WORKLOAD_SELECTOR),
        ],
    )
    assert [p.key for p in st.policies_for(w)] == [
        "istio-system/global",
        "istio-system/root-sel",
        "shop/attached",
        "shop/ns-wide",
        "shop/sel",
    ]


def test_selector_requires_selector_scope() -> None:
    with pytest.raises(MeshError, match="WORKLOAD_SELECTOR"):
        _authz("x", "ns", Scope.NAMESPACE, selector={"a": "b"})


def test_mtls_mode_precedence() -> None:
    w = wl("a", "10.0.0.1", ns="shop", labels={"app": "cart"})
    mesh = PeerAuthentication("mesh", "istio-system", MtlsMode.STRICT)
    ns_pa = PeerAuthentication("ns", "shop", MtlsMode.PERMISSIVE)
    sel = PeerAuthentication(
        "sel",
        "shop",
        MtlsMode.UNSET,
        selector={"app": "cart"},
        port_modes={9090: MtlsMode.DISABLE, 9091: MtlsMode.UNSET},
    )
    assert ProxyState.build([w]).mtls_mode(w, 80) == (MtlsMode.PERMISSIVE, None)
    st = ProxyState.build([w], peer_authentications=[mesh])
    assert st.mtls_mode(w, 80) == (MtlsMode.STRICT, "istio-system/mesh")
    st = st.with_changes(upsert_peer_authentications=[ns_pa])
    assert st.mtls_mode(w, 80) == (MtlsMode.PERMISSIVE, "shop/ns")
    st = st.with_changes(upsert_peer_authentications=[sel])
    assert st.mtls_mode(w, 9090) == (MtlsMode.DISABLE, "shop/sel")
    # selector policy UNSET (and port UNSET) inherits from the namespace policy
    assert st.mtls_mode(w, 80) == (MtlsMode.PERMISSIVE, "shop/ns")
    assert st.mtls_mode(w, 9091) == (MtlsMode.PERMISSIVE, "shop/ns")
    with pytest.raises(MeshError, match="selector"):
        PeerAuthentication("p", "ns", port_modes={80: MtlsMode.STRICT})


def test_gateway_address() -> None:
    g = GatewayAddress(NamespacedHostname("ns", "wp.ns.svc.cluster.local"))
    assert g.hbone_port == 15008
    with pytest.raises(MeshError):
        GatewayAddress(ip_address("10.0.0.1"), hbone_port=0)
