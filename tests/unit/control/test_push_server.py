"""The delta ADS servicer over a real grpc.aio server with TLS on unix sockets.

Well-behaved clients: subscriptions answered from the snapshot (Authorization before
Address), pushes carry only what changed, reconnects send only what differs, ACK/NACK show in
the client registry and in `istio.io/debug/syncz`, `disconnect` ends a node's streams, and a
store change travels watch -> debounce -> rebuild -> stream. Hostile clients: no certificate,
a workload or foreign certificate, a revoked one, bad tokens, unknown type URLs, bytes that
are not a request, oversized messages, too many streams, streams that never subscribe. Each is
refused with a meaningful status, and nothing logs a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from ketch.control.push import (
    Debouncer,
    Limits,
    Pusher,
    PushServer,
    Resources,
    SnapshotHolder,
    serve_push,
    watch_store,
)
from ketch.identity.ca import CertificateAuthority, IssuedCert
from ketch.identity.directory import StoreNodeDirectory
from ketch.identity.errors import Unauthenticated
from ketch.identity.server import RunningCa
from ketch.identity.spiffe import SpiffeId
from ketch.identity.tokens import TokenStore
from ketch.store.memory import MemoryStore
from ketch.util.tasks import spawn
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, SYNCZ_TYPE

TD = "cluster.local"
SERVER_NAME = "ketch-control-plane"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


def entry(type_url: str, name: str, version: str) -> tuple[str, Any]:
    return version, any_pb2.Any(type_url=type_url, value=f"{name}@{version}".encode())


class FakeBuild:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, tuple[str, Any]]] = {
            ADDRESS_TYPE: {"w1": entry(ADDRESS_TYPE, "w1", "1")},
            AUTHORIZATION_TYPE: {"ns/p": entry(AUTHORIZATION_TYPE, "ns/p", "1")},
        }

    def set(self, type_url: str, name: str, version: str | None) -> None:
        if version is None:
            self.resources[type_url].pop(name, None)
        else:
            self.resources[type_url][name] = entry(type_url, name, version)

    def __call__(self) -> Resources:
        return {t: dict(r) for t, r in self.resources.items()}


@dataclass
class Env:
    ca: CertificateAuthority
    build: FakeBuild
    holder: SnapshotHolder
    push: PushServer
    running: RunningCa
    revoked: set[str]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"unix:{self.running.unix_path}"

    @property
    def token_target(self) -> str:
        return f"unix:{self.running.join_unix_path}"

    def channel(self, cert: IssuedCert | None, *, target: str | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            self.ca.trust_bundle_pem,
            cert.key_pem if cert else None,
            cert.chain_bytes if cert else None,
        )
        ch = grpc.aio.secure_channel(
            target or self.target,
            creds,
            options=[
                ("grpc.ssl_target_name_override", SERVER_NAME),
                ("grpc.default_authority", SERVER_NAME),
            ],
        )
        self.channels.append(ch)
        return ch

    def stream(
        self,
        cert: IssuedCert | None,
        *,
        target: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel(cert, target=target))
        return stub.DeltaAggregatedResources(metadata=metadata or None)

    async def rebuild(self) -> None:
        self.push.notify(self.holder.rebuild())


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kpush-"))  # short: unix socket paths <= 107 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _validate_token(token: str) -> str:
    if token == "good-token-for-node-b":
        return "node-b"
    raise Unauthenticated("unknown token")


async def _env(tmp: Path, limits: Limits, **kw: Any) -> Env:
    ca = CertificateAuthority.create(TD)
    build = FakeBuild()
    holder = SnapshotHolder(build)
    holder.rebuild()
    revoked: set[str] = set()
    push = PushServer(
        lambda: holder.current,
        trust_domain=TD,
        cert_is_current=lambda node, _serial: node not in revoked,
        validate_token=_validate_token,
        limits=limits,
        **kw,
    )
    # the control plane's server: certificate service + ADS on the same listeners
    running = await serve_push(
        push,
        ca,
        StoreNodeDirectory(MemoryStore()),
        TokenStore(),
        unix_path=tmp / "ca.sock",
        join_unix_path=tmp / "join.sock",
    )
    return Env(ca, build, holder, push, running, revoked)


@pytest.fixture
async def env(tmp: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Env]:
    caplog.set_level(logging.DEBUG)
    e = await _env(tmp, Limits(first_request_timeout=5.0, policy_grace=0.3))
    try:
        yield e
    finally:
        for ch in e.channels:
            await ch.close(None)
        await e.running.stop(None)
    # No traceback anywhere: every refusal is one log line.
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ]
    assert "Traceback" not in caplog.text


def req(type_url: str, **kw: Any) -> Any:
    return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **kw)


async def read(call: Any) -> Any:
    return await asyncio.wait_for(call.read(), 5)


def names(response: Any) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    code = await asyncio.wait_for(call.code(), 5)
    return code, await call.details()


async def until(cond: Any, within: float = 5.0) -> None:
    """Poll a condition on server state that has no event to wait on."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - server-side state, nothing to await
            await asyncio.sleep(0.01)


