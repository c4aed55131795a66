"""Self-calls into the node proxy's own ports are refused at once, never looped.

Before the fix, a pod dialling 127.0.0.1:15001 reached the outbound listener directly (nat
skips loopback), `original_dst` returned 127.0.0.1:15001, routing chose passthrough and the
proxy dialled 127.0.0.1:15001 again from the pod: one connection became thousands of hops
until file descriptors ran out. An HBONE CONNECT to a proxy port answers 503 (ztunnel's
SelfCall), not 400.
"""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.netns import pod_connect
from ketch.ztunnel.hbone import ConnectRefused, HboneClientPool, PoolKey, tls
from tests.integration.test_ztunnel_support import (
    TD,
    Mesh,
    connection_ends,
    echo_server,
    mesh,
    pod_socket_connect,
    roundtrip,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mesh"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_pod_dialling_its_own_proxy_ports_is_refused_not_looped(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    await mesh.start()
    srv = await echo_server(b.pod, 9200)
    node1 = mesh.proxies["node1"]
    try:
        r, w = await pod_socket_connect(a.pod, (b.ip, 9200))  # warm: pools, certificates
        assert await roundtrip(r, w, b"warm") == b"warm"
        w.close()
        fds = _open_fds()
        caplog.set_level(logging.INFO, logger="ketch.ztunnel")
        targets = [("127.0.0.1", p) for p in (15001, 15006, 15008)]
        targets += [(a.ip, 15001), (a.ip, 15006)]
        for addr in targets:
            try:
                r, w = await pod_socket_connect(a.pod, addr, within=5)
            except (ConnectionError, OSError):
                continue  # refused outright is fine too
            w.write(b"hello")
            # the proxy resets it at once: no hop, no waiting for a peer
            assert await connection_ends(r, within=5), addr
            w.close()
        await asyncio.sleep(0.5)  # a loop, if any, would be growing now
        assert _open_fds() <= fds + 5, "file descriptors grew: the connection looped"
        # dst.addr is the L4 hop (a peer's :15008 for HBONE): look at where each went
        self_ports = (":15001", ":15006", ":15008")
        forwarded = [
            r for r in node1.access if (r.dst_hbone_addr or r.dst_addr).endswith(self_ports)
        ]
        assert forwarded == [], "a self-call must not be forwarded anywhere"
        # early denies record no metric: only the warm-up connection was opened
        assert node1.metric("istio_tcp_connections_opened_total") == 1
        assert node1.metric("istio_tcp_connections_failed_total") == 0
        hops = [m for m in caplog.messages if "self-call" in m or "(loop)" in m]
        assert 1 <= len(hops) <= len(targets), hops
        # and the pod still works
        r, w = await pod_socket_connect(a.pod, (b.ip, 9200))
        assert await roundtrip(r, w, b"after") == b"after"
        w.close()
    finally:
        srv.close()


async def test_hbone_connect_to_a_proxy_port_answers_503(mesh: Mesh) -> None:
    mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    d = mesh.pod("node1", "d", mesh=False)
    await mesh.start()
    hb = (b.ip, 15008)
    me = SpiffeId(TD, "app", "tester")
    good = tls.WorkloadCert.of(mesh.ca.issue_workload(me))
    pool = HboneClientPool(lambda _i: tls.client_context(good, mesh.ca.trust_bundle))
    key = PoolKey(me, (SpiffeId(TD, "app", "b"),), hb)
    try:
        for port in (15001, 15006, 15008):
            with pytest.raises(ConnectRefused) as ei:
                await pool.open(key, f"{b.ip}:{port}", connect=lambda: pod_connect(d.pod.netns, hb))
            assert "503" in str(ei.value), (port, str(ei.value))
    finally:
        await pool.close()
