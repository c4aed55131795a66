"""The in-pod redirection rules in real pod namespaces: install/remove, capture, fail closed.

Traffic goes only between pods of the test's own fabric.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

import pytest

from ketch.netns import (
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT,
    PROBE_SNAT_IPV6,
    PROXY_MARK,
    detect_backend,
    host_rules_installed,
    in_netns,
    install_host_rules,
    install_rules,
    ns_run,
    original_dst,
    pod_connect_socket,
    pod_listener,
    remove_host_rules,
    remove_rules,
    rules_installed,
    socket_mark,
)
from ketch.netns.fabric import Endpoint, Fabric, Pod
from ketch.netns.iptables import LEGACY, NFT, IptablesBackend, saved_rules
from ketch.netns.rules import (
    HOST_CHAINS,
    HOST_TABLES,
    JUMPS,
    Family,
    HostProbeSpec,
    chain_rules,
    count_policy_rules,
    host_chain_rules,
    our_rules,
    policy_rule_priorities,
)
from ketch.netns.sockets import canonical_ip
from tests import prereq

from .conftest import TwoNodes, unique_prefix

pytestmark = pytest.mark.integration

APP_PORT = 8080


def _expected(table: str) -> list[str]:
    jumps = [f"-A {builtin} -j {ours}" for t, builtin, ours in JUMPS if t == table]
    return sorted([*jumps, *chain_rules()[table]])


def _app_listener(pod: Pod, port: int = APP_PORT) -> socket.socket:
    """A plain (unmarked) workload listener inside the pod."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        s.setblocking(False)
        return s

    return in_netns(pod.netns, make)


