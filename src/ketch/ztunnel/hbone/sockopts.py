"""Socket options for proxied TCP connections: TCP keepalive as ztunnel sets it.

ztunnel enables keepalive on every socket it proxies, HBONE and pod sockets alike
(zt:src/config.rs, zt:src/socket.rs): first probe after 180 s idle, then every 180 s,
9 unanswered probes drop the connection. Long idle flows through NAT gateways and load
balancers otherwise vanish silently. `set_keepalive()` is applied by the HBONE server to
accepted sockets and by the client pool to dialled ones; other listeners can reuse it for
their pod-side sockets. It works on plain sockets and on asyncio's TransportSocket.
"""

from __future__ import annotations

import socket
from typing import Final, Protocol

KEEPALIVE_IDLE: Final = 180  # seconds idle before the first probe (TCP_KEEPIDLE)
KEEPALIVE_INTERVAL: Final = 180  # seconds between probes (TCP_KEEPINTVL)
KEEPALIVE_COUNT: Final = 9  # unanswered probes before the connection is dropped


class _Sock(Protocol):
    @property
    def family(self) -> int: ...
    @property
    def type(self) -> int: ...
    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


def set_keepalive(
    sock: _Sock,
    *,
    idle: int = KEEPALIVE_IDLE,
    interval: int = KEEPALIVE_INTERVAL,
    count: int = KEEPALIVE_COUNT,
) -> None:
    """Enable TCP keepalive with ztunnel's timing; a no-op for non-TCP sockets.
    Raises OSError if the kernel refuses an option."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
