"""The node/pod fabric: real namespaces, veths, a bridge, routing, real curl and http.server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ketch.netns import FabricError, current_netns_id, in_netns
from ketch.netns.fabric import Endpoint, Fabric, cleanup_stale, stale_namespaces

from .conftest import TwoNodes, unique_prefix

pytestmark = pytest.mark.integration


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip() for line in out.stdout.splitlines())


def _root_state() -> tuple[list[str], str, str]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    return _root_links(), run("ip", "-4", "route", "show", "table", "all"), run("ip", "addr")


def _http_server(pod: Endpoint, ip: str, port: int) -> subprocess.Popen[bytes]:
    return pod.exec(
        [sys.executable, "-m", "http.server", "--bind", ip, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_curl_between_pods_on_different_nodes(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    assert (a.ip, b.ip) == ("10.244.1.2", "10.244.2.2")
    _http_server(b, b.ip, 8080)
    a.wait_for_tcp(b.ip, 8080)
    result = a.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{remote_ip}",
            f"http://{b.ip}:8080/",
        ],
        timeout=20,
    )
    assert result.stdout == "200 10.244.2.2"


def test_pods_on_the_same_node_reach_each_other_through_the_node(fabric: Fabric) -> None:
    node = fabric.add_node("solo")
    a = fabric.add_pod(node, "a")
    c = fabric.add_pod(node, "c", ip="10.244.1.9")
    _http_server(c, c.ip, 9090)
    a.wait_for_tcp(c.ip, 9090)
    out = a.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{c.ip}:9090/"])
    assert out.stdout == "200"
    # the pod's only routes go through the node's gateway address
    routes = a.run(["ip", "-4", "route"]).stdout
    assert "default via 10.244.1.1 dev eth0" in routes


def test_nodes_route_pod_cidrs_over_the_underlay(two_nodes: TwoNodes) -> None:
    routes = two_nodes.node1.run(["ip", "-4", "route"]).stdout
    assert "10.244.2.0/24 via 172.18.0.2 dev eth0" in routes
    assert two_nodes.node2.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    # pods reach the other node's address too
    two_nodes.a.run(["ip", "route", "get", two_nodes.node2.ip])


def test_traffic_between_nodes_crosses_the_underlay_bridge(two_nodes: TwoNodes) -> None:
    fabric = two_nodes.fabric
    bridge_ports = subprocess.run(
        ["ip", "-n", fabric.underlay_netns, "-o", "link", "show", "master", "br0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert " n1@" in bridge_ports
    assert " n2@" in bridge_ports

    def packets_bridged_to_node2() -> int:
        out = subprocess.run(
            ["ip", "-n", fabric.underlay_netns, "-s", "-j", "link", "show", "n2"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["packets"])

    before = packets_bridged_to_node2()
    _http_server(two_nodes.b, two_nodes.b.ip, 8081)
    two_nodes.a.wait_for_tcp(two_nodes.b.ip, 8081)
    assert packets_bridged_to_node2() > before


def test_namespaces_are_separate_and_main_thread_stays_home(two_nodes: TwoNodes) -> None:
    home = current_netns_id()
    ids = {
        ep.name: in_netns(ep.netns, current_netns_id)
        for ep in (two_nodes.a, two_nodes.b, two_nodes.node1, two_nodes.node2)
    }
    assert len(set(ids.values())) == 4
    assert home not in ids.values()
    assert current_netns_id() == home


def test_close_leaves_nothing_in_the_root_netns() -> None:
    before = _root_state()
    prefix = unique_prefix()
    with Fabric(prefix) as fab:
        n1, n2 = fab.add_node("node1"), fab.add_node("node2")
        fab.add_pod(n1, "a")
        fab.add_pod(n2, "b")
        proc = _http_server(fab.pods["b"], fab.pods["b"].ip, 8080)
        assert sorted(stale_namespaces(prefix)) == sorted(fab.namespaces())
        assert len(fab.namespaces()) == 5
        # nothing of the fabric ever appears in the root netns
        assert _root_state() == before
    assert proc.returncode is not None  # the fabric stopped it
    assert stale_namespaces(prefix) == []
    assert _root_state() == before


def test_close_after_partial_failure_removes_what_was_made(fabric: Fabric) -> None:
    node = fabric.add_node("node1")
    with pytest.raises(FabricError, match="not a usable address"):
        fabric.add_pod(node, "bad", ip="10.99.0.5")
    with pytest.raises(FabricError, match="already exists"):
        fabric.add_node("node1")
    made = fabric.namespaces()
    assert made
    fabric.close()
    assert stale_namespaces(fabric.prefix) == []
    fabric.close()  # twice is fine


def test_cleanup_stale_removes_leftovers_of_a_crashed_run() -> None:
    prefix = unique_prefix()
    fab = Fabric(prefix)
    fab.add_pod(fab.add_node("node1"), "a")
    # simulate a crash: the Fabric object is dropped without close()
    assert len(stale_namespaces(prefix)) == 3
    removed = cleanup_stale(prefix)
    assert sorted(removed) == sorted(fab.namespaces())
    assert stale_namespaces(prefix) == []
    fab.close()  # nothing left to do, no error


def test_run_reports_failures_with_stderr(two_nodes: TwoNodes) -> None:
    with pytest.raises(FabricError, match="exited"):
        two_nodes.a.run(["ip", "link", "show", "no-such-link"])
    result = two_nodes.a.run(["ip", "link", "show", "no-such-link"], check=False)
    assert result.returncode != 0


def test_dual_stack_fabric_routes_ipv6_between_pods_and_nodes() -> None:
    """`Fabric(ipv6=True)`: ULA addresses mirroring the IPv4 plan, usable at once (no DAD
    wait), routed between nodes, to a pod on the same node, and from a node to its pod."""
    before = _root_state()
    with Fabric(unique_prefix(), ipv6=True) as fab:
        n1, n2 = fab.add_node("node1"), fab.add_node("node2")
        a = fab.add_pod(n1, "a")
        c = fab.add_pod(n1, "c")
        b = fab.add_pod(n2, "b")
        assert (n1.ip6, str(n1.pod_cidr6), n1.gateway6) == (
            "fd00:172:18::1",
            "fd00:10:244:1::/64",
            "fd00:10:244:1::1",
        )
        assert (a.ip6, c.ip6, b.ip6) == ("fd00:10:244:1::2", "fd00:10:244:1::3", "fd00:10:244:2::2")
        assert b.ips == ("10.244.2.2", "fd00:10:244:2::2")
        assert "tentative" not in b.run(["ip", "-6", "addr", "show", "dev", "eth0"]).stdout
        _http_server(b, "::", 8080)
        b.wait_for_tcp("::1", 8080)
        for client in (a, c, n1, n2):
            # the first try must work: a tentative address or a missing route fails at once
            out = client.run(
                ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://[{b.ip6}]:8080/"]
            )
            assert out.stdout == "200"
        _http_server(c, "::", 8080)
        c.wait_for_tcp("::1", 8080)
        out = a.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://[{c.ip6}]:8080/"]
        )
        assert out.stdout == "200"
        assert n1.run(["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip() == "1"
        assert _root_state() == before


def test_fabric_is_ipv4_only_by_default(two_nodes: TwoNodes) -> None:
    assert two_nodes.a.ip6 is None
    assert two_nodes.node1.pod_cidr6 is None
    assert "fd00" not in two_nodes.a.run(["ip", "-6", "addr"]).stdout
