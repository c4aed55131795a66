"""L4 policy enforced by the runtime over real netns: ALLOW by principal, DENY by port,
PeerAuthentication STRICT vs PERMISSIVE for plaintext peers (15006), and closing an open
connection when a policy update denies it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ketch.ztunnel.telemetry import ResponseFlags
from tests.integration.test_ztunnel_support import (
    Mesh,
    NodeProxy,
    connection_ends,
    echo_server,
    eventually,
    mesh,
    mesh_on_fabric,
    pod_socket_connect,
    refused,
    roundtrip,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mesh"]


def allow_from(principals: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-a", "namespace": "app"},
        "spec": {
            "selector": {"matchLabels": {"app": "b"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": principals}}]}],
        },
    }


def deny_port(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-port", "namespace": "app"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [str(port)]}}]}]},
    }


def peer_authn(mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "mtls", "namespace": "app"},
        "spec": {"mtls": {"mode": mode}},
    }


async def test_allow_admits_a_and_refuses_c(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    c = mesh.pod("node1", "c")
    b = mesh.pod("node2", "b")
    mesh.set_policies([allow_from(["cluster.local/ns/app/sa/a"])])
    await mesh.start()
    seen: list[str] = []
    srv = await echo_server(b.pod, 9100, seen)
    try:
        r, w = await pod_socket_connect(a.pod, (b.ip, 9100))
        assert await roundtrip(r, w, b"hello") == b"hello"
        w.close()
        assert await refused(c.pod, (b.ip, 9100))
    finally:
        srv.close()
    assert seen == [a.ip]  # the server never saw c
    n2 = mesh.proxies["node2"]
    from_c = {"reporter": "destination", "source_principal": "spiffe://cluster.local/ns/app/sa/c"}
    # as ztunnel: the denied attempt is opened, closed and failed with DENY
    assert n2.metric("istio_tcp_connections_opened_total", **from_c) == 1
    assert n2.metric("istio_tcp_connections_closed_total", response_flags="DENY", **from_c) == 1
    assert n2.metric("istio_tcp_connections_failed_total", response_flags="DENY", **from_c) == 1
    assert n2.metric("istio_tcp_connections_failed_total", response_flags="-") == 0
    # the source side saw the 401 as a failed upstream connection
    n1 = mesh.proxies["node1"]
    assert (
        n1.metric(
            "istio_tcp_connections_failed_total",
            reporter="source",
            source_workload="c",
            response_flags="CONNECT",
        )
        == 1
    )
    denied = [r for r in n2.access if r.src_workload == "c"]
    assert len(denied) == 1
    assert denied[0].response_flags is ResponseFlags.DENY
    assert "no ALLOW policy matched (applicable: app/allow-a)" in denied[0].error
    assert denied[0].dst_addr == f"{b.ip}:15008"
    assert denied[0].dst_hbone_addr == f"{b.ip}:9100"
    out = [r for r in n1.access if r.src_workload == "c"]
    assert "status 401" in out[0].error  # the HBONE answer names the reason


async def test_deny_on_port(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    mesh.set_policies([deny_port(9101)])
    await mesh.start()
    seen: list[str] = []
    s1 = await echo_server(b.pod, 9101, seen)
    s2 = await echo_server(b.pod, 9102, seen)
    try:
        assert await refused(a.pod, (b.ip, 9101))
        r, w = await pod_socket_connect(a.pod, (b.ip, 9102))
        assert await roundtrip(r, w, b"ok") == b"ok"
        w.close()
    finally:
        s1.close()
        s2.close()
    assert seen == [a.ip]
    # why: the DENY policy, named on the destination and as a 401 on the source
    (denied,) = [r for r in mesh.proxies["node2"].access if r.error]
    assert denied.response_flags is ResponseFlags.DENY
    assert "denied by DENY policy app/deny-port" in denied.error
    assert denied.dst_hbone_addr == f"{b.ip}:9101"
    (failed,) = [r for r in mesh.proxies["node1"].access if r.error]
    assert "status 401" in failed.error
    assert failed.response_flags is ResponseFlags.CONNECT


async def test_strict_refuses_plaintext_permissive_allows(mesh: Mesh) -> None:
    b = mesh.pod("node2", "b")
    d = mesh.pod("node1", "d", mesh=False)  # no rules, no proxy: plaintext, lands on 15006
    mesh.set_policies([peer_authn("STRICT")])
    await mesh.start()
    seen: list[str] = []
    srv = await echo_server(b.pod, 9103, seen)
    try:
        assert await refused(d.pod, (b.ip, 9103))
        assert seen == []
        mesh.set_policies([peer_authn("PERMISSIVE")])
        mesh.update()
        r, w = await pod_socket_connect(d.pod, (b.ip, 9103))
        assert await roundtrip(r, w, b"plain") == b"plain"
        w.close()
    finally:
        srv.close()
    assert seen == [d.ip]
    n2 = mesh.proxies["node2"]
    plain = {
        "reporter": "destination",
        "connection_security_policy": "unknown",
        "source_workload": "d",
        "source_principal": "unknown",
    }
    assert n2.metric("istio_tcp_connections_opened_total", **plain) == 2  # both attempts
    assert n2.metric("istio_tcp_connections_failed_total", response_flags="DENY", **plain) == 1
    # the first one was refused because of STRICT mTLS, and says so
    (denied,) = [r for r in n2.access if r.response_flags is ResponseFlags.DENY]
    assert "PeerAuthentication app/mtls requires mTLS (STRICT)" in denied.error
    assert denied.src_identity == ""  # plaintext: no identities logged


async def _policy_update_closes_open_connections(mesh: Mesh, port: int) -> NodeProxy:
    """An HBONE and a plaintext (15006) connection to b are open; a policy update that
    denies both closes both, and nothing stays tracked."""
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    d = mesh.pod("node1", "d", mesh=False)
    await mesh.start()
    srv = await echo_server(b.pod, port)
    n2 = mesh.proxies["node2"]
    try:
        r, w = await pod_socket_connect(a.pod, (b.ip, port))
        assert await roundtrip(r, w, b"before") == b"before"
        rp, wp = await pod_socket_connect(d.pod, (b.ip, port))  # plaintext via 15006
        assert await roundtrip(rp, wp, b"plain") == b"plain"
        assert len(n2.zt.connections()) == 2
        mesh.set_policies([allow_from(["cluster.local/ns/app/sa/someone-else"])])
        mesh.update()
        assert await connection_ends(r)
        assert await connection_ends(rp)
        w.close()
        wp.close()
        await eventually(lambda: n2.zt.connections() == [], 5)
        await asyncio.sleep(0.2)  # let late callbacks (connection_lost) run
    finally:
        srv.close()
    return n2


async def test_policy_update_closes_now_denied_connection(mesh: Mesh) -> None:
    n2 = await _policy_update_closes_open_connections(mesh, 9104)
    # both ended because of the policy update, and the access log says so
    await eventually(lambda: len([r for r in n2.access if r.error]) == 2, 5)
    assert [r.error for r in n2.access if r.error] == [
        "denied by the updated authorization policy"
    ] * 2


def test_denying_policy_closes_open_connections_cleanly_on_uvloop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same on uvloop (which `ketch ztunnel run` uses): closing connections a new policy
    denies logs no error or traceback (a transport already closed raises ValueError from its
    socket there) and goes on closing the others. Runs its own loop, hence no fixture."""
    import uvloop

    async def main() -> None:
        async with mesh_on_fabric() as m:
            caplog.set_level(logging.INFO)
            await _policy_update_closes_open_connections(m, 9105)

    uvloop.run(main())
    bad = [
        f"{rec.name}: {rec.getMessage()}"
        for rec in caplog.records
        if rec.levelno >= logging.ERROR or rec.exc_info
    ]
    assert bad == []
    closed = [rec for rec in caplog.records if "now denied by policy" in rec.getMessage()]
    assert len(closed) == 2
