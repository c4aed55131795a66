"""Hostile peers against a pod's 15008 (from a non-mesh pod's netns): each is refused
cleanly and the proxy keeps serving normal mesh traffic afterwards."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import h2.config
import h2.connection
import h2.events
import pytest

from ketch.identity.ca import CertificateAuthority
from ketch.identity.spiffe import SpiffeId
from ketch.netns import pod_connect
from ketch.ztunnel.hbone import ConnectRefused, HboneClientPool, PoolKey, tls
from tests.integration.test_ztunnel_support import (
    TD,
    Mesh,
    echo_server,
    mesh,
    pod_socket_connect,
    roundtrip,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mesh"]


async def _open(pod_netns: str, addr: tuple[str, int]) -> socket.socket:
    from ketch.netns import run_in_netns

    def mk() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        return s

    sock = await run_in_netns(pod_netns, mk)
    await asyncio.get_running_loop().sock_connect(sock, addr)
    return sock


async def _tls_attempt(netns: str, addr: tuple[str, int], ctx: ssl.SSLContext) -> bytes | None:
    """TLS + an h2 preface; returns what the server sent after the handshake, or None if
    the connection failed (handshake error, reset, close)."""
    sock = await _open(netns, addr)
    try:
        async with asyncio.timeout(10):
            r, w = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="")
            w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
            await w.drain()
            data = await r.read(65536)
            w.close()
            return data or None
    except (ssl.SSLError, ConnectionError, OSError):
        return None


async def test_hostile_peers_are_refused_and_service_continues(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    d = mesh.pod("node1", "d", mesh=False)
    other_td = CertificateAuthority.create("evil.local")  # trusted root, wrong trust domain
    await mesh.start(trust_bundle_extra=other_td.trust_bundle)
    stranger = CertificateAuthority.create(TD)  # same trust domain, untrusted root
    srv = await echo_server(b.pod, 9200)
    hb = (b.ip, 15008)

    async def healthy() -> None:
        r, w = await pod_socket_connect(a.pod, (b.ip, 9200))
        assert await roundtrip(r, w, b"still fine") == b"still fine"
        w.close()

    try:
        await healthy()
        # 1. garbage bytes instead of a TLS ClientHello
        sock = await _open(d.pod.netns, hb)
        r, w = await asyncio.open_connection(sock=sock)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(512))
        await w.drain()
        try:
            async with asyncio.timeout(10):
                assert await r.read() == b""
        except ConnectionError:
            pass
        w.close()
        await healthy()

        # 2. a TLS client without a certificate
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_alpn_protocols(["h2"])
        assert await _tls_attempt(d.pod.netns, hb, ctx) is None
        await healthy()

        # 3. a certificate from another CA; 4. a trusted root but the wrong trust domain
        for ca, ident in (
            (stranger, SpiffeId(TD, "app", "a")),
            (other_td, SpiffeId("evil.local", "app", "a")),
        ):
            cert = tls.WorkloadCert.of(ca.issue_workload(ident))
            cctx = tls.client_context(cert, mesh.ca.trust_bundle)
            assert await _tls_attempt(d.pod.netns, hb, cctx) is None, ident
            await healthy()

        # 5. a valid client CONNECTing to an address b's proxy does not serve -> 400;
        # 6. a non-CONNECT method -> 400 (or reset)
        me = SpiffeId(TD, "app", "tester")
        good = tls.WorkloadCert.of(mesh.ca.issue_workload(me))
        pool = HboneClientPool(lambda _i: tls.client_context(good, mesh.ca.trust_bundle))
        key = PoolKey(me, (SpiffeId(TD, "app", "b"),), hb)
        try:
            with pytest.raises(ConnectRefused) as ei:
                await pool.open(
                    key, "10.244.9.9:9200", connect=lambda: pod_connect(d.pod.netns, hb)
                )
            assert "400" in str(ei.value)
        finally:
            await pool.close()
        await healthy()

        status = await _h2_get(d.pod.netns, hb, tls.client_context(good, mesh.ca.trust_bundle))
        assert status in ("400", "reset")
        await healthy()
    finally:
        srv.close()
    assert mesh.proxies["node2"].zt.ready


async def _h2_get(netns: str, addr: tuple[str, int], ctx: ssl.SSLContext) -> str:
    sock = await _open(netns, addr)
    r, w = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", f"{addr[0]}:80")],
        end_stream=True,
    )
    w.write(conn.data_to_send())
    await w.drain()
    try:
        async with asyncio.timeout(10):
            while True:
                data = await r.read(65536)
                if not data:
                    return "closed"
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                        return dict(ev.headers)[b":status"].decode()
                    if isinstance(ev, h2.events.StreamReset | h2.events.ConnectionTerminated):
                        return "reset"
                w.write(conn.data_to_send())
                await w.drain()
    finally:
        w.close()
