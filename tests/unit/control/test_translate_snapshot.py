"""translate_all: a cluster's objects -> the mesh snapshot, and that snapshot enforced by the
node proxy's own evaluation (ketch.ztunnel) gives the decisions the YAML means."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

from ketch.api import load_text
from ketch.control.translate.snapshot import MeshSnapshot, translate_all
from ketch.identity.spiffe import SpiffeId
from ketch.mesh import GatewayAddress, NamespacedHostname, TunnelProtocol
from ketch.ztunnel.rbac import Connection, authorize
from ketch.ztunnel.state import ProxyState

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1a}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d9f-abcde
  namespace: app
  labels: {app: web, version: v1, pod-template-hash: 7d9f}
  annotations: {ambient.istio.io/redirection: enabled}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f, uid: u1, controller: true}]
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{name: c, command: [sleep, "1"], ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.0.0.5
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: app}
spec: {containers: [{name: c, command: ["true"]}]}
status: {phase: Succeeded, podIP: 10.0.0.6}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-metrics, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [client]}}]}, {to: [{operation: {ports: ["9090"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7, namespace: app}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


def snapshot() -> MeshSnapshot:
    return translate_all(
        load_text(CLUSTER, "cluster.yaml").resources,
        cluster_id="c1",
        root_namespace="istio-system",
        trust_domain="cluster.local",
    )


def test_objects_translated() -> None:
    snap = snapshot()
    assert list(snap.workloads) == ["c1//Pod/app/web-7d9f-abcde"]
    w = snap.workloads["c1//Pod/app/web-7d9f-abcde"]
    assert w.workload_name == "web"
    assert w.canonical_name == "web"
    assert w.canonical_revision == "v1"
    assert w.protocol is TunnelProtocol.HBONE
    assert w.locality.zone == "eu-1a"
    assert dict(w.services) == {"app/web.app.svc.cluster.local": {80: 8080}}
    # the namespace's waypoint is for services only: not the pod's, the service's
    assert w.waypoint is None
    svc = snap.services["app/web.app.svc.cluster.local"]
    assert svc.waypoint == GatewayAddress(
        NamespacedHostname("app", "wp.app.svc.cluster.local"), 15008
    )
    assert svc.ports[0].target_port == 0  # named: resolved per workload
    assert w.authorization_policies == (
        "app/web-allow",
        "app/converted_peer_authentication_web-metrics",
    )
    assert set(snap.authorizations) == {
        "app/web-allow",
        "app/l7",
        "app/converted_peer_authentication_web-metrics",
        "istio-system/istio_converted_static_strict",
    }
    assert set(snap.peer_authentications) == {"istio-system/default", "app/web-metrics"}
    assert any("app/l7" in m and "never matches" in m for m in snap.warnings)


def test_snapshot_enforced_by_the_node_proxy() -> None:
    snap = snapshot()
    state = ProxyState.build(
        snap.workloads.values(),
        snap.services.values(),
        snap.authorizations.values(),
        root_namespace="istio-system",
    )
    w = next(iter(snap.workloads.values()))

    def allowed(port: int, ident: SpiffeId | None) -> bool:
        conn = Connection(ip_address("10.0.0.9"), 40000, ident, w, w.addresses[0], port)
        return authorize(state, conn).allowed

    client = SpiffeId("cluster.local", "client", "sa")
    other = SpiffeId("cluster.local", "other", "sa")
    assert allowed(8080, client)
    assert not allowed(8080, other)  # no ALLOW rule matches
    assert not allowed(8080, None)  # mesh STRICT
    assert allowed(9090, None)  # port-level PERMISSIVE, and the ALLOW rule for 9090
    # the same verdicts as the native PeerAuthentication evaluation
    native = ProxyState.build(
        [replace(w, authorization_policies=("app/web-allow",))],
        snap.services.values(),
        [snap.authorizations["app/web-allow"], snap.authorizations["app/l7"]],
        snap.peer_authentications.values(),
        root_namespace="istio-system",
    )
    for port in (8080, 9090):
        for ident in (client, other, None):
            nw = native.workload_by_uid(w.uid)
            assert nw is not None
            conn = Connection(ip_address("10.0.0.9"), 40000, ident, nw, w.addresses[0], port)
            assert authorize(native, conn).allowed == allowed(port, ident)


def test_no_objects() -> None:
    snap = translate_all([])
    assert (snap.workloads, snap.services, snap.authorizations, snap.warnings) == ({}, {}, {}, ())


def test_manifests_are_accepted_and_invalid_ones_warned_about() -> None:
    manifests = [r.to_manifest() for r in load_text(CLUSTER, "cluster.yaml").resources]
    broken = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": "app"}}
    snap = translate_all([*manifests, broken], cluster_id="c1")
    assert snap.workloads.keys() == snapshot().workloads.keys()
    assert snap.authorizations.keys() == snapshot().authorizations.keys()
    assert any(m.startswith("Pod app/bad: not sent") for m in snap.warnings)
