"""An in-process control plane with `--xds` and a node proxy's xDS side over a real gRPC
channel (`ketch.xds.session.ClientStream`), shared by the plane and CLI tests."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from envoy.service.discovery.v3 import ads_pb2_grpc

from ketch.control import plane
from ketch.identity.ca import CertificateAuthority
from ketch.store.sqlite import SqliteStore
from ketch.util.tasks import spawn
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, decode_all, ztunnel_node
from ketch.xds.session import ClientStream


@asynccontextmanager
async def running_plane(state_dir: Path | None = None) -> AsyncIterator[plane.ControlPlaneConfig]:
    """A running plane with `--xds` and the default (real) build, in `state_dir` (kept) or
    a fresh one (removed afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="kplane-"))  # short: unix socket path limit
    cfg = plane.ControlPlaneConfig(state_dir=state_dir or tmp / "state", xds=True)
    stop = asyncio.Event()
    task = spawn(plane.run(cfg, stop), "test-plane")
    try:
        async with asyncio.timeout(10):
            while not cfg.ca_socket.exists():  # noqa: ASYNC110 - another task's file
                await asyncio.sleep(0.02)
        yield cfg
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        shutil.rmtree(tmp, ignore_errors=True)


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
        self.credentials = (cert.key_pem, cert.chain_bytes)
        serial = x509.load_pem_x509_certificate(cert.cert_pem).serial_number
        plane.token_store(config.state_dir).replace_certs(node, serial)  # as a join does
        self.channel = grpc.aio.secure_channel(
            f"unix:{config.ca_socket}",
            grpc.ssl_channel_credentials(ca.trust_bundle_pem, cert.key_pem, cert.chain_bytes),
            options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
        )
        self.call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
            self.channel
        ).DeltaAggregatedResources()
        self.client = ClientStream()
        self.node = ztunnel_node(
            instance_ip="10.0.0.1", pod_name="ztunnel-x", pod_namespace="istio-system",
            node_name=node, meta={"CLUSTER_ID": "Kubernetes"},
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
