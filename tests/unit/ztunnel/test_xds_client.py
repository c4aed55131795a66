"""The node proxy's xDS client against a real grpc.aio ADS server on a unix socket.

The fake server (tests/unit/ztunnel/fake_ads.py) runs the real `ketch.xds` server state
machine per stream over real istio protos; the client side is the real `ClientStream` and
`convert.decode_all`, so both ends of the wire are the production code.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import grpc
import pytest

from ketch.identity.ca import CertificateAuthority
from ketch.mesh import Action, Authorization, Rule, Scope, Service, ServicePort, Workload
from ketch.proto.gen.istio.workload import workload_pb2
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, ClientStream, to_any
from ketch.ztunnel.connections import Direction
from ketch.ztunnel.proxy import Ztunnel
from ketch.ztunnel.rbac import Connection
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.xds_client import Backoff, XdsClient, make_node, node_credentials
from ketch.ztunnel.xds_state import StateApplier
from tests.unit.ztunnel.fake_ads import FakeAds, serve, v


def wl(name: str, ip: str) -> Workload:
    return Workload(
        uid=f"Kubernetes//Pod/default/{name}",
        name=name,
        namespace="default",
        addresses=(ip_address(ip),),
    )


def svc(name: str, vip: str) -> Service:
    return Service(
        name=name,
        namespace="default",
        hostname=f"{name}.default.svc.cluster.local",
        vips=(ip_address(vip),),
        ports=(ServicePort(80, 8080),),
    )


def pol(name: str) -> Authorization:
    return Authorization(name=name, namespace="default", scope=Scope.NAMESPACE, action=Action.DENY)


W1, W2, W3 = wl("a", "10.0.0.1"), wl("b", "10.0.0.2"), wl("c", "10.0.0.3")
S1 = svc("web", "10.96.0.1")
P1, P2 = pol("deny-1"), pol("deny-2")


async def eventually(cond: Callable[[], object], within: float = 10.0) -> None:
    """Poll `cond` until true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in itertools.count():
        if cond():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


class _NoCerts:
    async def fetch(self, identity: Any) -> Any:
        raise AssertionError("no certificate needed")


@pytest.fixture
def proxy() -> Ztunnel:
    return Ztunnel("node-1", ProxyState(), _NoCerts(), [], metrics_flush_interval=None)


@pytest.fixture
async def client(tmp_path: Path, proxy: Ztunnel) -> AsyncIterator[XdsClient]:
    c = XdsClient(
        str(tmp_path / "ads.sock"),
        ClientStream(),
        StateApplier(proxy),
        make_node("node-1"),
    )
    yield c
    await c.stop()


def names(state: ProxyState) -> set[str]:
    return set(state.workloads) | set(state.services) | set(state.policies)


def acks(fake: FakeAds) -> Iterator[Any]:
    return (r for r in fake.requests if r.response_nonce)


async def test_initial_sync_update_and_removal(
    tmp_path: Path, proxy: Ztunnel, client: XdsClient
) -> None:
    fake = FakeAds({W1: "1", W2: "1", S1: "1", P1: "1"})
    server = await serve(fake, tmp_path / "ads.sock")
    try:
        assert not client.synced
        assert client.pending() == ["state manager"]
        await client.start()
        await asyncio.wait_for(client.wait_synced(), 10)
        assert client.pending() == []
        assert names(proxy.state) == {W1.uid, W2.uid, S1.key, P1.key}
        assert proxy.state.workloads[W1.uid] == W1
        # one wildcard first request per type, nothing held yet, node identified
        first = [r for r in fake.requests if not r.response_nonce]
        assert [r.type_url for r in first] == [ADDRESS_TYPE, AUTHORIZATION_TYPE]
        assert all(
            not r.resource_names_subscribe and not r.initial_resource_versions for r in first
        )
        assert first[0].node.id.startswith("ztunnel~")
        assert first[0].node.id == "ztunnel~~node-1.ketch-system~ketch-system.svc.cluster.local"
        assert first[0].node.metadata["NODE_NAME"] == "node-1"
        assert first[0].node.metadata["CLUSTER_ID"] == "Kubernetes"
        await eventually(lambda: len(list(acks(fake))) == 2)
        assert all(not a.HasField("error_detail") for a in acks(fake))

        moved = wl("a", "10.0.0.9")
        nonce = fake.push(ADDRESS_TYPE, v({moved: "2"}))
        await eventually(lambda: fake.answer_to(nonce))
        assert proxy.state.workloads[W1.uid] == moved
        assert not fake.answer_to(nonce).HasField("error_detail")

        nonce = fake.push(ADDRESS_TYPE, {}, [S1.key])
        nonce2 = fake.push(AUTHORIZATION_TYPE, v({P2: "1"}), [P1.key])
        await eventually(lambda: fake.answer_to(nonce) and fake.answer_to(nonce2))
        assert names(proxy.state) == {W1.uid, W2.uid, P2.key}
        assert client.stats.nacks == 0
    finally:
        await server.stop(0)