def _workload_connect(pod: Pod, address: tuple[str, int], timeout: float = 3.0) -> socket.socket:
    """Connect like a workload inside the pod would: an unmarked socket made in the pod."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = in_netns(pod.netns, socket.socket, family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _accept(listener: socket.socket, timeout: float = 3.0) -> socket.socket:
    ready, _, _ = select.select([listener], [], [], timeout)
    assert ready, "no connection arrived"
    conn, _ = listener.accept()
    return conn


def _peer_ip(conn: socket.socket) -> str:
    """The peer address of an accepted socket, unmapped (pod listeners are dual-stack)."""
    return str(canonical_ip(conn.getpeername()[0]))


def _nothing_pending(listener: socket.socket) -> bool:
    ready, _, _ = select.select([listener], [], [], 0)
    return not ready


@contextlib.contextmanager
def _closing(*socks: socket.socket) -> Iterator[None]:
    try:
        yield
    finally:
        for s in socks:
            s.close()


def _ip(pod: Pod, *args: str) -> str:
    return ns_run(pod.netns, ["ip", *args]).stdout


def test_install_puts_exactly_our_rules_and_routing_in_the_pod(two_nodes: TwoNodes) -> None:
    pod = two_nodes.a
    backend = install_rules(pod.netns)
    ours = our_rules(saved_rules(pod.netns, backend=backend))
    assert sorted(ours["mangle"]) == _expected("mangle")
    assert sorted(ours["nat"]) == _expected("nat")
    assert count_policy_rules(_ip(pod, "-4", "-j", "rule", "show")) == 1
    assert "local default dev lo" in _ip(pod, "-4", "route", "show", "table", "100")
    if prereq.have(backend.available(6), f"needs {backend.restore(6)}", "install ip6tables"):
        v6 = our_rules(saved_rules(pod.netns, family=6, backend=backend))
        assert any("! -d ::1/128" in r for r in v6["nat"])
    # the other pod is untouched
    assert not rules_installed(two_nodes.b.netns)
    assert rules_installed(pod.netns)


def test_installing_twice_yields_one_copy(two_nodes: TwoNodes) -> None:
    pod = two_nodes.a
    backend = install_rules(pod.netns)
    first = saved_rules(pod.netns, backend=backend)
    assert install_rules(pod.netns) == backend
    second = saved_rules(pod.netns, backend=backend)
    assert our_rules(second) == our_rules(first)
    assert sorted(our_rules(second)["nat"]) == _expected("nat")
    assert count_policy_rules(_ip(pod, "-4", "-j", "rule", "show")) == 1


def test_remove_leaves_nothing_of_ours_and_is_idempotent(two_nodes: TwoNodes) -> None:
    pod = two_nodes.a
    remove_rules(pod.netns)  # nothing installed yet: fine
    backend = install_rules(pod.netns)
    remove_rules(pod.netns)
    v6 = prereq.have(backend.available(6), f"needs {backend.restore(6)}", "install ip6tables")
    for family in (4, 6) if v6 else (4,):
        text = saved_rules(pod.netns, family=family, backend=backend)
        assert our_rules(text) == {"mangle": [], "nat": []}
        assert "ISTIO_" not in text
    assert count_policy_rules(_ip(pod, "-4", "-j", "rule", "show")) == 0
    assert _ip(pod, "-4", "route", "show", "table", "100").strip() == ""
    assert not rules_installed(pod.netns)
    remove_rules(pod.netns)


@pytest.mark.parametrize("backend", [NFT, LEGACY], ids=["nft", "legacy"])
def test_each_backend_installs_and_removes(two_nodes: TwoNodes, backend: IptablesBackend) -> None:
    prereq.require(backend.available(), f"needs {backend.restore(4)}", "install iptables")
    pod = two_nodes.b
    assert install_rules(pod.netns, backend=backend, ipv6=False) == backend
    # later automatic choices stick to the backend that holds our chains
    assert detect_backend(pod.netns) == backend
    assert install_rules(pod.netns, ipv6=False) == backend
    assert sorted(our_rules(saved_rules(pod.netns, backend=backend))["nat"]) == _expected("nat")
    remove_rules(pod.netns)
    assert our_rules(saved_rules(pod.netns, backend=backend))["nat"] == []


def test_fail_closed_outbound_without_proxy_is_refused(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    app = _app_listener(b)
    with _closing(app):
        # control: without rules the workload reaches the other pod
        with _closing(_workload_connect(a, (b.ip, APP_PORT))):
            _accept(app).close()
        install_rules(a.netns)
        # with rules and no proxy on 15001: redirected to a closed local port, refused
        with pytest.raises(ConnectionRefusedError):
            _workload_connect(a, (b.ip, APP_PORT)).close()
        assert _nothing_pending(app), "traffic leaked past the redirect"


def test_outbound_capture_reports_the_original_destination(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    install_rules(a.netns)
    proxy = pod_listener(a.netns, OUTBOUND_PORT)
    with _closing(proxy):
        client = _workload_connect(a, (b.ip, APP_PORT))
        conn = _accept(proxy)
        with _closing(client, conn):
            assert original_dst(conn) == (b.ip, APP_PORT)
            assert _peer_ip(conn) == a.ip
            assert socket_mark(conn) == PROXY_MARK
            client.sendall(b"hello")
            conn.setblocking(True)
            assert conn.recv(5) == b"hello"


def test_inbound_capture_and_fail_closed(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    install_rules(b.netns)
    app = _app_listener(b)
    with _closing(app):
        # no proxy on 15006: inbound plaintext is refused, the app never sees it
        with pytest.raises(ConnectionRefusedError):
            _workload_connect(a, (b.ip, APP_PORT)).close()
        assert _nothing_pending(app)
        proxy = pod_listener(b.netns, INBOUND_PLAINTEXT_PORT)
        with _closing(proxy):
            client = _workload_connect(a, (b.ip, APP_PORT))
            conn = _accept(proxy)
            with _closing(client, conn):
                assert original_dst(conn) == (b.ip, APP_PORT)
                assert _peer_ip(conn) == a.ip
            assert _nothing_pending(app)


def test_hbone_port_is_never_redirected(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    install_rules(b.netns)
    hbone = pod_listener(b.netns, HBONE_PORT)
    with _closing(hbone):
        client = _workload_connect(a, (b.ip, HBONE_PORT))
        conn = _accept(hbone)
        with _closing(client, conn):
            # conntrack still knows the connection, but nothing rewrote its destination
            local = (str(canonical_ip(conn.getsockname()[0])), conn.getsockname()[1])
            assert original_dst(conn) == local == (b.ip, HBONE_PORT)


def test_proxy_marked_outbound_connection_bypasses_the_redirect(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    install_rules(a.netns)
    app = _app_listener(b)
    sock = pod_connect_socket(a.netns)
    with _closing(app, sock):
        assert socket_mark(sock) == PROXY_MARK
        sock.settimeout(3)
        sock.connect((b.ip, APP_PORT))
        _accept(app).close()


def test_connmark_routes_replies_back_to_a_transparent_proxy(two_nodes: TwoNodes) -> None:
    """Inbound delivery keeping the client's source IP: the proxy (marked, IP_TRANSPARENT)
    connects to the app from the remote client's address; the app's replies to that
    remote address carry the restored mark 0x111 and are routed over lo by table 100."""
    a, b = two_nodes.a, two_nodes.b
    install_rules(b.netns)
    app = _app_listener(b)
    sock = pod_connect_socket(b.netns, transparent=True, source=(a.ip, 0))
    with _closing(app, sock):
        sock.settimeout(3)
        sock.connect((b.ip, APP_PORT))
        conn = _accept(app)
        with _closing(conn):
            assert conn.getpeername()[0] == a.ip
            conn.setblocking(True)
            conn.sendall(b"reply")
            assert sock.recv(5) == b"reply"


def test_dual_stack_listeners_capture_ipv4_and_ipv6() -> None:
    """With IPv6 pods, the ip6tables REDIRECTs (to ::1) and the iptables ones (to 127.0.0.1)
    both land on the proxy's one dual-stack listener per port, and `original_dst` reports
    each connection's pre-REDIRECT destination in its own family, IPv4 never v4-mapped."""
    with Fabric(unique_prefix(), ipv6=True) as fab:
        a = fab.add_pod(fab.add_node("node1"), "a")
        b = fab.add_pod(fab.add_node("node2"), "b")
        assert a.ip6 is not None
        assert b.ip6 is not None
        install_rules(a.netns, ipv6=True)
        install_rules(b.netns, ipv6=True)
        outbound = pod_listener(a.netns, OUTBOUND_PORT)
        inbound = pod_listener(b.netns, INBOUND_PLAINTEXT_PORT)
        with _closing(outbound, inbound):
            for dst, src in ((b.ip6, a.ip6), (b.ip, a.ip)):
                client = _workload_connect(a, (dst, APP_PORT))
                conn = _accept(outbound)
                with _closing(client, conn):
                    assert original_dst(conn) == (dst, APP_PORT)
                    assert original_dst(conn, conn.getpeername()) == (dst, APP_PORT)
                    assert _peer_ip(conn) == src
                # from a proxy-marked socket (as the proxy sends), inbound to b's 15006
                out = pod_connect_socket(a.netns, family=client.family)
                with _closing(out):
                    out.settimeout(3)
                    out.connect((dst, APP_PORT))
                    conn = _accept(inbound)
                    with _closing(conn):
                        assert original_dst(conn) == (dst, APP_PORT)
                        assert _peer_ip(conn) == src


