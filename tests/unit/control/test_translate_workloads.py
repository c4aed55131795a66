"""Pods and Services -> mesh Workloads and Services, field by field as istiod derives them
(XDS.md sections 5 and 6)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest
import yaml

from ketch.api import Gateway, Namespace, Node, Pod, Service, from_manifest
from ketch.control.translate.policy import translate_authorization_policy
from ketch.control.translate.workloads import (
    PolicyIndex,
    locality_for_node,
    service_for,
    waypoint_index,
    workload_for_pod,
    workload_name,
)
from ketch.mesh import (
    AppProtocol,
    GatewayAddress,
    HealthStatus,
    Locality,
    MtlsMode,
    NamespacedHostname,
    PeerAuthentication,
    ServicePort,
    TunnelProtocol,
    WorkloadType,
)


def obj(text: str) -> Any:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return from_manifest(doc)


def pod(
    *,
    name: str = "web-7d9f-abcde",
    ns: str = "app",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owners: list[dict[str, Any]] | None = None,
    status: dict[str, Any] | None = None,
    ports: list[dict[str, Any]] | None = None,
    spec: dict[str, Any] | None = None,
) -> Pod:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if annotations:
        meta["annotations"] = annotations
    if owners:
        meta["ownerReferences"] = owners
    container: dict[str, Any] = {"name": "c", "command": ["sleep", "1"]}
    if ports:
        container["ports"] = ports
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [container], **(spec or {})},
        "status": status
        if status is not None
        else {
            "phase": "Running",
            "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    p = from_manifest(doc)
    assert isinstance(p, Pod)
    return p


def service(text: str) -> Service:
    s = obj(f"apiVersion: v1\nkind: Service\n{text}")
    assert isinstance(s, Service)
    return s


def namespace(labels: dict[str, str]) -> Namespace:
    n = from_manifest(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": labels}}
    )
    assert isinstance(n, Namespace)
    return n


def translate(p: Pod, **kw: Any) -> Any:
    kw.setdefault("namespace", None)
    kw.setdefault("services", [])
    kw.setdefault("policies_index", PolicyIndex())
    return workload_for_pod(p, **kw)


# --- skipped pods


@pytest.mark.parametrize(
    "status",
    [
        pytest.param({"phase": "Succeeded", "podIP": "10.0.0.5"}, id="succeeded"),
        pytest.param({"phase": "Failed", "podIP": "10.0.0.5"}, id="failed"),
        pytest.param({"phase": "Pending"}, id="no-ip"),
        pytest.param({}, id="empty-status"),
    ],
)
def test_terminal_or_ipless_pods_have_no_workload(status: dict[str, Any]) -> None:
    assert translate(pod(status=status)) is None


# --- identity, addresses, status, node


def test_basic_fields() -> None:
    w = translate(
        pod(spec={"nodeName": "node-1", "serviceAccountName": "web-sa"}),
        cluster_id="c1",
        trust_domain="example.org",
        node_locality=Locality("r", "z", "s"),
    )
    assert w.uid == "c1//Pod/app/web-7d9f-abcde"
    assert (w.name, w.namespace) == ("web-7d9f-abcde", "app")
    assert w.addresses == (ip_address("10.0.0.5"),)
    assert w.status is HealthStatus.HEALTHY
    assert w.node == "node-1"
    assert w.service_account == "web-sa"
    assert w.trust_domain == "example.org"
    assert w.cluster_id == "c1"
    assert w.workload_type is WorkloadType.POD
    assert w.locality == Locality("r", "z", "s")
    assert w.protocol is TunnelProtocol.NONE
    assert w.waypoint is None


def test_defaults() -> None:
    w = translate(pod())
    assert w.uid == "Kubernetes//Pod/app/web-7d9f-abcde"
    assert w.service_account == "default"
    assert w.trust_domain == "cluster.local"
    assert w.node == ""


def test_pod_ips_win_over_pod_ip() -> None:
    w = translate(
        pod(
            status={
                "phase": "Running",
                "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
            }
        )
    )
    assert w.addresses == (ip_address("10.0.0.5"), ip_address("fd00::5"))


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([{"type": "Ready", "status": "True"}], HealthStatus.HEALTHY),
        ([{"type": "Ready", "status": "False"}], HealthStatus.UNHEALTHY),
        ([{"type": "PodScheduled", "status": "True"}], HealthStatus.UNHEALTHY),
        ([], HealthStatus.UNHEALTHY),
    ],
)
def test_status_follows_ready_condition(
    conditions: list[dict[str, str]], expected: HealthStatus
) -> None:
    w = translate(pod(status={"phase": "Running", "podIP": "10.0.0.5", "conditions": conditions}))
    assert w.status is expected


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"ambient.istio.io/redirection": "enabled"}, TunnelProtocol.HBONE),
        ({"ambient.istio.io/redirection": "disabled"}, TunnelProtocol.NONE),
        ({}, TunnelProtocol.NONE),
    ],
)
def test_tunnel_protocol(annotations: dict[str, str], expected: TunnelProtocol) -> None:
    assert translate(pod(annotations=annotations)).protocol is expected


# --- workload name and canonical labels


def owner(kind: str, name: str, controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": "x",
        "controller": controller,
    }


@pytest.mark.parametrize(
    ("labels", "owners", "expected"),
    [
        pytest.param(
            {"pod-template-hash": "7d9f"}, [owner("ReplicaSet", "web-7d9f")], "web", id="deployment"
        ),
        pytest.param({}, [owner("ReplicaSet", "web-7d9f")], "web-7d9f", id="rs-without-hash-label"),
        pytest.param(
            {"pod-template-hash": "zzz"},
            [owner("ReplicaSet", "web-7d9f")],
            "web-7d9f",
            id="rs-other",
        ),
        pytest.param({}, [owner("StatefulSet", "db")], "db", id="statefulset"),
        pytest.param({}, [owner("Job", "backup-28123456")], "backup", id="cronjob"),
        pytest.param({}, [owner("Job", "migrate")], "migrate", id="job"),
        pytest.param(
            {}, [owner("ReplicaSet", "x", controller=False)], "web-7d9f-abcde", id="no-ctl"
        ),
        pytest.param({}, None, "web-7d9f-abcde", id="bare-pod"),
    ],
)
def test_workload_name(
    labels: dict[str, str], owners: list[dict[str, Any]] | None, expected: str
) -> None:
    assert workload_name(pod(labels=labels, owners=owners)) == expected


@pytest.mark.parametrize(
    ("labels", "name", "revision"),
    [
        (
            {
                "service.istio.io/canonical-name": "cn",
                "app.kubernetes.io/name": "kn",
                "app": "a",
                "service.istio.io/canonical-revision": "cr",
                "app.kubernetes.io/version": "kv",
                "version": "v",
            },
            "cn",
            "cr",
        ),
        (
            {"app.kubernetes.io/name": "kn", "app": "a", "app.kubernetes.io/version": "kv"},
            "kn",
            "kv",
        ),
        ({"app": "a", "version": "v"}, "a", "v"),
        ({"pod-template-hash": "7d9f"}, "web", "latest"),
    ],
)
def test_canonical_name_and_revision(labels: dict[str, str], name: str, revision: str) -> None:
    w = translate(pod(labels=labels, owners=[owner("ReplicaSet", "web-7d9f")]))
    assert (w.canonical_name, w.canonical_revision) == (name, revision)


# --- services


WEB = """
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: named, port: 81, targetPort: web-port}
  - {name: missing, port: 82, targetPort: nope}
  - {name: same, port: 83}
