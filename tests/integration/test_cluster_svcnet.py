"""Service VIPs and cluster DNS over the real path: namespaces, nftables, http.server, curl
and glibc's resolver.

Two nodes; node1 holds the pods `client` and `web1`, node2 holds `web2`. The svcnet half of
a node process (ServiceProxy + ClusterDns, tests/integration/svcnet_node.py) runs inside
node1's netns against a SQLite store in a tmp dir; 10.96.0.10/32 is put on node1's `lo` as
the runtime does. The test writes the Service and EndpointSlice a controller would, and the
client pod's resolv.conf as the kubelet does.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster.layout import ClusterLayout
from ketch.netns.fabric import Fabric, Node, Pod, ip_batch
from ketch.store import SqliteStore
from tests.prereq import needs_tool

pytestmark = [needs_tool("nft"), needs_tool("curl")]

RUNNER = Path(__file__).with_name("svcnet_node.py")
VIP = "10.96.0.20"


def service(name: str = "web", ip: str = VIP) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "clusterIP": ip,
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}],
        },
    }


def endpoint_slice(pods: list[Pod], *, ready: bool = True, name: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-abc12",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [p.ip], "conditions": {"ready": ready}, "hostname": p.name} for p in pods
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


@dataclass
class Cluster:
    fabric: Fabric
    node1: Node
    client: Pod
    web1: Pod
    web2: Pod
    store: SqliteStore
    runner: subprocess.Popen[bytes]
    log: Path


def curl(
    pod: Pod | Node, url: str, *, netns_exec: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = ["curl", "-sS", "--max-time", "3", url]
    if netns_exec and isinstance(
        pod, Pod
    ):  # through `ip netns exec` so /etc/netns/<pod>/resolv.conf applies
        return subprocess.run(
            ["ip", "netns", "exec", pod.netns, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    return pod.run(argv, check=False)


def until(what: str, cond: Callable[[], bool], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def hits(
    pod: Pod | Node, url: str, n: int, *, netns_exec: bool = False
) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        r = curl(pod, url, netns_exec=netns_exec)
        out[
            r.stdout.strip() if r.returncode == 0 else f"error {r.returncode}: {r.stderr.strip()}"
        ] += 1
    return out


@pytest.fixture
def cluster(fabric: Fabric, tmp_path: Path) -> Iterator[Cluster]:
    node1 = fabric.add_node("node1")
    node2 = fabric.add_node("node2")
    client = fabric.add_pod(node1, "client")
    web1 = fabric.add_pod(node1, "web1")
    web2 = fabric.add_pod(node2, "web2")
    ip_batch(node1.netns, ["addr add 10.96.0.10/32 dev lo"])
    for pod in (web1, web2):
        www = tmp_path / pod.name
        www.mkdir()
        (www / "index.html").write_text(f"{pod.name}\n")
        pod.exec(
            ["python3", "-m", "http.server", "8080", "--bind", pod.ip, "--directory", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    layout = ClusterLayout(tmp_path / "state", "t" + fabric.prefix[-6:])
    layout.state_dir.mkdir()
    store = SqliteStore(layout.store_path)
    store.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "node1"},
                "spec": {"podCIDR": str(node1.pod_cidr)},
                "status": {"addresses": [{"type": "InternalIP", "address": node1.ip}]},
            }
        ]
    )
    etc = Path("/etc/netns") / client.netns
    etc.mkdir(parents=True)
    etc_web1 = Path("/etc/netns") / web1.netns
    etc_web1.mkdir(parents=True)
    log = tmp_path / "svcnet.log"
    logf = log.open("wb")
    runner = node1.exec(
        [sys.executable, str(RUNNER), str(layout.state_dir), layout.name, "node1"],
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    try:
        for d in (etc, etc_web1):
            (d / "resolv.conf").write_text(
                "nameserver 10.96.0.10\n"
                "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
                "options ndots:5\n"
            )
        for pod in (web1, web2):
            client.wait_for_tcp(pod.ip, 8080)
        yield Cluster(fabric, node1, client, web1, web2, store, runner, log)
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            try:
                runner.wait(10)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
        logf.close()
        store.close()
        shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(etc_web1, ignore_errors=True)


def tables(node: Node) -> str:
    return node.run(["nft", "list", "tables"]).stdout


def test_vip_dns_and_endpoint_updates(cluster: Cluster) -> None:
    c = cluster
    c.store.apply([service(), endpoint_slice([c.web1, c.web2])])
    url = f"http://{VIP}/"
    until("the VIP to answer", lambda: curl(c.client, url).returncode == 0)
    assert "table ip ketch-svc" in tables(c.node1)

    # load-balanced over both endpoints (one on this node, one across the underlay)
    counts = hits(c.client, url, 40)
    assert set(counts) == {"web1", "web2"}, counts
    assert min(counts.values()) >= 5, counts

    # names: full, and the short name through the search path (glibc, resolv.conf)
    r = subprocess.run(
        ["ip", "netns", "exec", c.client.netns, "getent", "hosts", "web.shop.svc.cluster.local"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == VIP
    by_name = hits(c.client, "http://web/", 10, netns_exec=True)
    assert set(by_name) <= {"web1", "web2"}, by_name
    assert sum(by_name.values()) == 10
    assert hits(c.client, "http://web.shop.svc.cluster.local/", 1, netns_exec=True).total() == 1
    missing = subprocess.run(
        ["ip", "netns", "exec", c.client.netns, "getent", "hosts", "nope.shop.svc.cluster.local"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 2  # not found

    # SRV and endpoint names with dnspython's stub resolver inside the pod netns
    srv = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            c.client.netns,
            sys.executable,
            "-c",
            "import dns.resolver as r\n"
            "for rd in r.resolve('_http._tcp.web.shop.svc.cluster.local', 'SRV'):\n"
            "    print(rd.priority, rd.weight, rd.port, rd.target)\n",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert srv.returncode == 0, srv.stderr
    assert srv.stdout.strip() == "0 100 80 web.shop.svc.cluster.local."

    # scale down: one endpoint left -> every request goes to it, within about a second
    c.store.apply([endpoint_slice([c.web2])])
    start = time.monotonic()
    until(
        "the rules to follow the endpoint change",
        lambda: (
            f"{c.web1.ip}:" not in c.node1.run(["nft", "list", "table", "ip", "ketch-svc"]).stdout
            and f"{c.web1.ip} ."
            not in c.node1.run(["nft", "list", "table", "ip", "ketch-svc"]).stdout
        ),
    )
    took = time.monotonic() - start
    assert hits(c.client, url, 20) == {"web2": 20}
    print(f"endpoint change -> rules follow in {took:.2f}s (incl. polling nft list)")

    # no ready endpoints: refused at once (curl exit 7), not a 3 s timeout (28)
    c.store.apply([endpoint_slice([c.web2], ready=False)])
    until("the VIP to refuse", lambda: curl(c.client, url).returncode == 7)
    t0 = time.monotonic()
    r2 = curl(c.client, url)
    assert r2.returncode == 7, r2.stderr
    assert time.monotonic() - t0 < 2.5
    # a port the Service does not have: refused too
    assert curl(c.client, f"http://{VIP}:81/").returncode == 7

    # service removed: its rules go, the DNS name goes
    c.store.apply([endpoint_slice([c.web1, c.web2])])
    until("endpoints back", lambda: curl(c.client, url).returncode == 0)
    c.store.delete("Service", "shop", "web")
    until(
        "the VIP rules to go",
        lambda: VIP not in c.node1.run(["nft", "list", "table", "ip", "ketch-svc"]).stdout,
    )
    until(
        "the name to go",
        lambda: (
            subprocess.run(
                ["ip", "netns", "exec", c.client.netns, "getent", "hosts", "web"],
                capture_output=True,
                timeout=30,
                check=False,
            ).returncode
            == 2
        ),
    )


def test_hairpin_pod_reaches_itself_through_the_vip(cluster: Cluster) -> None:
    c = cluster
    c.store.apply([service(), endpoint_slice([c.web1])])
    url = f"http://{VIP}/"
    until("the VIP to answer", lambda: curl(c.client, url).returncode == 0)
    # web1 -> VIP -> web1: DNATed back out of the veth it came from, masqueraded
    assert hits(c.web1, url, 5) == {"web1": 5}


def test_node_netns_reaches_the_vip(cluster: Cluster) -> None:
    """The output hook: a connection from the node netns itself (a probe, a tool on the
    node); the service proxy's route gives it a path and the node's underlay source."""
    c = cluster
    c.store.apply([service(), endpoint_slice([c.web1, c.web2])])
    until("the route", lambda: "10.96.0.0/16" in c.node1.run(["ip", "route"]).stdout)
    url = f"http://{VIP}/"
    until("the VIP from the node", lambda: curl(c.node1, url).returncode == 0)
    counts = hits(c.node1, url, 30)
    assert set(counts) == {"web1", "web2"}, counts
    # DNS on the node's own address answers the node too
    r = c.node1.run(
        [
            sys.executable,
            "-c",
            "import dns.message, dns.query\n"
            "q = dns.message.make_query('web.shop.svc.cluster.local', 'A')\n"
            "print(dns.query.udp(q, '10.96.0.10', timeout=3).answer[0][0])\n",
        ]
    )
    assert r.stdout.strip() == VIP


def test_headless_service_resolves_to_pod_ips(cluster: Cluster) -> None:
    c = cluster
    c.store.apply([service("db", "None"), endpoint_slice([c.web1, c.web2], name="db")])

    def resolved() -> list[str]:
        r = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                c.client.netns,
                sys.executable,
                "-c",
                "import dns.resolver as r\n"
                "for rd in r.resolve('db.shop.svc.cluster.local', 'A'): print(rd)\n"
                "for rd in r.resolve('web2.db.shop.svc.cluster.local', 'A'): print('host', rd)\n",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return sorted(r.stdout.split("\n")) if r.returncode == 0 else []

    until("the headless name", lambda: bool(resolved()))
    assert resolved() == sorted(["", c.web1.ip, c.web2.ip, f"host {c.web2.ip}"])
    # no VIP rules for it
    assert "None" not in c.node1.run(["nft", "list", "table", "ip", "ketch-svc"]).stdout


def test_stop_removes_the_table_and_logs_no_traceback(cluster: Cluster) -> None:
    c = cluster
    c.store.apply([service(), endpoint_slice([c.web1])])
    until("the table", lambda: "ketch-svc" in tables(c.node1))
    c.runner.send_signal(signal.SIGTERM)
    assert c.runner.wait(15) == 0
    assert "ketch-svc" not in tables(c.node1)
    assert "10.96.0.0/16" not in c.node1.run(["ip", "route"]).stdout
    text = c.log.read_text()
    assert "Traceback" not in text, text
    assert "cluster DNS: serving cluster.local on 10.96.0.10:53" in text


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5353))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[2].encode(), peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], 53))
s.send(b"hi")
try:
    print(s.recv(2048).decode())
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
"""


