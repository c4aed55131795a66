"""TCP keepalive on HBONE sockets, both directions, as ztunnel (180 s / 180 s / 9)."""

from __future__ import annotations

import socket

from ketch.ztunnel.hbone.pool import HboneClientPool
from ketch.ztunnel.hbone.server import IncomingConnect
from ketch.ztunnel.hbone.sockopts import set_keepalive
from tests.unit.ztunnel.hbone.conftest import Mesh, ServerFactory, eventually, key_for


def keepalive_of(sock: object) -> tuple[int, int, int, int]:
    get = sock.getsockopt  # type: ignore[attr-defined]
    return (
        get(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


ZTUNNEL = (1, 180, 180, 9)


async def test_accepted_and_dialled_hbone_sockets_have_keepalive(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        inc.accept()

    srv = await make_server(handler)
    key = key_for(mesh, srv)
    t = await pool.open(key, "10.0.0.1:80")
    await eventually(lambda: len(srv.connections) == 1)
    (server_side,) = srv.connections
    client_side = pool._conns[key][0].proto
    assert server_side.transport is not None
    assert client_side is not None
    assert client_side.transport is not None
    assert keepalive_of(server_side.transport.get_extra_info("socket")) == ZTUNNEL
    assert keepalive_of(client_side.transport.get_extra_info("socket")) == ZTUNNEL
    t.close()


def test_set_keepalive_on_a_plain_socket_and_not_on_unix_sockets() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        set_keepalive(s)
        assert keepalive_of(s) == ZTUNNEL
    a, b = socket.socketpair()
    with a, b:
        set_keepalive(a)  # not TCP: left alone, no error
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