def test_fwmark_rule_has_istio_priority_and_an_old_one_is_moved(two_nodes: TwoNodes) -> None:
    pod = two_nodes.a
    # what older Ketch installed: no priority, the kernel picks one (32765 here)
    _ip(pod, "-4", "rule", "add", "fwmark", "0x111/0xfff", "lookup", "100")
    assert policy_rule_priorities(_ip(pod, "-4", "-j", "rule", "show")) == [32765]
    install_rules(pod.netns, ipv6=False)
    assert policy_rule_priorities(_ip(pod, "-4", "-j", "rule", "show")) == [32764]
    install_rules(pod.netns, ipv6=False)
    assert policy_rule_priorities(_ip(pod, "-4", "-j", "rule", "show")) == [32764]
    remove_rules(pod.netns, ipv6=False)
    assert policy_rule_priorities(_ip(pod, "-4", "-j", "rule", "show")) == []


def _host_rules(node: Endpoint, family: Family, backend: IptablesBackend) -> list[str]:
    text = saved_rules(node.netns, family=family, backend=backend)
    return our_rules(text, tables=HOST_TABLES, chains=HOST_CHAINS)["nat"]


def test_host_probe_snat_install_replace_remove(two_nodes: TwoNodes) -> None:
    node = two_nodes.node1
    backend = install_host_rules(node.netns, [str(node.pod_cidr)], ipv6=False)
    expected = HostProbeSpec(destinations=(str(node.pod_cidr),))
    assert _host_rules(node, 4, backend) == [
        "-A POSTROUTING -j ISTIO_POSTRT",
        *host_chain_rules(expected),
    ]
    assert host_rules_installed(node.netns)
    # a new list (ipset-like: one address per enrolled pod) replaces the old one
    assert install_host_rules(node.netns, [two_nodes.a.ip], ipv6=False) == backend
    assert _host_rules(node, 4, backend) == [
        "-A POSTROUTING -j ISTIO_POSTRT",
        *host_chain_rules(HostProbeSpec(destinations=(two_nodes.a.ip,))),
    ]
    # the pods' rules and the node's never mix
    assert not rules_installed(node.netns)
    assert not host_rules_installed(two_nodes.node2.netns)
    remove_host_rules(node.netns)
    assert _host_rules(node, 4, backend) == []
    assert "ISTIO_POSTRT" not in saved_rules(node.netns, backend=backend)
    assert not host_rules_installed(node.netns)
    remove_host_rules(node.netns)  # twice is fine