def test_udp_service(cluster: Cluster) -> None:
    c = cluster
    for pod in (c.web1, c.web2):
        pod.exec(
            [sys.executable, "-c", UDP_ECHO, pod.ip, pod.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "shop"},
        "spec": {
            "clusterIP": "10.96.0.53",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}],
        },
    }
    eps = endpoint_slice([c.web1, c.web2], name="echo")
    eps["ports"] = [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    c.store.apply([svc, eps])

    def ask() -> str:
        return c.client.run([sys.executable, "-c", UDP_ASK, "10.96.0.53"]).stdout.strip()

    until("the UDP VIP", lambda: ask() in ("web1", "web2"))
    # each query is a new socket (new source port): conntrack balances them
    seen = collections.Counter(ask() for _ in range(30))
    assert set(seen) == {"web1", "web2"}, seen
    # no ready endpoints: ICMP port unreachable, seen by the client as refused
    eps["endpoints"] = []
    c.store.apply([eps])
    until("the UDP VIP to refuse", lambda: ask() == "refused")


def test_rendered_rulesets_load_into_the_kernel(fabric: Fabric) -> None:
    """Each shape of ruleset loads with the real nft, twice (the replace path)."""
    from ketch.api.core import Service as ServiceModel
    from ketch.api.discovery import EndpointSlice as SliceModel
    from ketch.cluster.services import delete_script, render

    node = fabric.add_node("node1")
    pods = [fabric.add_pod(node, f"p{i}") for i in range(3)]
    web = ServiceModel.model_validate(service())
    shapes = {
        "empty": ([], []),
        "no endpoints": ([web], []),
        "one": ([web], [SliceModel.model_validate(endpoint_slice(pods[:1]))]),
        "three": ([web], [SliceModel.model_validate(endpoint_slice(pods))]),
        "headless": (
            [ServiceModel.model_validate(service("db", "None"))],
            [SliceModel.model_validate(endpoint_slice(pods, name="db"))],
        ),
    }
    for name, (svcs, slices) in shapes.items():
        text = render(svcs, slices, node_pod_cidr=node.pod_cidr)
        for _ in range(2):
            r = node.run(["nft", "-f", "-"], input=text, check=False)
            assert r.returncode == 0, f"{name}: {r.stderr}"
        listed = node.run(["nft", "list", "table", "ip", "ketch-svc"]).stdout
        for pod in {"one": pods[:1], "three": pods}.get(name, []):
            assert f"{pod.ip}:8080" in listed or f"{pod.ip} . 8080" in listed, (name, listed)
        if name == "headless":
            assert "dnat to" not in listed
    node.run(["nft", "-f", "-"], input=delete_script())
    node.run(["nft", "-f", "-"], input=delete_script())  # idempotent
    assert "ketch-svc" not in node.run(["nft", "list", "tables"]).stdout