async def test_policy_push_closes_connections_it_now_denies(
    tmp_path: Path, proxy: Ztunnel, client: XdsClient
) -> None:
    fake = FakeAds({W1: "1"})
    server = await serve(fake, tmp_path / "ads.sock")
    try:
        await client.start()
        await eventually(lambda: client.synced)
        reasons: list[str] = []
        info = Connection(ip_address("10.0.0.7"), 40000, None, W1, ip_address("10.0.0.1"), 80)
        proxy.tracker.register(
            W1.uid, Direction.INBOUND, "10.0.0.7:40000", "10.0.0.1:80", reasons.append, info=info
        )
        deny_all = Authorization(
            name="deny-all",
            namespace="default",
            scope=Scope.NAMESPACE,
            action=Action.DENY,
            rules=(Rule(),),
        )
        nonce = fake.push(AUTHORIZATION_TYPE, v({deny_all: "1"}))
        await eventually(lambda: fake.answer_to(nonce))
        assert reasons == ["denied by the updated authorization policy"]
    finally:
        await server.stop(0)


async def test_rejected_resource_is_nacked_by_name_and_the_others_apply(
    tmp_path: Path, proxy: Ztunnel, client: XdsClient
) -> None:
    fake = FakeAds({W1: "1"})
    server = await serve(fake, tmp_path / "ads.sock")
    try:
        await client.start()
        await eventually(lambda: client.synced)
        bad = workload_pb2.Address(
            workload=workload_pb2.Workload(
                uid="Kubernetes//Pod/default/bad",
                name="bad",
                namespace="default",
                addresses=[b"\x0a\x00\x07"],  # 3 bytes: not an IP
            )
        )
        clash = wl("clash", "10.0.0.1")  # W1's address
        nonce = fake.push(
            ADDRESS_TYPE,
            {
                **v({W2: "1", clash: "1"}),
                "Kubernetes//Pod/default/bad": ("1", to_any(bad)),
            },
        )
        await eventually(lambda: fake.answer_to(nonce))
        nack = fake.answer_to(nonce)
        assert nack.HasField("error_detail")
        parts = dict(p.split(": ", 1) for p in nack.error_detail.message.split("; "))
        assert set(parts) == {"Kubernetes//Pod/default/bad", clash.uid}
        assert "got 3 bytes" in parts["Kubernetes//Pod/default/bad"]
        assert "10.0.0.1" in parts[clash.uid]
        assert set(proxy.state.workloads) == {W1.uid, W2.uid}
        assert client.stats.nacks == 1

        # the control plane fixes its config: the next push resends what the NACKed response
        # carried (W2 again) and removes the rejected names
        nonce = fake.push(ADDRESS_TYPE, v({W3: "1"}), [clash.uid, "Kubernetes//Pod/default/bad"])
        await eventually(lambda: fake.answer_to(nonce))
        assert not fake.answer_to(nonce).HasField("error_detail")
        resent = fake.sent[-1]
        assert {r.name for r in resent.resources} == {W2.uid, W3.uid}
        assert set(resent.removed_resources) == {clash.uid, "Kubernetes//Pod/default/bad"}
        assert set(proxy.state.workloads) == {W1.uid, W2.uid, W3.uid}
    finally:
        await server.stop(0)


