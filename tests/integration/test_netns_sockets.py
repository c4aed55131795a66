"""In-pod sockets: listeners and outbound sockets made inside pod namespaces."""

from __future__ import annotations

import select
import socket

import pytest

from ketch.netns import (
    PROXY_MARK,
    canonical_ip,
    close_netns,
    in_netns,
    open_netns,
    pod_connect,
    pod_connect_socket,
    pod_listener,
    pod_listener_async,
    socket_mark,
)

from .conftest import TwoNodes

pytestmark = pytest.mark.integration


def _accept(listener: socket.socket, timeout: float = 3.0) -> socket.socket:
    ready, _, _ = select.select([listener], [], [], timeout)
    assert ready, "no connection arrived"
    return listener.accept()[0]


def test_pod_listener_is_reachable_from_another_pod_and_marked(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    fd = open_netns(b.netns)
    try:
        listener = pod_listener(fd, 15008)
    finally:
        close_netns(fd)  # the socket keeps the netns alive by itself
    with listener:
        assert listener.getblocking() is False
        assert socket_mark(listener) == PROXY_MARK
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        client = in_netns(a.netns, socket.socket)
        with client:
            client.settimeout(3)
            client.connect((b.ip, 15008))
            conn = _accept(listener)
            with conn:
                assert socket_mark(conn) == PROXY_MARK  # accepted sockets inherit the mark
                # Nagle off (asyncio only sets it itself on IPPROTO_TCP sockets)
                assert conn.proto == socket.IPPROTO_TCP
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                # dual-stack by default: an IPv4 peer shows up v4-mapped
                assert listener.family == socket.AF_INET6
                assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
                assert conn.getsockname()[:2] == (f"::ffff:{b.ip}", 15008)
                assert str(canonical_ip(conn.getpeername()[0])) == a.ip


def test_reuseport_lets_a_second_proxy_bind_next_to_the_first(two_nodes: TwoNodes) -> None:
    first = pod_listener(two_nodes.a.netns, 15001)
    second = pod_listener(two_nodes.a.netns, 15001)
    first.close()
    second.close()


def test_new_connections_go_to_the_newest_listener(two_nodes: TwoNodes) -> None:
    """The upgrade handoff: once a second proxy binds, every new connection reaches it;
    when it is gone, the first gets them again."""
    a, b = two_nodes.a, two_nodes.b

    def where(listeners: list[socket.socket]) -> int:
        client = in_netns(a.netns, socket.socket)
        with client:
            client.settimeout(3)
            client.connect((b.ip, 15008))
            ready, _, _ = select.select(listeners, [], [], 3.0)
            assert len(ready) == 1
            ready[0].accept()[0].close()
            return listeners.index(ready[0])

    old = pod_listener(b.netns, 15008)
    with old:
        assert {where([old]) for _ in range(5)} == {0}
        new = pod_listener(b.netns, 15008)
        with new:
            assert [where([old, new]) for _ in range(20)] == [1] * 20
        assert {where([old]) for _ in range(5)} == {0}


def test_pod_connect_socket_is_marked_and_unconnected(two_nodes: TwoNodes) -> None:
    sock = pod_connect_socket(two_nodes.a.netns, family=socket.AF_INET6)
    with sock:
        assert sock.family == socket.AF_INET6
        assert socket_mark(sock) == PROXY_MARK
        assert sock.getblocking() is False


async def test_async_listener_and_connect(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.a, two_nodes.b
    listener = await pod_listener_async(b.netns, 15006, ip=b.ip)
    with listener:
        sock = await pod_connect(a.netns, (b.ip, 15006), connect_timeout=3)
        with sock:
            assert socket_mark(sock) == PROXY_MARK
            assert sock.getsockname()[0] == a.ip


def _keepalive(sock: socket.socket) -> tuple[int, int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


async def test_pod_sockets_carry_ztunnels_tcp_keepalive(two_nodes: TwoNodes) -> None:
    """ztunnel's keepalive (SO_KEEPALIVE, idle 180 s, interval 180 s, 9 probes) on both
    sides of the proxy: the dialled socket sets it, the accepted one inherits it from the
    listener (no syscall per accepted connection)."""
    a, b = two_nodes.a, two_nodes.b
    listener = await pod_listener_async(b.netns, 15006, ip=b.ip)
    with listener:
        assert _keepalive(listener) == (1, 180, 180, 9)
        sock = await pod_connect(a.netns, (b.ip, 15006), connect_timeout=3)
        with sock:
            assert _keepalive(sock) == (1, 180, 180, 9)
            listener.setblocking(True)
            listener.settimeout(3)
            conn, _ = listener.accept()
            with conn:
                assert _keepalive(conn) == (1, 180, 180, 9)
