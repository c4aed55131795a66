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


def namespaces_as_addresses(store: Store) -> Resources:
    """A stand-in translation: one Address resource per Namespace."""
    out = {}
    for m in store.list("Namespace").items:
        name, version = m["metadata"]["name"], m["metadata"]["resourceVersion"]
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