"""


def test_services_of_a_pod() -> None:
    services = [
        service(WEB),
        service(
            "metadata: {name: other, namespace: app}\nspec: {selector: {app: db}, ports: [{port: 1}]}"
        ),
        service(
            "metadata: {name: web, namespace: elsewhere}\nspec: {selector: {app: web}, ports: [{port: 1}]}"
        ),
        service("metadata: {name: manual, namespace: app}\nspec: {ports: [{port: 1}]}"),
    ]
    w = translate(
        pod(labels={"app": "web"}, ports=[{"name": "web-port", "containerPort": 9090}]),
        services=services,
    )
    assert dict(w.services) == {"app/web.app.svc.cluster.local": {80: 8080, 81: 9090, 83: 83}}


def test_service_for() -> None:
    s = service_for(service(WEB))
    assert s is not None
    assert s.key == "app/web.app.svc.cluster.local"
    assert s.vips == (ip_address("10.96.0.10"),)
    assert s.ports == (
        ServicePort(80, 8080, AppProtocol.HTTP11),
        ServicePort(81, 0, AppProtocol.UNKNOWN),
        ServicePort(82, 0, AppProtocol.UNKNOWN),
        ServicePort(83, 83, AppProtocol.UNKNOWN),
    )
    assert s.waypoint is None


def test_headless_and_dual_stack_services() -> None:
    headless = service_for(
        service("metadata: {name: h, namespace: app}\nspec: {clusterIP: None, selector: {a: b}}")
    )
    assert headless is not None
    assert headless.vips == ()
    dual = service_for(
        service(
            "metadata: {name: d, namespace: app}\n"
            "spec: {clusterIPs: [10.96.0.1, 'fd00::1'], ports: [{port: 80}]}"
        )
    )
    assert dual is not None
    assert dual.vips == (ip_address("10.96.0.1"), ip_address("fd00::1"))


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("{name: http-web, port: 80}", AppProtocol.HTTP11),
        ("{name: http2, port: 80}", AppProtocol.HTTP2),
        ("{name: grpc-api, port: 80}", AppProtocol.GRPC),
        ("{name: grpc-web, port: 80}", AppProtocol.UNKNOWN),
        ("{name: tcp, port: 80, appProtocol: http}", AppProtocol.HTTP11),
        ("{name: http, port: 80, appProtocol: tcp}", AppProtocol.UNKNOWN),
        ("{name: http, port: 80, protocol: UDP}", AppProtocol.UNKNOWN),
    ],
)
def test_app_protocol(port: str, expected: AppProtocol) -> None:
    s = service_for(service(f"metadata: {{name: s, namespace: app}}\nspec: {{ports: [{port}]}}"))
    assert s is not None
    assert s.ports[0].app_protocol is expected


# --- waypoints


def waypoint_address(name: str, ns: str = "app") -> GatewayAddress:
    return GatewayAddress(NamespacedHostname(ns, f"{name}.{ns}.svc.cluster.local"), 15008)


def gateway(name: str, waypoint_for: str | None) -> Gateway:
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else {}
    g = from_manifest(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": "app", "labels": labels},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        }
    )
    assert isinstance(g, Gateway)
    return g


@pytest.mark.parametrize(
    ("pod_labels", "ns_labels", "expected"),
    [
        pytest.param({"istio.io/use-waypoint": "wp"}, {}, waypoint_address("wp"), id="pod"),
        pytest.param({}, {"istio.io/use-waypoint": "nswp"}, waypoint_address("nswp"), id="ns"),
        pytest.param(
            {"istio.io/use-waypoint": "wp"},
            {"istio.io/use-waypoint": "nswp"},
            waypoint_address("wp"),
            id="pod-beats-ns",
        ),
        pytest.param(
            {"istio.io/use-waypoint": "none"}, {"istio.io/use-waypoint": "nswp"}, None, id="opt-out"
        ),
        pytest.param(
            {"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "shared"},
            {},
            waypoint_address("wp", "shared"),
            id="other-namespace",
        ),
        pytest.param({}, {}, None, id="none"),
        pytest.param(
            {"gateway.istio.io/managed": "istio.io-mesh-controller"},
            {"istio.io/use-waypoint": "nswp"},
            None,
            id="waypoint-pod-has-no-waypoint",
        ),
    ],
)
def test_pod_waypoint_label(
    pod_labels: dict[str, str], ns_labels: dict[str, str], expected: GatewayAddress | None
) -> None:
    w = translate(pod(labels=pod_labels), namespace=namespace(ns_labels))
    assert w.waypoint == expected


@pytest.mark.parametrize(
    ("waypoint_for", "workload", "service"),
    [
        (None, False, True),  # default: service
        ("service", False, True),
        ("workload", True, False),
        ("all", True, True),
        ("none", False, False),
    ],
)
def test_waypoint_for_with_known_gateways(
    waypoint_for: str | None, workload: bool, service: bool
) -> None:
    index = waypoint_index([gateway("wp", waypoint_for)])
    labels = {"istio.io/use-waypoint": "wp"}
    w = translate(pod(labels=labels), waypoints=index)
    assert (w.waypoint is not None) is workload
    s = service_for(
        service_obj(labels),
        waypoints=index,
    )
    assert s is not None
    assert (s.waypoint is not None) is service
    # a waypoint that does not exist is not used
    assert (
        translate(pod(labels={"istio.io/use-waypoint": "ghost"}), waypoints=index).waypoint is None
    )


def service_obj(labels: dict[str, str]) -> Service:
    s = from_manifest(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s", "namespace": "app", "labels": labels},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    assert isinstance(s, Service)
    return s


def test_service_waypoint_from_namespace() -> None:
    s = service_for(service_obj({}), namespace=namespace({"istio.io/use-waypoint": "nswp"}))
    assert s is not None
    assert s.waypoint == waypoint_address("nswp")


# --- policies


def ap(name: str, ns: str, selector: dict[str, str] | None) -> Any:
    spec: dict[str, Any] = {"action": "DENY", "rules": [{}]}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    resource = from_manifest(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )
    a = translate_authorization_policy(resource)
    assert a is not None
    return a


def test_authorization_policy_names() -> None:
    index = PolicyIndex.build(
        [
            ap("sel", "app", {"app": "web"}),
            ap("root-sel", "istio-system", {"app": "web"}),
            ap("other-sel", "app", {"app": "db"}),
            ap("elsewhere", "other", {"app": "web"}),
            ap("ns-wide", "app", None),
            ap("global", "istio-system", None),
        ],
        [
            PeerAuthentication("strict", "app", MtlsMode.STRICT),
        ],
    )
    w = translate(pod(labels={"app": "web"}), policies_index=index)
    # istiod's order: the AuthorizationPolicies sorted, then the PeerAuthentication ones
    assert w.authorization_policies == (
        "app/sel",
        "istio-system/root-sel",
        "istio-system/istio_converted_static_strict",
    )


def test_node_locality() -> None:
    node = from_manifest(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": "n",
                "labels": {
                    "topology.kubernetes.io/region": "eu",
                    "topology.kubernetes.io/zone": "eu-1a",
                },
            },
        }
    )
    assert isinstance(node, Node)
    assert locality_for_node(node) == Locality("eu", "eu-1a", "")
    assert locality_for_node(None) is None