def _node_connect(node: Endpoint, address: tuple[str, int]) -> socket.socket:
    """Connect from a process of the node itself (kubelet's position)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = in_netns(node.netns, socket.socket, family, socket.SOCK_STREAM)
    sock.settimeout(3)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _dual_app_listener(pod: Pod, port: int = APP_PORT) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(16)
        s.setblocking(False)
        return s

    return in_netns(pod.netns, make)


def test_node_probes_bypass_the_redirect_forwarded_traffic_does_not() -> None:
    """The probe exception over real rules, IPv4 and IPv6, with no proxy running (so any
    redirect is refused): a connection from a node process to a pod on that node is
    SNATed to the probe address and reaches the app; another pod's connection, which
    the node only forwards, is still redirected (refused here)."""
    with Fabric(unique_prefix(), ipv6=True) as fab:
        node = fab.add_node("node1")
        a = fab.add_pod(node, "a")
        c = fab.add_pod(node, "c")
        assert a.ip6 is not None
        assert node.pod_cidr6 is not None
        install_rules(a.netns, ipv6=True)
        app = _dual_app_listener(a)
        with _closing(app):
            for dst, probe_src in ((a.ip, "169.254.7.127"), (a.ip6, PROBE_SNAT_IPV6)):
                # without the node rule the probe comes from the node's address: redirected
                with pytest.raises(ConnectionRefusedError):
                    _node_connect(node, (dst, APP_PORT)).close()
                install_host_rules(node.netns, [str(node.pod_cidr), str(node.pod_cidr6)])
                client = _node_connect(node, (dst, APP_PORT))
                conn = _accept(app)
                with _closing(client, conn):
                    assert _peer_ip(conn) == probe_src
                    conn.setblocking(True)
                    conn.sendall(b"ok")  # the reply finds its way back (conntrack un-SNAT)
                    assert client.recv(2) == b"ok"
                # a pod on the same node is forwarded, not SNATed: still redirected
                with pytest.raises(ConnectionRefusedError):
                    _workload_connect(c, (dst, APP_PORT)).close()
                assert _nothing_pending(app)
                remove_host_rules(node.netns)
