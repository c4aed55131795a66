"""The node proxy runtime over real network namespaces: curl through the mesh, the wire
carries only TLS on 15008, metrics on both sides, services, server-first protocols,
half-close and many concurrent connections."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from ipaddress import ip_address

import pytest

from ketch.mesh import GatewayAddress
from ketch.ztunnel.telemetry import ResponseFlags
from tests.integration.test_ztunnel_support import (
    TD,
    Mesh,
    digest,
    echo_server,
    eventually,
    mesh,
    pod_server,
    pod_socket_connect,
    refused,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mesh"]  # the fixture, re-exported for pytest

OPENED = "istio_tcp_connections_opened_total"
CLOSED = "istio_tcp_connections_closed_total"


async def test_curl_same_node_and_across_nodes(mesh: Mesh) -> None:
    mesh.pod("node1", "a")
    mesh.pod("node1", "c")
    mesh.pod("node2", "b")
    await mesh.start()
    await mesh.http_server("b", 8080, b"hello from b\n")
    await mesh.http_server("c", 8080, b"hello from c\n")

    for target, body in (("b", "hello from b\n"), ("c", "hello from c\n")):
        ip = mesh.pods[target].ip
        r = await mesh.run("a", ["curl", "-sS", "--max-time", "10", f"http://{ip}:8080/"])
        assert r.returncode == 0, r.stderr
        assert r.stdout == body

    n1, n2 = mesh.proxies["node1"], mesh.proxies["node2"]
    src = f"spiffe://{TD}/ns/app/sa/a"
    assert (
        n1.metric(
            OPENED,
            reporter="source",
            source_principal=src,
            destination_principal=f"spiffe://{TD}/ns/app/sa/b",
        )
        == 1
    )
    assert (
        n2.metric(
            OPENED,
            reporter="destination",
            source_principal=src,
            destination_principal=f"spiffe://{TD}/ns/app/sa/b",
            connection_security_policy="mutual_tls",
        )
        == 1
    )
    # same-node: node1 reports both sides
    assert (
        n1.metric(
            OPENED,
            reporter="destination",
            source_principal=src,
            destination_principal=f"spiffe://{TD}/ns/app/sa/c",
        )
        == 1
    )
    await eventually(lambda: n2.metric(CLOSED, reporter="destination") >= 1, 5)
    assert n2.metric("istio_tcp_received_bytes_total", reporter="destination") > 0
    assert n2.metric("istio_tcp_sent_bytes_total", reporter="destination") >= len("hello from b\n")
    assert any(r.dst_workload == "b" and r.bytes_recv > 0 for r in n1.access)
    dump = json.loads(json.dumps(n1.zt.config_dump()))
    assert {p["name"] for p in dump["pods"]} == {"a", "c"}
    assert all(p["state"] == "ready" for p in dump["pods"])
    assert {c["identity"] for c in dump["certificates"]} >= {src}
    assert len(dump["workloads"]) == 3


async def test_half_close_and_server_first(mesh: Mesh) -> None:
    mesh.pod("node1", "a")
    mesh.pod("node2", "b")
    await mesh.start()
    b = mesh.pods["b"]
    payload = os.urandom(300_000)

    async def echo_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"BANNER\n")  # server speaks first
        await w.drain()
        data = await r.read()  # until the client half-closes
        w.write(digest(data).encode() + b"\n" + data)
        await w.drain()
        w.close()

    srv = await pod_server(b.pod, 9000, echo_after_eof)
    try:
        r, w = await pod_socket_connect(mesh.pods["a"].pod, (b.ip, 9000))
        assert await asyncio.wait_for(r.readline(), 10) == b"BANNER\n"
        w.write(payload)
        await w.drain()
        w.write_eof()
        line = await asyncio.wait_for(r.readline(), 10)
        assert line.decode().strip() == digest(payload)
        back = await asyncio.wait_for(r.read(), 10)
        assert back == payload
        w.close()
    finally:
        srv.close()


async def test_app_sees_client_source_ip(mesh: Mesh) -> None:
    mesh.pod("node1", "a")
    mesh.pod("node2", "b")
    await mesh.start()
    b = mesh.pods["b"]

    async def tell_peer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(str(w.get_extra_info("peername")[0]).encode() + b"\n")
        await w.drain()
        w.close()

    srv = await pod_server(b.pod, 9001, tell_peer)
    try:
        r, w = await pod_socket_connect(mesh.pods["a"].pod, (b.ip, 9001))
        seen = (await asyncio.wait_for(r.readline(), 10)).decode().strip()
        w.close()
    finally:
        srv.close()
    # inbound spoofs the client's address (IP_TRANSPARENT + the table-100 rules)
    assert seen == mesh.pods["a"].ip


async def test_service_vip_reaches_target_port(mesh: Mesh) -> None:
    mesh.pod("node1", "a")
    mesh.pod("node2", "b", services={"app/web.app.svc.cluster.local": {80: 8080}})
    mesh.service("web", "10.96.0.10", 80, 8080)
    await mesh.start()
    await mesh.http_server("b", 8080, b"via vip\n")
    r = await mesh.run("a", ["curl", "-sS", "--max-time", "10", "http://10.96.0.10:80/"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "via vip\n"
    n1 = mesh.proxies["node1"]
    assert n1.metric(OPENED, reporter="source", destination_service_name="web") == 1
    # a port the service does not have is a routing refusal: reset, logged, no metric
    r = await mesh.run("a", ["curl", "-sS", "--max-time", "5", "http://10.96.0.10:81/"])
    assert r.returncode != 0
    (rec,) = [x for x in n1.access if x.error]
    assert "refused (503): service app/web.app.svc.cluster.local (10.96.0.10) has no port 81" in (
        rec.error
    )
    assert n1.metric(OPENED, reporter="source") == 1
    assert n1.metric("istio_tcp_connections_failed_total") == 0


async def test_thousand_concurrent_connections(mesh: Mesh) -> None:
    mesh.pod("node1", "a")
    mesh.pod("node2", "b")
    await mesh.start(spoof_source=os.environ.get("KZ_SPOOF", "1") == "1")
    b = mesh.pods["b"]

    async def hash_back(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()
        w.write(digest(data).encode())
        await w.drain()
        w.close()

    srv = await pod_server(b.pod, 9002, hash_back)
    n = 1000

    async def one(i: int) -> bool:
        payload = os.urandom(2048 + i)
        r, w = await pod_socket_connect(mesh.pods["a"].pod, (b.ip, 9002), within=30)
        w.write(payload)
        await w.drain()
        w.write_eof()
        got = await r.read()
        w.close()
        return got.decode() == digest(payload)

    try:
        async with asyncio.timeout(60):
            results = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        srv.close()
    assert sum(results) == n
    n1 = mesh.proxies["node1"]
    await eventually(lambda: n1.metric(CLOSED, reporter="source") >= n, 10)
    assert n1.metric(OPENED, reporter="source") == n


async def test_byte_counters_of_open_connections_are_flushed(mesh: Mesh) -> None:
    """Long-lived connections show their bytes before they close (HBONE on both reporters,
    and plain passthrough to a pod outside the mesh), and closing adds only the rest."""
    mesh.pod("node1", "a")
    mesh.pod("node2", "b")
    mesh.pod("node2", "plain", mesh=False)
    await mesh.start(metrics_flush_interval=0.05)
    servers = [await echo_server(mesh.pods[n].pod, 7000) for n in ("b", "plain")]
    n1, n2 = mesh.proxies["node1"], mesh.proxies["node2"]
    received = "istio_tcp_received_bytes_total"
    sent = "istio_tcp_sent_bytes_total"
    try:
        payload = os.urandom(300_000)
        for target, policy in (("b", "mutual_tls"), ("plain", "unknown")):
            r, w = await pod_socket_connect(mesh.pods["a"].pod, (mesh.pods[target].ip, 7000))
            w.write(payload)
            await w.drain()
            async with asyncio.timeout(10):
                assert await r.readexactly(len(payload)) == payload
            labels = {"reporter": "source", "connection_security_policy": policy}
            await eventually(lambda lb=labels: n1.metric(received, **lb) >= len(payload))
            await eventually(lambda lb=labels: n1.metric(sent, **lb) >= len(payload))
            assert n1.metric(CLOSED, **labels) == 0  # still open
            if target == "b":
                dest = {"reporter": "destination", "connection_security_policy": "mutual_tls"}
                await eventually(lambda d=dest: n2.metric(received, **d) >= len(payload))
            w.close()
            await eventually(lambda lb=labels: n1.metric(CLOSED, **lb) == 1)
            # the final accounting adds only what was not flushed yet: exact totals
            assert n1.metric(received, **labels) == len(payload)
            assert n1.metric(sent, **labels) == len(payload)
    finally:
        for s in servers:
            s.close()


async def test_server_identity_mismatch_fails_with_tls_failure(mesh: Mesh) -> None:
    """node1 believes b runs as service account `other`; b's proxy presents `b`: the
    connection fails, and the source proxy says why (the SAN check) and counts a
    TLS_FAILURE; b's app never sees it."""
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    await mesh.start()
    seen: list[str] = []
    srv = await echo_server(b.pod, 9400, seen)
    n1 = mesh.proxies["node1"]
    b.workload = dataclasses.replace(b.workload, service_account="other")
    n1.zt.update_state(mesh.state())  # only node1 has the wrong idea
    try:
        assert await refused(a.pod, (b.ip, 9400))
    finally:
        srv.close()
    assert seen == []
    (rec,) = [r for r in n1.access if r.error]
    assert "identity mismatch" in rec.error
    assert f"spiffe://{TD}/ns/app/sa/other" in rec.error
    assert rec.response_flags is ResponseFlags.TLS_FAILURE
    labels = {"reporter": "source", "response_flags": "TLS_FAILURE"}
    assert n1.metric("istio_tcp_connections_failed_total", **labels) == 1
    assert n1.metric(CLOSED, **labels) == 1
    assert n1.metric(OPENED, reporter="source", source_workload="a") == 1


