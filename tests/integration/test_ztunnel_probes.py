"""Kubelet-style probes under STRICT mTLS (istio-cni's probe exception), end to end.

A pod enrolled in the mesh under a namespace-wide STRICT PeerAuthentication: the node
proxy's 15006 refuses every plaintext connection. Kubelet's probes come from the node
itself and have no mesh identity; the node's ISTIO_POSTRT SNATs them to 169.254.7.127
and the pod's rules let that source past the 15006 redirect, so they reach the app.

The non-probe source is a pod *without* the mesh on the same node: its connection also
crosses the node netns, but the node only forwards it (no local socket, so
`-m owner --socket-exists` does not match), it keeps its own source address and is
refused by the proxy as plaintext. That is the case the `--socket-exists` match exists
for: routing through the node must not borrow the probes' exception.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from ketch.netns import PROBE_SNAT_IPV4, in_netns, install_host_rules
from ketch.netns.fabric import Node
from tests.integration.test_ztunnel_support import Mesh, echo_server, mesh, refused

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mesh"]

STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "strict", "namespace": "app"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def tcp_probe(node: Node, addr: tuple[str, int]) -> bytes | None:
    """A TCP probe from a process of the node (kubelet's position): connect, send, read the
    echo. None when refused, reset or closed without an answer (what kubelet counts as a
    failed probe)."""

    def probe() -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            try:
                s.connect(addr)
                s.sendall(b"probe")
                return s.recv(5) or None
            except OSError:
                return None

    return in_netns(node.netns, probe)


async def test_probe_from_the_node_passes_strict_while_plaintext_is_refused(mesh: Mesh) -> None:
    b = mesh.pod("node1", "b")
    d = mesh.pod("node1", "d", mesh=False)  # no rules, no proxy: plaintext via the node
    mesh.set_policies([STRICT])
    await mesh.start()
    node = mesh.nodes["node1"]
    seen: list[str] = []
    srv = await echo_server(b.pod, 8080, seen)
    try:
        # The old behaviour, as a control: without the node's SNAT the probe comes from the
        # node's address, is redirected to 15006 and refused under STRICT.
        assert await asyncio.to_thread(tcp_probe, node, (b.ip, 8080)) is None
        assert seen == []

        await asyncio.to_thread(install_host_rules, node.netns, [str(node.pod_cidr)])
        assert await asyncio.to_thread(tcp_probe, node, (b.ip, 8080)) == b"probe"
        assert seen == [PROBE_SNAT_IPV4]  # the app sees the probe address, no proxy between

        # a plaintext peer routed through the same node is not a probe: refused by 15006
        assert await refused(d.pod, (b.ip, 8080))
        assert seen == [PROBE_SNAT_IPV4]
    finally:
        srv.close()

    # An HTTP probe like kubelet's httpGet, by a real client in the node netns.
    await mesh.http_server("b", 8081, b"ready\n")
    out = await asyncio.to_thread(
        node.run,
        ["curl", "-sS", "-m", "5", "-o", "-", "-w", " %{http_code}", f"http://{b.ip}:8081/"],
    )
    assert out.stdout == "ready\n 200"

    n1 = mesh.proxies["node1"]
    # The proxy saw the denied connections (the control and d's), never a probe.
    denied = [r for r in n1.access if r.direction.value == "inbound"]
    assert {r.src_addr.rpartition(":")[0] for r in denied} == {node.gateway, d.ip}
    assert all(r.error for r in denied)
    assert not any(PROBE_SNAT_IPV4 in r.src_addr for r in n1.access)