async def test_server_restart_resumes_from_the_versions_held(
    tmp_path: Path, proxy: Ztunnel, client: XdsClient
) -> None:
    sock = tmp_path / "ads.sock"
    fake = FakeAds({W1: "1", W2: "1", S1: "1", P1: "1"})
    server = await serve(fake, sock)
    await client.start()
    await eventually(lambda: client.synced)
    nonce = fake.push(ADDRESS_TYPE, v({W2: "2"}))
    await eventually(lambda: fake.answer_to(nonce))
    await server.stop(0)

    # the control plane comes back with: W1 unchanged, W2 gone, W3 new, S1 unchanged, P1 -> P2
    fake2 = FakeAds({W1: "1", W3: "1", S1: "1", P2: "1"})
    await asyncio.sleep(0.1)  # a few failed attempts meanwhile
    assert names(proxy.state) == {W1.uid, W2.uid, S1.key, P1.key}
    server = await serve(fake2, sock)
    try:
        await eventually(lambda: len(list(acks(fake2))) == 2)
        first = {r.type_url: r for r in fake2.requests if not r.response_nonce}
        assert dict(first[ADDRESS_TYPE].initial_resource_versions) == {
            W1.uid: "1",
            W2.uid: "2",
            S1.key: "1",
        }
        assert dict(first[AUTHORIZATION_TYPE].initial_resource_versions) == {P1.key: "1"}
        # only the difference travelled, and the result is exactly the server's state
        addr = next(r for r in fake2.sent if r.type_url == ADDRESS_TYPE)
        assert [r.name for r in addr.resources] == [W3.uid]
        assert list(addr.removed_resources) == [W2.uid]
        assert names(proxy.state) == {W1.uid, W3.uid, S1.key, P2.key}
        assert proxy.state.workloads[W1.uid] == W1
        assert client.synced
    finally:
        await server.stop(0)


async def test_control_plane_gone_keeps_the_last_state(
    tmp_path: Path, proxy: Ztunnel, client: XdsClient
) -> None:
    fake = FakeAds({W1: "1", P1: "1"})
    server = await serve(fake, tmp_path / "ads.sock")
    await client.start()
    await eventually(lambda: client.synced and client.connected)
    before = proxy.state
    attempts = client.stats.attempts
    await server.stop(0)
    await eventually(lambda: client.stats.attempts >= attempts + 4)
    assert proxy.state is before
    assert client.synced
    assert not client.connected
    assert client.pending() == []
    # the stream's end and failed connects back off: 10 ms (reset by the last response), doubling
    assert client.stats.delays[:4] == [0.01, 0.02, 0.04, 0.08]


async def test_normal_end_of_stream_reconnects_at_once(
    tmp_path: Path, proxy: Ztunnel, client: XdsClient
) -> None:
    fake = FakeAds({W1: "1"})
    server = await serve(fake, tmp_path / "ads.sock")
    try:
        await client.start()
        await eventually(lambda: client.synced)
        fake.end_streams()
        await eventually(lambda: len([r for r in fake.requests if not r.response_nonce]) == 4)
        assert client.stats.delays == [0.01]
        again = [r for r in fake.requests if not r.response_nonce][2:]
        assert dict(again[0].initial_resource_versions) == {W1.uid: "1"}
        assert set(proxy.state.workloads) == {W1.uid}
    finally:
        await server.stop(0)