# --- well-behaved clients -------------------------------------------------------------------


async def test_subscribe_push_ack_in_order(env: Env) -> None:
    node = env.ca.issue_node("node-a")
    call = env.stream(node)
    # ztunnel's order: Address first, then Authorization, before reading anything.
    await call.write(req(ADDRESS_TYPE))
    await call.write(req(AUTHORIZATION_TYPE))
    first = await read(call)
    second = await read(call)
    assert (first.type_url, second.type_url) == (AUTHORIZATION_TYPE, ADDRESS_TYPE)
    got = {first.type_url: first, second.type_url: second}
    assert names(got[ADDRESS_TYPE]) == {"w1": "1"}
    assert names(got[AUTHORIZATION_TYPE]) == {"ns/p": "1"}
    assert got[ADDRESS_TYPE].resources[0].resource.value == b"w1@1"
    for r in (first, second):
        await call.write(req(r.type_url, response_nonce=r.nonce))
    await until(lambda: set(env.push.clients()[0].types.values()) == {"SYNCED"})
    (client,) = env.push.clients()
    assert (client.node, client.auth) == ("node-a", "certificate")
    assert client.types == {ADDRESS_TYPE: "SYNCED", AUTHORIZATION_TYPE: "SYNCED"}

    # A change to both types: one push, Authorization first, only what changed.
    env.build.set(AUTHORIZATION_TYPE, "ns/q", "1")
    env.build.set(ADDRESS_TYPE, "w1", "2")
    env.build.set(ADDRESS_TYPE, "w2", "1")
    await env.rebuild()
    p1, p2 = await read(call), await read(call)
    assert (p1.type_url, p2.type_url) == (AUTHORIZATION_TYPE, ADDRESS_TYPE)
    assert names(p1) == {"ns/q": "1"}
    assert names(p2) == {"w1": "2", "w2": "1"}
    assert p2.system_version_info == str(env.holder.current.version)
    await call.write(req(ADDRESS_TYPE, response_nonce=p2.nonce))

    # A removal.
    env.build.set(ADDRESS_TYPE, "w1", None)
    await env.rebuild()
    p3 = await read(call)
    assert (p3.type_url, names(p3), list(p3.removed_resources)) == (ADDRESS_TYPE, {}, ["w1"])
    call.cancel()


async def test_address_waits_for_the_authorization_subscription(env: Env) -> None:
    # Authorization before Address also for the first answers: the Address subscription
    # is held until Authorization is subscribed, and then answered after it.
    call = env.stream(env.ca.issue_node("node-a"))
    await call.write(req(ADDRESS_TYPE))
    await asyncio.sleep(0.1)  # well within the grace (0.3 s here)
    await call.write(req(AUTHORIZATION_TYPE))
    assert [(await read(call)).type_url, (await read(call)).type_url] == [
        AUTHORIZATION_TYPE,
        ADDRESS_TYPE,
    ]
    call.cancel()


async def test_address_alone_is_answered_after_the_grace(env: Env) -> None:
    loop = asyncio.get_running_loop()
    call = env.stream(env.ca.issue_node("node-a"))
    start = loop.time()
    await call.write(req(ADDRESS_TYPE))
    r = await read(call)
    assert r.type_url == ADDRESS_TYPE
    assert loop.time() - start >= 0.25
    call.cancel()


