"""Pod removal, fail-closed without a proxy, drain with a deadline, and what the wire
between nodes carries (a packet capture on the underlay bridge)."""

from __future__ import annotations

import asyncio
import struct
import subprocess
from pathlib import Path

import pytest

from ketch.netns import ns_popen
from tests.integration.test_ztunnel_support import (
    Mesh,
    connection_ends,
    echo_server,
    mesh,
    pod_socket_connect,
    refused,
    roundtrip,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
__all__ = ["mesh"]


async def _tcp_refused(m: Mesh, src: str, addr: tuple[str, int]) -> bool:
    try:
        _r, w = await pod_socket_connect(m.pods[src].pod, addr, within=5)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    w.close()
    return False


async def test_remove_pod_closes_listeners_and_connections(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    mesh.pod("node1", "d", mesh=False)
    await mesh.start()
    srv = await echo_server(b.pod, 9300)
    try:
        r, w = await pod_socket_connect(a.pod, (b.ip, 9300))
        assert await roundtrip(r, w, b"x") == b"x"
        assert not await _tcp_refused(mesh, "d", (b.ip, 15008))
        await mesh.proxies["node2"].zt.remove_pod(b.workload.uid)
        assert await connection_ends(r)
        w.close()
        assert await _tcp_refused(mesh, "d", (b.ip, 15008))
        assert mesh.proxies["node2"].zt.pods() == []
    finally:
        srv.close()


async def test_fail_closed_when_proxy_stopped(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    await mesh.start()
    seen: list[str] = []
    srv = await echo_server(b.pod, 9301, seen)
    try:
        await mesh.proxies["node1"].zt.stop()  # a's proxy gone, rules still in place
        assert await refused(a.pod, (b.ip, 9301))
        r = await mesh.run("a", ["curl", "-sS", "--max-time", "3", f"http://{b.ip}:9301/"])
        assert r.returncode != 0
    finally:
        srv.close()
    assert seen == []  # nothing reached b, in plaintext or otherwise


async def test_a_pod_without_workload_does_not_hold_the_node_back(mesh: Mesh) -> None:
    """As ztunnel: node readiness waits for the proxy and the pods' listeners, not for one
    pod's workload or certificate; that pod's state shows in config_dump instead."""
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    await mesh.start()
    late = mesh.pod("node1", "late")  # not in the proxies' state yet
    await mesh.enroll(late)
    zt = mesh.proxies["node1"].zt
    assert zt.ready
    assert zt.pending() == []
    assert not zt.pods_ready
    dump = zt.config_dump()
    state = {p["name"]: p["state"] for p in dump["pods"]}
    assert state == {"a": "ready", "late": "waiting_for_workload"}
    assert dump["workloadState"]["uid-late"]["state"] == "Pending"
    assert dump["workloadState"]["uid-a"]["state"] == "Up"
    srv = await echo_server(b.pod, 9303)
    try:  # the other pods are served meanwhile
        r, w = await pod_socket_connect(a.pod, (b.ip, 9303))
        assert await roundtrip(r, w, b"up") == b"up"
        w.close()
        mesh.update()  # now the late pod's workload arrives
        await mesh.wait_ready()
        assert zt.config_dump()["workloadState"]["uid-late"]["state"] == "Up"
    finally:
        srv.close()


async def test_drain_keeps_open_connections_until_deadline(mesh: Mesh) -> None:
    a = mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    await mesh.start()
    srv = await echo_server(b.pod, 9302)
    zt = mesh.proxies["node1"].zt
    try:
        r, w = await pod_socket_connect(a.pod, (b.ip, 9302))
        assert await roundtrip(r, w, b"before") == b"before"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        drain = asyncio.ensure_future(zt.drain(1.5))
        await asyncio.sleep(0.1)
        assert not zt.ready
        assert zt.pending() == ["proxy"]  # draining: readiness 500 "pending: proxy"
        assert await roundtrip(r, w, b"during") == b"during"  # still works
        assert await _tcp_refused(mesh, "a", (b.ip, 9302))  # new ones refused
        assert await roundtrip(r, w, b"still") == b"still"
        forced = await drain
        assert forced == 1
        assert loop.time() - t0 >= 1.4
        assert await connection_ends(r, 5)
        w.close()
    finally:
        srv.close()


def _tcp_ports(pcap: bytes) -> list[tuple[int, int, int]]:
    """(sport, dport, payload length) of every IPv4/TCP packet in a classic pcap file."""
    out = []
    magic = pcap[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off = 24
    while off + 16 <= len(pcap):
        _s, _us, incl, _orig = struct.unpack(endian + "IIII", pcap[off : off + 16])
        frame = pcap[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:]
        sport, dport = struct.unpack("!HH", tcp[:4])
        doff = (tcp[12] >> 4) * 4
        out.append((sport, dport, total - ihl - doff))
    return out


async def test_wire_between_nodes_is_only_tls_on_15008(mesh: Mesh, tmp_path: Path) -> None:
    mesh.pod("node1", "a")
    b = mesh.pod("node2", "b")
    await mesh.start()
    await mesh.http_server("b", 8080, b"secret body " * 50)
    pcap = tmp_path / "wire.pcap"
    cap = ns_popen(
        mesh.fabric.underlay_netns,
        [
            "tcpdump",
            "-i",
            "br0",
            "-U",
            "--immediate-mode",
            "-n",
            "-Z",
            "root",
            "-w",
            str(pcap),
            "tcp",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert cap.stderr is not None
        line = await asyncio.to_thread(cap.stderr.readline)  # "listening on br0 ..."
        assert b"listening" in line, line
        r = await mesh.run("a", ["curl", "-sS", "--max-time", "10", f"http://{b.ip}:8080/"])
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("secret body")
        await asyncio.sleep(0.3)  # let tcpdump write the last packets (-U: per packet)
    finally:
        cap.terminate()
        await asyncio.to_thread(cap.wait, 5)
        if cap.stderr is not None:
            cap.stderr.close()
    data = pcap.read_bytes()
    pkts = _tcp_ports(data)
    assert pkts, f"capture is empty ({len(data)} bytes: {data[:32]!r})"
    assert all(15008 in (s, d) for s, d, _ in pkts), {(s, d) for s, d, _ in pkts}
    assert sum(n for *_, n in pkts) > 0
    for needle in (b"GET /", b"HTTP/1", b"secret body"):
        assert needle not in data
