"""Fixtures: a real PKI, a real HBONE server on a loopback socket, and a client pool."""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from ketch.identity.ca import CertificateAuthority
from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import tls
from ketch.ztunnel.hbone.pool import HboneClientPool, PoolKey
from ketch.ztunnel.hbone.server import HboneServer, IncomingConnect

TD = "cluster.local"


@dataclass
class Mesh:
    ca: CertificateAuthority
    client_id: SpiffeId
    client_cert: tls.WorkloadCert
    server_id: SpiffeId
    server_cert: tls.WorkloadCert

    def client_ctx(self, _ident: SpiffeId) -> ssl.SSLContext:
        return tls.client_context(self.client_cert, self.ca.trust_bundle)

    def server_ctx(self) -> ssl.SSLContext:
        return tls.server_context(self.server_cert, self.ca.trust_bundle)


@pytest.fixture(scope="session")
def mesh() -> Mesh:
    ca = CertificateAuthority.create(TD)
    cid, sid = SpiffeId(TD, "client-ns", "client-sa"), SpiffeId(TD, "server-ns", "server-sa")
    return Mesh(ca, cid, workload(ca, cid), sid, workload(ca, sid))


def workload(ca: CertificateAuthority, ident: SpiffeId) -> tls.WorkloadCert:
    return tls.WorkloadCert.of(ca.issue_workload(ident))


def listening_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    return s


Handler = Callable[[IncomingConnect], Awaitable[None]]
ServerFactory = Callable[..., Awaitable[HboneServer]]


@pytest.fixture
async def make_server(mesh: Mesh) -> AsyncIterator[ServerFactory]:
    servers: list[HboneServer] = []

    async def make(handler: Handler, **kw: object) -> HboneServer:
        srv = HboneServer(listening_socket(), mesh.server_ctx(), TD, handler, **kw)  # type: ignore[arg-type]
        await srv.start()
        servers.append(srv)
        return srv

    try:
        yield make
    finally:
        for s in servers:
            await s.close(drain_timeout=0.5)


@pytest.fixture
async def pool(mesh: Mesh) -> AsyncIterator[HboneClientPool]:
    p = HboneClientPool(mesh.client_ctx, connect_timeout=5.0)
    try:
        yield p
    finally:
        await p.close()


def key_for(mesh: Mesh, srv: HboneServer, expected: SpiffeId | None = None) -> PoolKey:
    return PoolKey(mesh.client_id, (expected or mesh.server_id,), srv.address)


async def eventually(cond: Callable[[], object], within: float = 5.0) -> None:
    """Poll `cond` until true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in itertools.count():
        if cond():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)