async def test_reconnect_with_initial_versions_gets_only_the_difference(env: Env) -> None:
    env.build.set(ADDRESS_TYPE, "w2", "1")
    await env.rebuild()
    call = env.stream(env.ca.issue_node("node-a"))
    await call.write(
        req(ADDRESS_TYPE, initial_resource_versions={"w1": "1", "w2": "0", "gone": "7"})
    )
    r = await read(call)
    assert names(r) == {"w2": "1"}
    assert list(r.removed_resources) == ["gone"]
    call.cancel()


async def test_nack_shows_as_error_in_registry_and_syncz(env: Env) -> None:
    call = env.stream(env.ca.issue_node("node-a"))
    node = discovery_pb2.DeltaDiscoveryRequest().node
    node.id = "ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local"
    node.metadata.update({"NODE_NAME": "node-a", "CLUSTER_ID": "Kubernetes", "OTHER": "x"})
    first = req(ADDRESS_TYPE)
    first.node.CopyFrom(node)
    await call.write(first)
    r = await read(call)
    nack = req(ADDRESS_TYPE, response_nonce=r.nonce)
    nack.error_detail.message = "w1: bad address"
    await call.write(nack)
    await until(lambda: env.push.clients()[0].types[ADDRESS_TYPE] == "ERROR")

    # proxy-status over the token listener, as another node.
    debug = env.stream(
        None,
        target=env.token_target,
        metadata=(("authorization", "Bearer good-token-for-node-b"),),
    )
    await debug.write(req(SYNCZ_TYPE))
    answer = await read(debug)
    assert answer.type_url == SYNCZ_TYPE
    clients = {}
    for resource in answer.resources:
        config = csds_pb2.ClientConfig()
        assert resource.resource.Unpack(config)
        clients[resource.name] = config
    a = next(c for n, c in clients.items() if n.startswith("node-a/"))
    states = {
        g.type_url: csds_pb2.ConfigStatus.Name(g.config_status) for g in a.generic_xds_configs
    }
    # istiod's shape: a type a ztunnel never subscribed to is UNKNOWN in syncz.
    assert states == {ADDRESS_TYPE: "ERROR", AUTHORIZATION_TYPE: "UNKNOWN"}
    error = next(g for g in a.generic_xds_configs if g.type_url == ADDRESS_TYPE).error_state
    assert error.details == "w1: bad address"
    assert a.node.id == node.id
    meta = {k: v.string_value for k, v in a.node.metadata.fields.items()}
    assert meta["CLUSTER_ID"] == "Kubernetes"
    assert "OTHER" not in meta  # istiod copies only CLUSTER_ID, NAMESPACE, ISTIO_VERSION
    assert "NODE_NAME" not in meta
    assert meta["KETCH_NODE"] == "node-a"
    assert meta["KETCH_AUTH"] == "certificate"
    assert meta["KETCH_CONNECTED_SINCE"]
    # the asking stream (subscribed to nothing) is not listed, as istiod skips istioctl
    assert not any(n.startswith("node-b/") for n in clients)
    # the registry keeps Ketch's own view (NOT_SENT: nothing sent of that type)
    assert env.push.clients()[0].types == {ADDRESS_TYPE: "ERROR", AUTHORIZATION_TYPE: "NOT_SENT"}
    call.cancel()
    debug.cancel()


async def test_disconnect_ends_the_nodes_streams_only(env: Env) -> None:
    a = env.stream(env.ca.issue_node("node-a"))
    b = env.stream(env.ca.issue_node("node-b"))
    for call in (a, b):
        await call.write(req(ADDRESS_TYPE))
        await read(call)
    assert env.push.disconnect("node-a", "node node-a was revoked") == 1
    assert await status_of(a) == (grpc.StatusCode.UNAVAILABLE, "node node-a was revoked")
    await until(lambda: [c.node for c in env.push.clients()] == ["node-b"])
    b.cancel()
    await until(lambda: env.push.clients() == [])


