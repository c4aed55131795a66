"""HTTP/2-level attacks on a pod's 15008 through the real node proxy (netns fabric).

A non-mesh pod holding a valid mesh certificate speaks raw HTTP/2 to pod b's HBONE port:
- rapid reset (CVE-2023-44487): CONNECTs to b's app, each reset at once;
- a PING flood from a client that never reads the ACKs.
The proxy must answer with GOAWAY(ENHANCE_YOUR_CALM) / drop the connection, the app must
not get a connection per reset stream, and mesh traffic from pod a must keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import hpack
import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.netns import run_in_netns
from ketch.ztunnel.hbone import ErrorCode, proto, tls
from tests.integration.test_ztunnel_support import (
    TD,
    Mesh,
    echo_server,
    mesh,
    pod_socket_connect,
    roundtrip,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
__all__ = ["mesh"]

_RST = struct.Struct(">L")


async def _raw_h2(
    mesh: Mesh, netns: str, addr: tuple[str, int], rcvbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    def mk() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        return s

    sock = await run_in_netns(netns, mk)
    await asyncio.get_running_loop().sock_connect(sock, addr)
    me = SpiffeId(TD, "app", "attacker")
    cert = tls.WorkloadCert.of(mesh.ca.issue_workload(me))
    ctx = tls.client_context(cert, mesh.ca.trust_bundle)
    r, w = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="")
    w.write(proto.PREFACE + proto.frame(proto.SETTINGS, 0, 0))
    return r, w


async def _goaway_code(r: asyncio.StreamReader) -> int | None:
    """Read frames until the server closes; the last GOAWAY's error code."""
    code = None
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        async with asyncio.timeout(20):
            while True:
                hdr = await r.readexactly(9)
                payload = await r.readexactly(int.from_bytes(hdr[:3], "big"))
                if hdr[3] == proto.GOAWAY:
                    code = int.from_bytes(payload[4:8], "big")
    return code


async def test_rapid_reset_and_ping_flood_through_the_node_proxy(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    d = mesh.pod("node1", "d", mesh=False)
    await mesh.start()
    seen: list[str] = []
    srv = await echo_server(b.pod, 9300, seen)
    hb = (b.ip, 15008)

    async def healthy() -> None:
        r, w = await pod_socket_connect(a.pod, (b.ip, 9300))
        assert await roundtrip(r, w, b"still fine") == b"still fine"
        w.close()

    try:
        await healthy()
        baseline = len(seen)

        # 1. rapid reset: up to 4000 CONNECTs to b's app, each reset at once.
        r, w = await _raw_h2(mesh, d.pod.netns, hb)
        enc = hpack.Encoder()
        sid = 1
        with contextlib.suppress(ConnectionError, TimeoutError):
            for _ in range(40):
                batch = bytearray()
                for _ in range(100):
                    block = enc.encode([(":method", "CONNECT"), (":authority", f"{b.ip}:9300")])
                    batch += proto.frame(proto.HEADERS, proto.FLAG_END_HEADERS, sid, block)
                    batch += proto.frame(proto.RST_STREAM, 0, sid, _RST.pack(ErrorCode.CANCEL))
                    sid += 2
                if w.is_closing():
                    break
                w.write(bytes(batch))
                await asyncio.wait_for(w.drain(), 10)
        assert await _goaway_code(r) == ErrorCode.ENHANCE_YOUR_CALM
        w.close()
        await healthy()
        assert len(seen) - baseline <= 1 + 5, len(seen) - baseline  # healthy() + stragglers

        # 2. PING flood from a client that never reads.
        r, w = await _raw_h2(mesh, d.pod.netns, hb, rcvbuf=4096)
        pings = b"".join(proto.frame(proto.PING, 0, 0, i.to_bytes(8, "big")) for i in range(2000))
        closed = False
        try:
            for _ in range(3000):
                w.write(pings)
                await asyncio.wait_for(w.drain(), 10)
        except (ConnectionError, TimeoutError):
            closed = True
        assert closed, "the proxy kept taking PINGs from a peer that never reads"
        w.close()
        await healthy()
    finally:
        srv.close()
    assert mesh.proxies["node2"].zt.ready
