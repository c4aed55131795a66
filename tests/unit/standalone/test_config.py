from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    GatewayAddress,
    HealthStatus,
    Locality,
    MtlsMode,
    NamespacedHostname,
    Scope,
    TunnelProtocol,
)
from ketch.standalone.config import ConfigError, load_config, parse_config
from ketch.ztunnel.rbac import Connection, authorize
from ketch.ztunnel.route import Hbone, route

EXAMPLE = """
trustDomain: example.org
node: node-1
workloads:
- name: client
  namespace: shop
  addresses: [10.0.1.1]
  serviceAccount: client
- name: server
  namespace: app
  addresses: [10.0.2.1, "fd00::21"]
  serviceAccount: server
  labels: {app: server}
  ports: {http: 8080}
- name: server-b
  namespace: app
  addresses: [10.0.2.2]
  serviceAccount: server
  labels: {app: server}
  status: UNHEALTHY
- name: legacy
  namespace: app
  addresses: [10.0.3.1]
  protocol: NONE
  services: {legacy: {80: 9000}}
- name: waypoint
  namespace: app
  addresses: [10.0.4.1]
  serviceAccount: waypoint
  services: [waypoint]
- name: db
  namespace: app
  addresses: [10.0.6.1]
  waypoint: {address: 10.0.4.1}
services:
- name: web
  namespace: app
  vips: [10.96.0.10]
  ports: [{port: 80, targetPort: http, appProtocol: http}]
  selector: {app: server}
- name: legacy
  namespace: app
  vips: [10.96.0.20]
  ports: [{port: 80}]
- name: waypoint
  namespace: app
  vips: [10.96.0.50]
  ports: [{port: 15008}]
- name: reviews
  namespace: app
  vips: [10.96.0.60]
  ports: [{port: 9080, targetPort: "9080"}]
  subjectAltNames: [spiffe://example.org/ns/app/sa/extra]
  waypoint: {service: waypoint}
policies:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-shop, namespace: app}
  spec:
    selector: {matchLabels: {app: server}}
    rules:
    - from: [{source: {namespaces: [shop]}}]
      to: [{operation: {methods: [GET]}}]
    - from: [{source: {principals: [example.org/ns/shop/sa/client]}}]
- apiVersion: security.istio.io/v1beta1
  kind: PeerAuthentication
  metadata: {name: default, namespace: istio-system}
  spec: {mtls: {mode: STRICT}}
"""