async def test_store_change_reaches_the_stream(env: Env) -> None:
    store = MemoryStore()

    def build() -> Resources:
        items = store.list("Namespace").items
        return {
            ADDRESS_TYPE: {
                m["metadata"]["name"]: entry(
                    ADDRESS_TYPE, m["metadata"]["name"], m["metadata"]["resourceVersion"]
                )
                for m in items
            }
        }

    holder = SnapshotHolder(build)
    pusher = Pusher(holder, env.push.notify, debouncer=Debouncer(quiet=0.05, max_delay=1.0))
    env.push._snapshot = lambda: holder.current  # this test's own pipeline
    await pusher.push_now()
    call = env.stream(env.ca.issue_node("node-a"))
    await call.write(req(ADDRESS_TYPE))
    assert names(await read(call)) == {}
    tasks = [
        spawn(pusher.run(), "test-pusher"),
        spawn(watch_store(store, pusher.changed, wait=0.05), "test-watch"),
    ]
    try:
        await asyncio.sleep(0.1)
        for n in ("a", "b", "c"):  # a burst: debounced into one push
            store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}])
        r = await read(call)
        assert set(names(r)) == {"a", "b", "c"}
        assert pusher.pushes == 2  # the initial build and the burst
    finally:
        for t in tasks:
            t.cancel()
    call.cancel()


async def test_revalidate_ends_streams_of_revoked_certificates(env: Env) -> None:
    a = env.stream(env.ca.issue_node("node-a"))
    b = env.stream(env.ca.issue_node("node-b"))
    for call in (a, b):
        await call.write(req(AUTHORIZATION_TYPE))
        await read(call)
    assert await env.push.revalidate() == []
    env.revoked.add("node-a")  # what `ketch node revoke` does to the token store
    assert await env.push.revalidate() == ["node-a"]
    code, details = await status_of(a)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in details
    await until(lambda: [c.node for c in env.push.clients()] == ["node-b"])
    b.cancel()


async def test_syncz_can_be_refused(tmp: Path) -> None:
    e = await _env(tmp, Limits(), allow_debug=lambda caller: caller.node == "admin")
    try:
        call = e.stream(e.ca.issue_node("node-a"))
        await call.write(req(SYNCZ_TYPE))
        code, details = await status_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "may not read istio.io/debug/syncz" in details
    finally:
        for ch in e.channels:
            await ch.close(None)
        await e.running.stop(None)


# --- hostile clients ------------------------------------------------------------------------


async def test_no_client_certificate_fails_the_handshake(env: Env) -> None:
    call = env.stream(None)
    code, _ = await status_of(call)  # refused before any request is sent
    assert code == grpc.StatusCode.UNAVAILABLE
    assert env.push.clients() == []


async def test_certificate_of_another_ca_fails_the_handshake(env: Env) -> None:
    other = CertificateAuthority.create(TD).issue_node("node-a")
    call = env.stream(other)
    code, _ = await status_of(call)  # refused before any request is sent
    assert code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("who", "detail"),
    [
        ("workload", "not a node certificate"),
        ("revoked", "revoked"),
    ],
)
async def test_wrong_certificate_is_unauthenticated(env: Env, who: str, detail: str) -> None:
    if who == "workload":
        cert = env.ca.issue_workload(SpiffeId(TD, "shop", "cart"))
    else:
        env.revoked.add("node-a")
        cert = env.ca.issue_node("node-a")
    call = env.stream(cert)
    code, details = await status_of(call)  # refused at stream start, before any request
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert detail in details


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ((), "no node certificate and no 'authorization: Bearer"),
        ((("authorization", "Basic abc"),), "must be 'Bearer <token>'"),
        ((("authorization", "Bearer wrong"),), "unknown token"),
    ],
)
async def test_token_listener_refuses_bad_tokens(
    env: Env, metadata: tuple[tuple[str, str], ...], detail: str
) -> None:
    call = env.stream(None, target=env.token_target, metadata=metadata)
    code, details = await status_of(call)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert detail in details


