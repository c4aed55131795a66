"""IPv6 through the node proxy, end to end: two dual-stack pods on two nodes, an IPv6 TCP
connection from an app in pod a to an app in pod b.

The in-pod ip6tables rules redirect the connection to the proxy's 15001 in a and, on the
far side, HBONE arrives on b's 15008 at b's IPv6 address. That only works when the pod
listeners are dual-stack (`::`, IPV6_V6ONLY=0), `original_dst` reads IP6T_SO_ORIGINAL_DST
and the proxy dials v6 from inside the pod. The same listeners still carry IPv4, whose
addresses must come out as plain IPv4 (not ::ffff:a.b.c.d) for routing, the HBONE
authority check and policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from ipaddress import ip_address

import pytest

from ketch.ztunnel.telemetry import AccessLogRecord
from tests.integration.test_ztunnel_support import (
    Mesh,
    MeshPod,
    echo_server,
    eventually,
    mesh_on_fabric,
    pod_socket_connect,
    refused,
    roundtrip,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
async def mesh6() -> AsyncIterator[Mesh]:
    """The `mesh` harness of test_ztunnel_support on a dual-stack fabric."""
    async with mesh_on_fabric(ipv6=True) as m:
        yield m


def dual_stack_pod(mesh: Mesh, node: str, name: str) -> MeshPod:
    """A mesh pod whose workload lists both of its addresses, as Kubernetes' podIPs do."""
    mp = mesh.pod(node, name)
    assert mp.pod.ip6 is not None
    mp.workload = dataclasses.replace(
        mp.workload, addresses=tuple(ip_address(ip) for ip in mp.pod.ips)
    )
    return mp


def deny_port(port: int) -> dict[str, object]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-port", "namespace": "app"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [str(port)]}}]}]},
    }


async def test_ipv6_connection_goes_through_hbone_and_policy_applies(mesh6: Mesh) -> None:
    a = dual_stack_pod(mesh6, "node1", "a")
    b = dual_stack_pod(mesh6, "node2", "b")
    assert a.pod.ip6 is not None
    assert b.pod.ip6 is not None
    mesh6.set_policies([deny_port(9201)])
    await mesh6.start()
    seen: list[str] = []
    srv = await echo_server(b.pod, 9200, seen, dual_stack=True)
    denied_srv = await echo_server(b.pod, 9201, seen, dual_stack=True)
    try:
        r, w = await pod_socket_connect(a.pod, (b.pod.ip6, 9200))
        assert await roundtrip(r, w, b"hello over v6") == b"hello over v6"
        w.close()
        # the L4 DENY on the destination port applies to IPv6 as to IPv4
        assert await refused(a.pod, (b.pod.ip6, 9201))
        # IPv4 still works through the same (dual-stack) listeners
        r4, w4 = await pod_socket_connect(a.pod, (b.ip, 9200))
        assert await roundtrip(r4, w4, b"hello over v4") == b"hello over v4"
        w4.close()
    finally:
        srv.close()
        denied_srv.close()
    # The app in b saw a's own addresses (the proxy delivers with a's source), never the
    # v4-mapped form, and the denied connection never reached it.
    assert seen == [a.pod.ip6, a.ip]
    n1, n2 = mesh6.proxies["node1"], mesh6.proxies["node2"]
    # HBONE, not plaintext: node2 accepted it on 15008 with a's mTLS identity ...
    assert (
        n2.metric(
            "istio_tcp_connections_opened_total",
            reporter="destination",
            connection_security_policy="mutual_tls",
            source_principal="spiffe://cluster.local/ns/app/sa/a",
        )
        == 3  # v6 and v4 delivered, and the denied v6 attempt (opened counts attempts)
    )

    def inbound() -> list[AccessLogRecord]:
        return [r for r in n2.access if r.direction.value == "inbound" and not r.error]

    await eventually(lambda: len(inbound()) == 2)  # written when the connection is done
    # as ztunnel logs it: dst.addr is the L4 hop (15008), dst.hbone_addr the CONNECT target
    assert sorted(rec.dst_addr for rec in inbound()) == sorted(
        [f"[{b.pod.ip6}]:15008", f"{b.ip}:15008"]
    )
    assert sorted(rec.dst_hbone_addr for rec in inbound()) == sorted(
        [f"[{b.pod.ip6}]:9200", f"{b.ip}:9200"]
    )
    assert sorted(rec.src_addr.rpartition(":")[0] for rec in inbound()) == sorted(
        [f"[{a.pod.ip6}]", a.ip]
    )
    # ... and node1 sent it as HBONE to b's IPv6 address
    assert any(
        rec.dst_addr == f"[{b.pod.ip6}]:15008" and not rec.error
        for rec in n1.access
        if rec.direction.value == "outbound"
    )
    # the DENY was the destination's decision, recorded as such
    assert (
        n2.metric(
            "istio_tcp_connections_failed_total",
            reporter="destination",
            source_principal="spiffe://cluster.local/ns/app/sa/a",
            response_flags="DENY",
        )
        == 1
    )
    assert any("denied by DENY policy app/deny-port" in rec.error for rec in n2.access)


async def test_ipv6_plaintext_in_and_passthrough_out(mesh6: Mesh) -> None:
    """The two non-HBONE paths over IPv6: a pod outside the mesh reaches an enrolled pod
    through its 15006 (PERMISSIVE by default), and an enrolled pod reaches the outsider
    through 15001's plain passthrough, dialled from inside the pod over IPv6."""
    a = dual_stack_pod(mesh6, "node1", "a")
    c = mesh6.pod("node2", "c", mesh=False)  # no rules, no proxy
    assert a.pod.ip6 is not None
    assert c.pod.ip6 is not None
    await mesh6.start()
    seen_a: list[str] = []
    seen_c: list[str] = []
    srv_a = await echo_server(a.pod, 9300, seen_a, dual_stack=True)
    srv_c = await echo_server(c.pod, 9301, seen_c, dual_stack=True)
    try:
        r, w = await pod_socket_connect(c.pod, (a.pod.ip6, 9300))
        assert await roundtrip(r, w, b"plaintext in") == b"plaintext in"
        w.close()
        r, w = await pod_socket_connect(a.pod, (c.pod.ip6, 9301))
        assert await roundtrip(r, w, b"passthrough out") == b"passthrough out"
        w.close()
    finally:
        srv_a.close()
        srv_c.close()
    assert seen_a == [c.pod.ip6]
    assert seen_c == [a.pod.ip6]
    n1 = mesh6.proxies["node1"]

    def finished() -> list[AccessLogRecord]:
        return [r for r in n1.access if not r.error]

    await eventually(lambda: len(finished()) == 2)
    by_direction = {r.direction.value: r for r in finished()}
    assert by_direction["inbound"].src_addr.startswith(f"[{c.pod.ip6}]:")
    assert by_direction["inbound"].dst_hbone_addr == ""  # plaintext, not HBONE
    assert by_direction["outbound"].dst_addr == f"[{c.pod.ip6}]:9301"
    assert (
        n1.metric(
            "istio_tcp_connections_opened_total",
            reporter="destination",
            connection_security_policy="unknown",
        )
        == 1
    )