def test_example_config(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(EXAMPLE)
    state, warnings = load_config(path)

    server = state.workload_by_address(ip_address("10.0.2.1"))
    assert server is not None
    assert server.uid == "app/server"
    assert server.identity == SpiffeId("example.org", "app", "server")
    assert server.node == "node-1"
    assert dict(server.services["app/web.app.svc.cluster.local"]) == {80: 8080}
    server_b = state.workload_by_uid("app/server-b")
    assert server_b is not None
    assert server_b.status is HealthStatus.UNHEALTHY
    legacy = state.workload_by_uid("app/legacy")
    assert legacy is not None
    assert legacy.protocol is TunnelProtocol.NONE
    assert dict(legacy.services["app/legacy.app.svc.cluster.local"]) == {80: 9000}
    db = state.workload_by_uid("app/db")
    assert db is not None
    assert db.waypoint == GatewayAddress(ip_address("10.0.4.1"))
    reviews = state.service_by_vip(ip_address("10.96.0.60"))
    assert reviews is not None
    assert reviews.waypoint == GatewayAddress(
        NamespacedHostname("app", "waypoint.app.svc.cluster.local")
    )
    assert reviews.subject_alt_names == (SpiffeId("example.org", "app", "extra"),)
    web = state.service_by_vip(ip_address("10.96.0.10"))
    assert web is not None
    assert web.ports[0].target_port == 0  # named
    assert state.endpoints(web) == (server,)

    (policy,) = state.policies.values()
    assert policy.scope is Scope.WORKLOAD_SELECTOR
    assert len(policy.rules) == 1  # the GET rule is ignored at L4
    assert any("L7 fields" in w and "app/allow-shop" in w for w in warnings)
    assert state.mtls_mode(server, 8080) == (MtlsMode.STRICT, "istio-system/default")

    # the loaded state drives routing and authorization end to end
    client = state.workload_by_uid("shop/client")
    assert client is not None
    plan = route(state, client, ip_address("10.96.0.10"), 80, pick=lambda n: 0)
    assert isinstance(plan, Hbone)
    assert plan.authority == "10.0.2.1:8080"
    conn = Connection(
        ip_address("10.0.1.1"), 1234, client.identity, server, ip_address("10.0.2.1"), 8080
    )
    assert authorize(state, conn).allowed
    plaintext = Connection(ip_address("10.0.1.1"), 1234, None, server, ip_address("10.0.2.1"), 8080)
    assert not authorize(state, plaintext).allowed


def test_empty_config() -> None:
    loaded = parse_config("")
    assert loaded.state.workloads == {}
    assert loaded.trust_domain == "cluster.local"


def test_missing_named_port_warns() -> None:
    loaded = parse_config(
        """
workloads:
- {name: a, addresses: [10.0.0.1], labels: {app: a}}
services:
- {name: s, vips: [10.96.0.1], ports: [{port: 80, targetPort: http}], selector: {app: a}}
"""
    )
    assert any("no port named 'http'" in w for w in loaded.warnings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: [{name: a, addresses: [10.0.0.300]}]", r"workloads\[0\]\.addresses\[0\]: "),
        (
            "workloads: [{name: a, adresses: [10.0.0.1]}]",
            r"workloads\[0\]\.adresses: unknown field \(did you mean 'addresses'\?\); known fields: ",
        ),
        ("workloads: [{namespace: x}]", r"workloads\[0\]\.name: required field is missing"),
        ("workloads: [{name: a, protocol: TCP}]", r"workloads\[0\]\.protocol: "),
        (
            "workloads: [{name: a, serviceAccount: Bad_SA}]",
            r"workloads\[0\]: workload default/a: invalid service account",
        ),
        (
            "workloads: [{name: a, services: [nope]}]",
            r"workloads\[0\]\.services\.nope: no service 'nope'",
        ),
        (
            "workloads: [{name: a, waypoint: {}}]",
            r"workloads\[0\]\.waypoint: set exactly one",
        ),
        (
            "workloads: [{name: a, waypoint: {address: 10.0.0.1, identity: bogus}}]",
            r"workloads\[0\]\.waypoint: 'bogus' is not a workload SPIFFE ID",
        ),
        ("services: [{name: s, ports: [{port: 0}]}]", r"services\[0\]\.ports\[0\]\.port: "),
        (
            "services: [{name: s, ports: [{port: 80, targetPort: 0}]}]",
            r"services\[0\]\.ports\[0\]\.targetPort: 0 is not a port",
        ),
        (
            "services: [{name: s, subjectAltNames: [nope]}]",
            r"services\[0\]\.subjectAltNames\[0\]: ",
        ),
        (
            "workloads: [{name: a, addresses: [10.0.0.1]}, {name: b, addresses: [10.0.0.1]}]",
            "address 10.0.0.1 is claimed by workloads",
        ),
        (
            "policies: [{kind: AuthorizationPolicy, metadata: {name: p}, spec: {action: NOPE}}]",
            r"policies\[0\].spec.action: expected 'ALLOW'",
        ),
        ("workloads: [a, b", r"mesh.yaml line 1 column \d+: YAML syntax error: "),
        ("- just a list", "top level must be a mapping"),
    ],
)
def test_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        parse_config(text, "mesh.yaml")
    assert all(p.startswith("mesh.yaml") for p in exc.value.problems)


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(
            """
workloads: [{name: a, services: [x]}, {name: b, services: [y]}]
policies: [{kind: Nope, metadata: {name: p}}]
"""
        )
    assert len(exc.value.problems) == 3


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")


def test_local_pods_from_netns_and_node() -> None:
    loaded = parse_config(
        """
node: node-1
workloads:
- {name: a, addresses: [10.0.0.1], netns: pod-a}
- {name: b, namespace: app, serviceAccount: sb, addresses: [10.0.0.2], node: node-2,
   netns: /proc/123/ns/net}
- {name: c, addresses: [10.0.0.3]}
"""
    )
    pods = {p.name: p for p in loaded.pods}
    assert set(pods) == {"a", "b"}  # c has no netns: known, not captured here
    assert pods["a"].node == "node-1"  # the config's node is the default
    assert pods["a"].netns_path == "/run/netns/pod-a"
    assert pods["b"].netns_path == "/proc/123/ns/net"
    assert (pods["b"].uid, pods["b"].service_account) == ("app/b", "sb")
    assert [p.name for p in loaded.pods_on("node-1")] == ["a"]
    assert [p.name for p in loaded.pods_on("node-2")] == ["b"]
    assert loaded.pods_on("node-3") == []
    assert {p.name for p in loaded.pods_on("")} == {"a", "b"}


def test_empty_netns_is_an_error() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("workloads: [{name: a, addresses: [10.0.0.1], netns: ''}]", "m.yaml")
    assert "workloads[0].netns" in str(e.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "not UTF-8" in str(e.value)


def test_workload_locality() -> None:
    loaded = parse_config(
        "workloads:\n"
        "- {name: a, addresses: [10.0.0.1], locality: {region: r1, zone: z1, subzone: s1}}\n"
        "- {name: b, addresses: [10.0.0.2]}\n"
    )
    by_name = {w.name: w for w in loaded.state.workloads.values()}
    assert by_name["a"].locality == Locality("r1", "z1", "s1")
    assert by_name["b"].locality == Locality()
    with pytest.raises(ConfigError, match="continent"):
        parse_config("workloads: [{name: a, locality: {continent: x}}]")