async def test_mtls_with_the_node_certificate(tmp_path: Path, proxy: Ztunnel) -> None:
    ca = CertificateAuthority.create()
    server_cert = ca.issue_server()
    creds = grpc.ssl_server_credentials(
        [(server_cert.key_pem, server_cert.chain_bytes)],
        root_certificates=ca.trust_bundle_pem,
        require_client_auth=True,
    )
    fake = FakeAds({W1: "1", P1: "1"})
    sock = tmp_path / "ads.sock"
    server = await serve(fake, sock, creds)
    node = ca.issue_node("node-1")
    good = XdsClient(
        f"unix:{sock}",
        ClientStream(),
        StateApplier(proxy),
        make_node("node-1"),
        credentials=node_credentials(ca.trust_bundle_pem, node.key_pem, node.chain_bytes),
    )
    stranger = CertificateAuthority.create().issue_node("node-1")
    bad = XdsClient(
        f"unix:{sock}",
        ClientStream(),
        StateApplier(proxy),
        make_node("node-1"),
        credentials=node_credentials(ca.trust_bundle_pem, stranger.key_pem, stranger.chain_bytes),
    )
    try:
        await good.start()
        await bad.start()
        await eventually(lambda: good.synced)
        assert names(proxy.state) == {W1.uid, P1.key}
        await eventually(lambda: bad.stats.attempts >= 2)
        assert not bad.synced
        assert bad.stats.last_error is not None
        assert bad.stats.last_error.startswith("UNAVAILABLE")
    finally:
        await good.stop()
        await bad.stop()
        await server.stop(0)


def test_backoff_doubles_to_15s_and_normal_ends_wait_10ms() -> None:
    b = Backoff()
    delays = [b.next() for _ in range(13)]
    assert delays[:4] == [0.01, 0.02, 0.04, 0.08]
    assert delays[-1] == 15.0
    assert max(delays) == 15.0
    assert b.next(normal=True) == 0.01
    assert b.next() == 0.01  # reset
    b.next()
    b.reset()
    assert b.next() == 0.01


class _FlakySession(ClientStream):
    """Fails on its second response: a protocol error the client must recover from."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def on_response(self, response: Any, apply: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("session broke")
        return super().on_response(response, apply)


async def test_a_session_error_restarts_the_stream_and_keeps_the_state(
    tmp_path: Path, proxy: Ztunnel
) -> None:
    fake = FakeAds({W1: "1", P1: "1"})
    server = await serve(fake, tmp_path / "ads.sock")
    session = _FlakySession()
    c = XdsClient(
        str(tmp_path / "ads.sock"),
        session,
        StateApplier(proxy),
        make_node("node-1"),
    )
    try:
        await c.start()
        await eventually(lambda: c.synced)
        assert c.stats.last_error == "RuntimeError: session broke"
        # a new stream: its first requests announce what the first (good) response applied
        first = [r for r in fake.requests if not r.response_nonce]
        assert len(first) == 4
        assert dict(first[2].initial_resource_versions) == {W1.uid: "1"}
        assert names(proxy.state) == {W1.uid, P1.key}
    finally:
        await c.stop()
        await server.stop(0)


async def test_a_refused_stream_leaves_no_request_task_behind(
    tmp_path: Path, client: XdsClient
) -> None:
    """The control plane refuses every stream (a revoked node: UNAUTHENTICATED). grpc
    stops reading the request iterator of a finished call without closing it; the client
    must end it, or every attempt leaves a pending task behind ("Task was destroyed but it
    is pending", "aclose(): asynchronous generator is already running" in the log)."""

    async def refuse(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "node certificate revoked")

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.discovery.v3.AggregatedDiscoveryService",
                {"DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(refuse)},
            ),
        )
    )
    server.add_insecure_port(f"unix:{tmp_path / 'ads.sock'}")
    await server.start()
    try:
        await client.start()
        await eventually(lambda: client.stats.attempts >= 4)
        # every attempt failed (grpc reports UNAUTHENTICATED, or INTERNAL when the abort
        # races the client's first write) and none got a response
        assert client.stats.last_error
        assert client.stats.responses == 0
        await client.stop()
        for _ in range(5):
            await asyncio.sleep(0)
        left = [
            t
            for t in asyncio.all_tasks()
            if not t.done() and "_consume_request_iterator" in repr(t.get_coro())
        ]
        assert left == []
    finally:
        await server.stop(0)
