"""Table tests of outbound routing (in the style of ztunnel's outbound.rs build_request tests)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    GatewayAddress,
    HealthStatus,
    NamespacedHostname,
    Service,
    ServicePort,
    TunnelProtocol,
    Workload,
)
from ketch.ztunnel.route import Hbone, Passthrough, Plan, Refuse, first_pick, route
from ketch.ztunnel.state import ProxyState

IP = ip_address
WP_HOST = "waypoint.app.svc.cluster.local"


def pod(uid: str, *ips: str, ns: str = "app", sa: str | None = None, **kw: object) -> Workload:
    return Workload(
        uid=uid,
        name=uid,
        namespace=ns,
        addresses=tuple(IP(i) for i in ips),
        service_account=sa or uid,
        **kw,  # type: ignore[arg-type]
    )


def service(name: str, *vips: str, ports: dict[int, int], **kw: object) -> Service:
    return Service(
        name=name,
        namespace="app",
        hostname=f"{name}.app.svc.cluster.local",
        vips=tuple(IP(v) for v in vips),
        ports=tuple(ServicePort(s, t) for s, t in ports.items()),
        **kw,  # type: ignore[arg-type]
    )


def key(name: str) -> str:
    return f"app/{name}.app.svc.cluster.local"


EXTRA_SAN = SpiffeId("cluster.local", "app", "legacy-san")
WP_ID = SpiffeId("cluster.local", "app", "waypoint")
OVERRIDE_ID = SpiffeId("cluster.local", "app", "special-waypoint")

SERVICES = [
    service("web", "10.96.0.10", ports={80: 8080}),
    service("legacy", "10.96.0.20", ports={80: 8080}),
    service("named", "10.96.0.30", ports={80: 0}),
    service("empty", "10.96.0.40", ports={80: 8080}),
    service("sick", "10.96.0.41", ports={80: 8080}),
    service("waypoint", "10.96.0.50", ports={15008: 15008}),
    service(
        "reviews",
        "10.96.0.60",
        ports={9080: 9080},
        waypoint=GatewayAddress(NamespacedHostname("app", WP_HOST)),
    ),
    service("ratings", "10.96.0.70", ports={9080: 9080}, waypoint=GatewayAddress(IP("10.96.0.50"))),
    service("sans", "10.96.0.80", ports={443: 8443}, subject_alt_names=(EXTRA_SAN,)),
    service(
        "broken",
        "10.96.0.90",
        ports={80: 80},
        waypoint=GatewayAddress(NamespacedHostname("app", "missing.app.svc.cluster.local")),
    ),
    service(
        "pinned",
        "10.96.0.91",
        ports={80: 80},
        waypoint=GatewayAddress(IP("10.0.4.1"), identity=OVERRIDE_ID),
    ),
    service("dual", "10.96.0.100", "fd00:96::100", ports={80: 8080}),
]

WORKLOADS = [
    pod("client", "10.0.1.1", ns="client"),
    pod(
        "server",
        "10.0.2.1",
        sa="server",
        services={key("web"): {80: 8080}, key("named"): {80: 9090}},
    ),
    pod("server2", "10.0.2.2", sa="server", services={key("web"): {80: 8081}, key("named"): {}}),
    pod("legacy", "10.0.3.1", protocol=TunnelProtocol.NONE, services={key("legacy"): {}}),
    pod("sickpod", "10.0.2.9", status=HealthStatus.UNHEALTHY, services={key("sick"): {}}),
    pod("waypoint", "10.0.4.1", services={key("waypoint"): {}}),
    pod(
        "reviews",
        "10.0.5.1",
        services={key("reviews"): {}, key("ratings"): {}, key("broken"): {}, key("pinned"): {}},
    ),
    pod("db", "10.0.6.1", waypoint=GatewayAddress(IP("10.0.4.1"))),
    pod("sanpod", "10.0.7.1", services={key("sans"): {}}),
    pod("v6", "fd00::5"),
    pod("dualpod", "10.0.8.1", "fd00::8", services={key("dual"): {}}),
]

STATE = ProxyState.build(WORKLOADS, SERVICES)
W = {w.uid: w for w in WORKLOADS}
S = {s.name: s for s in SERVICES}


def ident(uid: str) -> SpiffeId:
    return W[uid].identity


@dataclass(frozen=True)
class Case:
    name: str
    dst: str
    port: int
    want: Plan
    src: str = "client"
    pick: int = 0


def hbone(
    hop: str,
    authority: str,
    ids: tuple[SpiffeId, ...],
    dst: str,
    svc: str | None = None,
    *,
    wp: bool = False,
    final: str | None = None,
) -> Hbone:
    return Hbone(
        next_hop=(IP(hop), 15008),
        authority=authority,
        expected_identities=ids,
        dst_workload=W[dst],
        dst_service=S[svc] if svc else None,
        waypoint=wp,
        final_workload=W[final] if final else None,
    )


CASES = [
    Case(
        "pod direct",
        "10.0.2.1",
        8080,
        hbone("10.0.2.1", "10.0.2.1:8080", (ident("server"),), "server"),
    ),
    Case("unknown ip passthrough", "192.0.2.7", 443, Passthrough((IP("192.0.2.7"), 443))),
    Case(
        "non-mesh pod passthrough",
        "10.0.3.1",
        8080,
        Passthrough((IP("10.0.3.1"), 8080), W["legacy"]),
    ),
    Case(
        "vip first endpoint",
        "10.96.0.10",
        80,
        hbone("10.0.2.1", "10.0.2.1:8080", (ident("server"),), "server", "web"),
    ),
    Case(
        "vip second endpoint, per-endpoint target port",
        "10.96.0.10",
        80,
        hbone("10.0.2.2", "10.0.2.2:8081", (ident("server2"),), "server2", "web"),
        pick=1,
    ),
    Case(
        "vip unknown port",
        "10.96.0.10",
        81,
        Refuse(503, "service app/web.app.svc.cluster.local (10.96.0.10) has no port 81"),
    ),
    Case(
        "vip without endpoints",
        "10.96.0.40",
        80,
        Refuse(
            503, "service app/empty.app.svc.cluster.local (10.96.0.40:80) has no healthy endpoints"
        ),
    ),
    Case(
        "vip with only unhealthy endpoints",
        "10.96.0.41",
        80,
        Refuse(
            503, "service app/sick.app.svc.cluster.local (10.96.0.41:80) has no healthy endpoints"
        ),
    ),
    Case(
        "vip to non-mesh endpoint",
        "10.96.0.20",
        80,
        Passthrough((IP("10.0.3.1"), 8080), W["legacy"], S["legacy"]),
    ),
    Case(
        "named target port resolved per endpoint",
        "10.96.0.30",
        80,
        hbone("10.0.2.1", "10.0.2.1:9090", (ident("server"),), "server", "named"),
    ),
    Case(
        "service waypoint by hostname",
        "10.96.0.60",
        9080,
        hbone("10.0.4.1", "10.96.0.60:9080", (WP_ID,), "waypoint", "reviews", wp=True),
    ),
    Case(
        "service waypoint by VIP",
        "10.96.0.70",
        9080,
        hbone("10.0.4.1", "10.96.0.70:9080", (WP_ID,), "waypoint", "ratings", wp=True),
    ),
    Case(
        "waypoint itself goes to the endpoint",
        "10.96.0.60",
        9080,
        hbone("10.0.5.1", "10.0.5.1:9080", (ident("reviews"),), "reviews", "reviews"),
        src="waypoint",
    ),
    Case(
        "pod with workload waypoint",
        "10.0.6.1",
        5432,
        hbone("10.0.4.1", "10.0.6.1:5432", (WP_ID,), "waypoint", wp=True, final="db"),
    ),
    Case(
        "workload waypoint skipped when source is the waypoint",
        "10.0.6.1",
        5432,
        hbone("10.0.6.1", "10.0.6.1:5432", (ident("db"),), "db"),
        src="waypoint",
    ),
    Case(
        "loop: 15008 on a mesh pod",
        "10.0.2.1",
        15008,
        Refuse(
            400,
            "app/server (10.0.2.1) port 15008 is a node-proxy port: refusing a self-call (loop)",
        ),
    ),
    Case(
        "loop: 15001 on a mesh pod",
        "10.0.2.1",
        15001,
        Refuse(
            400,
            "app/server (10.0.2.1) port 15001 is a node-proxy port: refusing a self-call (loop)",
        ),
    ),
    Case(
        "loop: 15006 on a mesh pod",
        "10.0.2.1",
        15006,
        Refuse(
            400,
            "app/server (10.0.2.1) port 15006 is a node-proxy port: refusing a self-call (loop)",
        ),
    ),
    Case(
        "self-call: loopback 15001 (would loop through the listener)",
        "127.0.0.1",
        15001,
        Refuse(
            503,
            "127.0.0.1:15001 is this pod's own node-proxy port: refusing a self-call (loop)",
        ),
    ),
    Case(
        "self-call: IPv6 loopback 15008",
        "::1",
        15008,
        Refuse(503, "[::1]:15008 is this pod's own node-proxy port: refusing a self-call (loop)"),
    ),
    Case(
        "self-call: the pod's own address on 15006",
        "10.0.1.1",
        15006,
        Refuse(
            503,
            "10.0.1.1:15006 is this pod's own node-proxy port: refusing a self-call (loop)",
        ),
    ),
    Case(
        "loopback on an app port is not a self-call",
        "127.0.0.1",
        8080,
        Passthrough((IP("127.0.0.1"), 8080)),
    ),
    Case(
        "15008 to a non-mesh ip is passthrough",
        "192.0.2.7",
        15008,
        Passthrough((IP("192.0.2.7"), 15008)),
    ),
    Case(
        "service SANs added to expected identities",
        "10.96.0.80",
        443,
        hbone("10.0.7.1", "10.0.7.1:8443", (ident("sanpod"), EXTRA_SAN), "sanpod", "sans"),
    ),
    Case(
        "waypoint service missing",
        "10.96.0.90",
        80,
        Refuse(
            503,
            "cannot reach the waypoint of service app/broken.app.svc.cluster.local: waypoint service app/missing.app.svc.cluster.local is unknown",
        ),
    ),
    Case(
        "gateway identity override",
        "10.96.0.91",
        80,
        hbone("10.0.4.1", "10.96.0.91:80", (OVERRIDE_ID,), "waypoint", "pinned", wp=True),
    ),
    Case(
        "ipv6 pod authority bracketed",
        "fd00::5",
        80,
        Hbone((IP("fd00::5"), 15008), "[fd00::5]:80", (ident("v6"),), W["v6"]),
    ),
    Case(
        "ipv6 VIP picks the endpoint's ipv6 address",
        "fd00:96::100",
        80,
        Hbone(
            (IP("fd00::8"), 15008), "[fd00::8]:8080", (ident("dualpod"),), W["dualpod"], S["dual"]
        ),
    ),
    Case(
        "ipv4 VIP picks the endpoint's ipv4 address",
        "10.96.0.100",
        80,
        Hbone(
            (IP("10.0.8.1"), 15008), "10.0.8.1:8080", (ident("dualpod"),), W["dualpod"], S["dual"]
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_route_table(case: Case) -> None:
    plan = route(STATE, W[case.src], IP(case.dst), case.port, pick=lambda n: case.pick)
    assert plan == case.want


def test_pick_sees_only_eligible_endpoints() -> None:
    seen: list[int] = []

    def pick(n: int) -> int:
        seen.append(n)
        return 0

    route(STATE, W["client"], IP("10.96.0.10"), 80, pick=pick)
    route(STATE, W["client"], IP("10.96.0.30"), 80, pick=pick)  # server2 has no named mapping
    assert seen == [2, 1]


def test_bad_pick_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"not in 0\.\.1"):
        route(STATE, W["client"], IP("10.96.0.10"), 80, pick=lambda n: n)


def test_default_pick_spreads_over_endpoints() -> None:
    hops = {
        p.next_hop[0]
        for p in (route(STATE, W["client"], IP("10.96.0.10"), 80) for _ in range(200))
        if isinstance(p, Hbone)
    }
    assert hops == {IP("10.0.2.1"), IP("10.0.2.2")}


def test_custom_self_ports_and_first_pick() -> None:
    plan = route(STATE, W["client"], IP("10.0.2.1"), 15008, self_ports=(15001,), pick=first_pick)
    assert isinstance(plan, Hbone)
    assert plan.authority == "10.0.2.1:15008"
