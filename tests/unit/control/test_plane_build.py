"""The real build end to end: the control plane (in-process, `--xds`, default build) turns a
Pod, a Service and a DENY AuthorizationPolicy applied to its SQLite store into Istio's
Address and Authorization resources, which a node proxy's `ClientStream` over a real gRPC
channel decodes; a delete arrives as removed_resources. Plus `MeshBuild` alone."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc

from ketch.control import plane
from ketch.control.build import MeshBuild
from ketch.identity.ca import CertificateAuthority
from ketch.mesh import Action, Authorization, Service, Workload
from ketch.store.memory import MemoryStore
from ketch.store.sqlite import SqliteStore
from ketch.util.tasks import spawn
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, decode_all, ztunnel_node
from ketch.xds.session import ClientStream

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
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kbuild-"))  # short: unix socket path limit
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def config(tmp: Path) -> AsyncIterator[plane.ControlPlaneConfig]:
    """A running plane with `--xds` and the default (real) build."""
    cfg = plane.ControlPlaneConfig(state_dir=tmp / "state", xds=True)
    stop = asyncio.Event()
    task = spawn(plane.run(cfg, stop), "test-plane")
    try:
        async with asyncio.timeout(10):
            while not cfg.xds_socket.exists():  # noqa: ASYNC110 - another task's file
                await asyncio.sleep(0.02)
        yield cfg
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def apply(config: plane.ControlPlaneConfig, *objects: dict[str, Any]) -> None:
    writer = SqliteStore(config.store_file)  # another connection, as the CLI
    try:
        writer.apply(list(objects))
    finally:
        writer.close()


class Proxy:
    """A node proxy's xDS side: ClientStream over a real channel, holding decoded objects."""

    def __init__(self, config: plane.ControlPlaneConfig, node: str) -> None:
        ca = CertificateAuthority.create("cluster.local", state_dir=config.ca_dir)
        cert = ca.issue_node(node)
        serial = x509.load_pem_x509_certificate(cert.cert_pem).serial_number
        plane.token_store(config.state_dir).replace_certs(node, serial)  # as a join does
        self.channel = grpc.aio.secure_channel(
            f"unix:{config.xds_socket}",
            grpc.ssl_channel_credentials(ca.trust_bundle_pem, cert.key_pem, cert.chain_bytes),
            options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
        )
        self.call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            self.channel
        ).DeltaAggregatedResources()
        self.client = ClientStream()
        self.node = ztunnel_node(
            instance_ip="10.0.0.1", pod_name="ztunnel-x", pod_namespace="istio-system",
            node_name=node,
        )  # fmt: skip
        self.held: dict[str, dict[str, Any]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}
        self.removed: list[str] = []

    def _apply(self, type_url: str, upserts: list[Any], removals: list[str]) -> dict[str, str]:
        good, bad = decode_all(type_url, upserts)
        self.held[type_url].update(good)
        for name in removals:
            self.held[type_url].pop(name, None)
        self.removed += removals
        return bad

    async def start(self) -> None:
        for request in self.client.initial_requests(self.node):
            await self.call.write(request)

    async def step(self) -> str:
        """Read one response, apply it, ACK it; its type URL."""
        response = await asyncio.wait_for(self.call.read(), 10)
        await self.call.write(self.client.on_response(response, self._apply))
        return str(response.type_url)

    async def until(self, check: Any) -> None:
        while not check():
            await self.step()

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(None)


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
