"""The real build end to end: the control plane (in-process, `--xds`, default build) turns a
Pod, a Service and a DENY AuthorizationPolicy applied to its SQLite store into Istio's
Address and Authorization resources, which a node proxy's `ClientStream` over a real gRPC
channel decodes; a delete arrives as removed_resources. Plus `MeshBuild` alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import ip_address

import pytest

from ketch.control import plane
from ketch.control.build import MeshBuild
from ketch.mesh import Action, Authorization, Service, Workload
from ketch.store.memory import MemoryStore
from ketch.store.sqlite import SqliteStore
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, decode_all
from tests.unit.control.plane_helpers import Proxy, apply, running_plane

NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web-1",
        "namespace": "app",
        "labels": {"app": "web"},
        "annotations": {"ambient.istio.io/redirection": "enabled"},
    },
    "spec": {
        "nodeName": "node-a",
        "serviceAccountName": "web",
        "containers": [
            {
                "name": "c",
                "command": ["sleep", "1"],
                "ports": [{"name": "http", "containerPort": 8080}],
            }
        ],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.0.0.5",
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "app"},
    "spec": {
        "selector": {"app": "web"},
        "clusterIP": "10.96.0.10",
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    },
}
DENY = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-legacy", "namespace": "app"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "action": "DENY",
        "rules": [{"from": [{"source": {"namespaces": ["legacy"]}}]}],
    },
}
UID = "Kubernetes//Pod/app/web-1"


@pytest.fixture
async def config() -> AsyncIterator[plane.ControlPlaneConfig]:
    async with running_plane() as cfg:
        yield cfg


async def test_store_objects_reach_a_node_proxy_decoded(
    config: plane.ControlPlaneConfig,
) -> None:
    proxy = Proxy(config, "node-a")
    try:
        await proxy.start()
        assert [await proxy.step(), await proxy.step()] == [AUTHORIZATION_TYPE, ADDRESS_TYPE]
        assert proxy.client.ready()
        assert proxy.held == {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}

        apply(config, NS, POD, SERVICE, DENY)
        await proxy.until(lambda: UID in proxy.held[ADDRESS_TYPE])
        await proxy.until(lambda: "app/web.app.svc.cluster.local" in proxy.held[ADDRESS_TYPE])

        policy = proxy.held[AUTHORIZATION_TYPE]["app/no-legacy"]
        assert isinstance(policy, Authorization)
        assert policy.action is Action.DENY
        assert policy.namespace == "app"
        assert policy.name == "no-legacy"
        [rule] = policy.rules
        [clause] = rule.clauses
        [match] = clause.matches
        assert [m.value for m in match.namespaces] == ["legacy"]

        workload = proxy.held[ADDRESS_TYPE][UID]
        assert isinstance(workload, Workload)
        assert workload.addresses == (ip_address("10.0.0.5"),)
        assert workload.node == "node-a"
        assert workload.namespace == "app"
        assert workload.service_account == "web"
        assert workload.cluster_id == "Kubernetes"
        assert workload.trust_domain == "cluster.local"
        assert workload.authorization_policies == ("app/no-legacy",)
        assert workload.services == {"app/web.app.svc.cluster.local": {80: 8080}}

        service = proxy.held[ADDRESS_TYPE]["app/web.app.svc.cluster.local"]
        assert isinstance(service, Service)
        assert service.vips == (ip_address("10.96.0.10"),)
        # a named targetPort is resolved per workload (above), not on the Service (istiod)
        assert [(p.service_port, p.target_port) for p in service.ports] == [(80, 0)]

        writer = SqliteStore(config.store_file)
        try:
            writer.delete("AuthorizationPolicy", "app", "no-legacy")
            writer.delete("Pod", "app", "web-1")
        finally:
            writer.close()
        await proxy.until(lambda: UID in proxy.removed and "app/no-legacy" in proxy.removed)
        assert UID not in proxy.held[ADDRESS_TYPE]
        assert proxy.held[AUTHORIZATION_TYPE] == {}
        assert "app/web.app.svc.cluster.local" in proxy.held[ADDRESS_TYPE]
    finally:
        await proxy.close()


def test_mesh_build_types_and_peer_authentication_converted() -> None:
    store = MemoryStore()
    store.apply(
        [
            NS,
            POD,
            SERVICE,
            DENY,
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "STRICT"}},
            },
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        ]
    )
    resources = MeshBuild()(store)
    assert set(resources) == {ADDRESS_TYPE, AUTHORIZATION_TYPE}
    assert set(resources[ADDRESS_TYPE]) == {UID, "app/web.app.svc.cluster.local"}
    policies = set(resources[AUTHORIZATION_TYPE])
    assert "app/no-legacy" in policies
    # the STRICT mesh-wide PeerAuthentication travels as istiod's converted policy
    assert any(name.startswith("istio-system/") for name in policies)
    assert MeshBuild()(store) == resources  # versions are content hashes: stable


def test_mesh_build_takes_cluster_id_and_trust_domain() -> None:
    store = MemoryStore()
    store.apply([NS, POD])
    resources = MeshBuild(cluster_id="east", trust_domain="example.org")(store)
    [(name, (_, packed))] = resources[ADDRESS_TYPE].items()
    assert name == "east//Pod/app/web-1"
    good, bad = decode_all(ADDRESS_TYPE, [(name, packed)])
    assert bad == {}
    workload = good[name]
    assert isinstance(workload, Workload)
    assert workload.trust_domain == "example.org"


def test_mesh_build_logs_each_warning_once() -> None:
    store = MemoryStore()
    bad_pod = {**POD, "metadata": {**POD["metadata"], "name": "bad"}, "spec": {"containers": 3}}
    store.apply([NS, bad_pod])
    warned: list[str] = []
    build = MeshBuild(warn=warned.append)
    build(store)
    build(store)
    assert len(warned) == 1
    assert "Pod app/bad" in warned[0]
    store.apply([POD])
    build(store)  # the same warning, still there: not repeated
    assert len(warned) == 1
    store.delete("Pod", "app", "bad")
    build(store)
    store.apply([bad_pod])
    build(store)  # back after being resolved: a change, warned again
    assert len(warned) == 2