@pytest.mark.parametrize(
    ("request_", "code", "detail"),
    [
        (req("type.googleapis.com/evil.Thing"), "INVALID_ARGUMENT", "unknown type URL"),
        (req(""), "INVALID_ARGUMENT", "without type_url"),
        (
            req(ADDRESS_TYPE, resource_names_subscribe=[f"n{i}" for i in range(10_001)]),
            "INVALID_ARGUMENT",
            "resource names in one request",
        ),
    ],
)
async def test_bad_requests_close_the_stream(
    env: Env, request_: Any, code: str, detail: str
) -> None:
    call = env.stream(env.ca.issue_node("node-a"))
    await call.write(request_)
    got, details = await status_of(call)
    assert got == grpc.StatusCode[code]
    assert detail in details
    await until(lambda: env.push.clients() == [])


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff garbage", b"\x0a\x05ab", bytes(range(256))],
    ids=["invalid-varint", "truncated", "all-bytes"],
)
async def test_garbage_bytes_close_the_stream_without_a_traceback(env: Env, garbage: bytes) -> None:
    raw = env.channel(env.ca.issue_node("node-a")).stream_stream(METHOD)
    call = raw()
    await call.write(garbage)
    code, _ = await status_of(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_oversized_message_is_refused(tmp: Path) -> None:
    e = await _env(tmp, Limits(max_receive_bytes=64 * 1024))
    try:
        call = e.stream(e.ca.issue_node("node-a"))
        await call.write(req(ADDRESS_TYPE, resource_names_subscribe=["x" * 100_000]))
        code, _ = await status_of(call)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for ch in e.channels:
            await ch.close(None)
        await e.running.stop(None)


async def test_stream_caps_and_idle_streams(tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    e = await _env(tmp, Limits(max_streams_per_node=2, max_streams=3, first_request_timeout=3.0))
    try:
        node_a = e.ca.issue_node("node-a")
        idle = [e.stream(node_a) for _ in range(2)]
        for call in idle:
            await call.wait_for_connection()
        await until(lambda: len(e.push.clients()) == 2)
        # A third stream for the same node is refused ...
        third = e.stream(node_a)
        code, details = await status_of(third)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "node node-a already has 2 xDS streams" in details
        # ... another node fits under the overall cap, then the cap is reached.
        b = e.stream(e.ca.issue_node("node-b"))
        await b.write(req(AUTHORIZATION_TYPE))
        await read(b)
        c = e.stream(e.ca.issue_node("node-c"))
        code, details = await status_of(c)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 3 xDS streams" in details
        # Streams that never subscribe are closed after the first-request timeout (3 s:
        # long enough for the cap checks above on a loaded machine); the
        # subscribed one stays.
        for call in idle:
            code, details = await status_of(call)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no DeltaDiscoveryRequest within 3s" in details
        assert [c.node for c in e.push.clients()] == ["node-b"]
        b.cancel()
    finally:
        for ch in e.channels:
            await ch.close(None)
        await e.running.stop(None)
    assert not [r for r in caplog.records if r.exc_info]


async def test_client_that_does_not_read_is_dropped(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    e = await _env(tmp, Limits(write_timeout=0.5, policy_grace=0.0))

    def big(version: str) -> tuple[str, Any]:  # under the client's 4 MiB message limit
        return version, any_pb2.Any(type_url=ADDRESS_TYPE, value=bytes(1024 * 1024))

    try:
        call = e.stream(e.ca.issue_node("node-a"))
        await call.write(req(ADDRESS_TYPE))
        await until(lambda: len(e.push.clients()) == 1)
        # Pushes the client never reads: once the HTTP/2 windows are full the server's
        # write blocks, and the stream is dropped after `write_timeout`.
        for i in range(64):
            e.build.resources[ADDRESS_TYPE]["w1"] = big(str(i))
            await e.rebuild()
            await asyncio.sleep(0.01)
            if not e.push.clients():
                break
        await until(lambda: e.push.clients() == [], within=10)
        assert "client read nothing for 0.5s" in caplog.text
        assert not [r for r in caplog.records if r.exc_info]
        call.cancel()
    finally:
        for ch in e.channels:
            await ch.close(None)
        await e.running.stop(None)