async def test_through_a_waypoint_the_destination_is_the_waypoint(mesh: Mesh) -> None:
    """As ztunnel: the source proxy labels a connection through a waypoint with the
    waypoint as destination workload/principal, logs the waypoint as `dst.addr` and the
    original target as `dst.hbone_addr`. (Our `wp` pod is a plain mesh pod, so its proxy
    answers 400 to an authority that is not its own: the attempt fails with CONNECT.)"""
    a = mesh.pod("node1", "a")
    wp = mesh.pod("node2", "wp")
    b = mesh.pod("node2", "b")
    b.workload = dataclasses.replace(b.workload, waypoint=GatewayAddress(ip_address(wp.ip)))
    await mesh.start()
    assert await refused(a.pod, (b.ip, 9500))
    n1 = mesh.proxies["node1"]
    (rec,) = [r for r in n1.access if r.error]
    assert rec.dst_addr == f"{wp.ip}:15008"
    assert rec.dst_hbone_addr == f"{b.ip}:9500"
    assert rec.dst_workload == "wp"
    assert "status 400" in rec.error
    labels = {
        "reporter": "source",
        "destination_workload": "wp",
        "destination_principal": f"spiffe://{TD}/ns/app/sa/wp",
    }
    assert n1.metric(OPENED, **labels) == 1
    assert n1.metric("istio_tcp_connections_failed_total", response_flags="CONNECT", **labels) == 1


async def test_passthrough_is_plaintext_without_source_principal(mesh: Mesh) -> None:
    """Outbound to a workload outside the mesh goes out as plain TCP: as in ztunnel the
    metrics carry no source principal and the access log no identities."""
    a = mesh.pod("node1", "a")
    d = mesh.pod("node2", "d", mesh=False)
    await mesh.start()
    srv = await echo_server(d.pod, 9600)
    try:
        r, w = await pod_socket_connect(a.pod, (d.ip, 9600))
        w.write(b"plain")
        await w.drain()
        assert await r.readexactly(5) == b"plain"
        w.close()
    finally:
        srv.close()
    n1 = mesh.proxies["node1"]
    await eventually(lambda: n1.metric(CLOSED, reporter="source") == 1, 5)
    plain = {
        "reporter": "source",
        "source_workload": "a",
        "source_principal": "unknown",
        "destination_workload": "d",
        "connection_security_policy": "unknown",
    }
    assert n1.metric(OPENED, **plain) == 1
    (rec,) = n1.access
    assert (rec.src_identity, rec.dst_identity) == ("", "")
    assert rec.dst_addr == f"{d.ip}:9600"
    assert rec.dst_hbone_addr == ""
