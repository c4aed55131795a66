"""The control plane process with `xds` on, in-process: a node connects to ca.sock (certificates and xDS on one listener) with its
node certificate, a change applied to the SQLite store (by another connection, as the CLI
does) is pushed to it, and `ketch node revoke` (the token store) ends its stream."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from ketch.control import plane
from ketch.control.push import Resources
from ketch.identity.ca import CertificateAuthority
from ketch.store.base import Store
from ketch.store.sqlite import SqliteStore
from ketch.util.tasks import spawn
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

TD = "cluster.local"


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kplane-"))  # short: unix socket path limit
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


BUILTIN = {"default", "istio-system", "ketch-system"}  # the plane creates them at start


def namespaces_as_addresses(store: Store) -> Resources:
    """A stand-in translation: one Address resource per Namespace the user made."""
    out = {}
    for m in store.list("Namespace").items:
        name, version = m["metadata"]["name"], m["metadata"]["resourceVersion"]
        if name in BUILTIN:
            continue
        out[name] = (version, any_pb2.Any(type_url=ADDRESS_TYPE, value=name.encode()))
    return {ADDRESS_TYPE: out, AUTHORIZATION_TYPE: {}}


async def test_control_plane_serves_xds_pushes_store_changes_and_honours_revoke(
    tmp: Path,
) -> None:
    config = plane.ControlPlaneConfig(state_dir=tmp / "state", xds=True, xds_revalidate=0.1)
    stop = asyncio.Event()
    task = spawn(plane.run(config, stop, build=namespaces_as_addresses), "test-plane")
    try:
        async with asyncio.timeout(10):
            while not config.ca_socket.exists():  # noqa: ASYNC110 - another task's file
                await asyncio.sleep(0.02)
        ca = CertificateAuthority.create(TD, state_dir=config.ca_dir)  # the plane's root
        node = ca.issue_node("node-a")
        serial = x509.load_pem_x509_certificate(node.cert_pem).serial_number
        plane.token_store(config.state_dir).replace_certs("node-a", serial)  # as a join does

        channel = grpc.aio.secure_channel(
            f"unix:{config.ca_socket}",
            grpc.ssl_channel_credentials(ca.trust_bundle_pem, node.key_pem, node.chain_bytes),
            options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
        )
        call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=AUTHORIZATION_TYPE))
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE))
        first = [await asyncio.wait_for(call.read(), 5) for _ in range(2)]
        assert [r.type_url for r in first] == [AUTHORIZATION_TYPE, ADDRESS_TYPE]
        assert list(first[1].resources) == []

        writer = SqliteStore(config.store_file)
        try:
            writer.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
        finally:
            writer.close()
        pushed = await asyncio.wait_for(call.read(), 10)
        assert pushed.type_url == ADDRESS_TYPE
        assert [r.name for r in pushed.resources] == ["shop"]

        assert plane.token_store(config.state_dir).revoke("node-a")
        code = await asyncio.wait_for(call.code(), 10)
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in await call.details()
        await channel.close(None)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert not config.ca_socket.exists()


async def test_bearer_xds_token_over_the_server_auth_listener(tmp: Path) -> None:
    """A node proxy without a node certificate (a stock ztunnel) sends `authorization:
    Bearer <xDS token>` over server-authenticated TLS (join.sock here, --join-listen over
    TCP): a valid token is served as its node; no token, a bad one, a bootstrap token, an
    expired or a revoked one are UNAUTHENTICATED and never served; revoking the node ends
    the open token stream."""
    config = plane.ControlPlaneConfig(state_dir=tmp / "state", xds=True, xds_revalidate=0.1)
    config.state_dir.mkdir(parents=True)
    writer = SqliteStore(config.store_file)
    try:
        writer.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}])
    finally:
        writer.close()
    stop = asyncio.Event()
    task = spawn(plane.run(config, stop, build=namespaces_as_addresses), "test-plane")
    channels: list[grpc.aio.Channel] = []
    try:
        async with asyncio.timeout(10):
            while not config.join_socket.exists():  # noqa: ASYNC110 - another task's file
                await asyncio.sleep(0.02)
        tokens = plane.token_store(config.state_dir)
        good = tokens.create_xds_token("node-x")
        other = tokens.create_xds_token("node-y")
        bootstrap = tokens.create("node-x")
        bundle = config.trust_bundle_file.read_bytes()

        def open_stream(token: str | None) -> Any:
            channel = grpc.aio.secure_channel(
                f"unix:{config.join_socket}",
                grpc.ssl_channel_credentials(bundle),  # server-auth TLS: no client certificate
                options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
            )
            channels.append(channel)
            metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            return stub.DeltaAggregatedResources(metadata=metadata)

        async def refused(token: str | None) -> str:
            # refused before any request is read (a write may race the abort: not sent)
            call = open_stream(token)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), 10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            return info.value.details() or ""

        assert "no node certificate and no 'authorization: Bearer" in await refused(None)
        assert "not a Ketch xDS token" in await refused("garbage")
        assert "unknown or revoked" in await refused("ketch-xds-" + "A" * 43)
        assert "a bootstrap token only joins a node" in await refused(bootstrap)
        tokens.redeem(bootstrap, "node-x")  # ... and was not used up by being tried

        call = open_stream(good)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=AUTHORIZATION_TYPE))
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE))
        first = [await asyncio.wait_for(call.read(), 10) for _ in range(2)]
        assert [r.type_url for r in first] == [AUTHORIZATION_TYPE, ADDRESS_TYPE]
        assert [r.name for r in first[1].resources] == ["ns"]
        still = open_stream(other)  # another node's token: unaffected by node-x's revoke
        await still.write(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE))
        await asyncio.wait_for(still.read(), 10)

        # served with the token's node identity (what proxy-status and node list show)
        syncz = await _syncz(config)
        auth = {c.node.metadata["KETCH_NODE"]: c.node.metadata["KETCH_AUTH"] for c in syncz}
        assert auth == {"node-x": "token", "node-y": "token"}

        assert tokens.revoke("node-x")
        assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.UNAUTHENTICATED
        assert "xDS token of node-x was revoked" in await call.details()
        assert "unknown or revoked" in await refused(good)
        assert not still.done()
        still.cancel()
    finally:
        for channel in channels:
            await channel.close(None)
        stop.set()
        await asyncio.wait_for(task, 10)


async def _syncz(config: plane.ControlPlaneConfig) -> list[Any]:
    from ketch.cli.proxy_status import fetch_syncz, load_credentials

    return await fetch_syncz(f"unix:{config.ca_socket}", load_credentials(config.state_dir))


def test_xds_tokens_expire() -> None:
    from datetime import timedelta

    from ketch.identity.errors import TokenError
    from ketch.identity.tokens import TokenStore, token_id

    now = [1000.0]
    tokens = TokenStore(clock=lambda: now[0])
    token = tokens.create_xds_token("node-x", timedelta(seconds=60))
    assert tokens.xds_token_node(token) == "node-x"
    assert tokens.xds_token_node(token) == "node-x"  # reusable
    assert tokens.xds_token_is_current(token_id(token))
    now[0] += 61
    assert not tokens.xds_token_is_current(token_id(token))
    with pytest.raises(TokenError, match=r"unknown or revoked|expired"):
        tokens.xds_token_node(token)
