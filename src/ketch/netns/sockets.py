"""Sockets that live inside a pod's network namespace (ztunnel's in-pod model).

The node proxy holds one netns fd per enrolled pod (handed over by the node agent) and opens
its listeners on 15001/15006/15008 and its outbound connections *inside* the pod netns. Every
such socket carries SO_MARK 0x539, which the pod's redirection rules recognise so the
proxy's own traffic is never redirected back to itself. Listeners use SO_REUSEPORT so a new
proxy can bind next to the old one during an upgrade (REFERENCE.md "Reliability").

Upgrade handoff: plain SO_REUSEPORT spreads new connections over both proxies by hash, and
when the old one closes its listener, connections still in its accept queue are reset
(or, with `net.ipv4.tcp_migrate_req=1`, moved to the new listener's queue *without waking
it*, so they can hang until the next connection arrives). So every listener also attaches
a one-instruction classic BPF program to its reuseport group that picks socket index 1:
with one proxy bound the index is out of range and the kernel falls back to the usual hash
(that proxy); once a second proxy binds, every new connection goes to it, the newest, and
the old proxy's queue empties before it closes.

Dual stack: listeners bind ``::`` with IPV6_V6ONLY=0 by default (as ztunnel binds ``[::]``),
so the ip6tables REDIRECTs (to ::1) and the iptables ones (to 127.0.0.1) land on the same
listener. IPv4 connections on such a socket show up as v4-mapped IPv6 (``::ffff:a.b.c.d``);
`canonical_ip` turns those back into plain IPv4 (ztunnel's ``to_canonical``) and
`original_dst` returns canonical addresses, so routing, policy and the HBONE authority
check see the same address whichever listener accepted the connection. A kernel without
IPv6 gets an IPv4-only ``0.0.0.0`` listener instead.

All sockets returned here are non-blocking, ready for `loop.sock_accept`/`sock_connect` or
`asyncio.start_server(sock=...)`. The socket is created on a short-lived thread that
entered the netns (see `enter.py`); it stays in that netns after the thread is gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import socket
import struct
from typing import Any

from ketch.netns.constants import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    PROXY_MARK,
)
from ketch.netns.enter import NetnsRef, in_netns, run_in_netns
from ketch.netns.errors import NetnsError, NoOriginalDestination

# <linux/netfilter_ipv4.h> SO_ORIGINAL_DST and <linux/netfilter_ipv6/ip6_tables.h>
# IP6T_SO_ORIGINAL_DST: both 80, at SOL_IP and SOL_IPV6 respectively.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
# <linux/in.h>, <linux/in6.h>
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SO_MARK = getattr(socket, "SO_MARK", 36)

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>

#: Bind address of a dual-stack listener (IPv6 any, IPV6_V6ONLY=0: IPv4 too).
DUAL_STACK = "::"
IPV4_ANY = "0.0.0.0"


class _SockFilter(ctypes.Structure):  # struct sock_filter, <linux/filter.h>
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return the constant k
# kept alive at module level: the fprog below points into it
_PICK_NEWEST = (_SockFilter * 1)(_SockFilter(_BPF_RET_K, 0, 0, 1))
_PICK_NEWEST_PROG = bytes(_SockFprog(1, ctypes.cast(_PICK_NEWEST, ctypes.POINTER(_SockFilter))))


def steer_to_newest(sock: socket.socket) -> bool:
    """Attach the reuseport program described in the module docstring to `sock`'s group.
    False if the kernel refused (pre-4.5): then both proxies share new connections."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, _PICK_NEWEST_PROG)
    except OSError:
        return False
    return True


_SOCKADDR_IN = struct.Struct("!2xH4s8x")  # family (host order, skipped), port, addr, zero
_SOCKADDR_IN6 = struct.Struct("!2xHI16sI")  # family, port, flowinfo, addr, scope id


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical_ip(ip: str) -> IpAddress:
    """`ip` parsed, with a v4-mapped IPv6 address (``::ffff:10.0.0.1``, how a dual-stack
    socket reports an IPv4 peer) turned into the plain IPv4 address."""
    if ip.startswith("::ffff:") and "." in ip:  # how sockets print it: skip the v6 parse
        return ipaddress.IPv4Address(ip[7:])
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:  # any other spelling
        return addr.ipv4_mapped
    return addr


def _is_ipv4(host: str) -> bool:
    """Is this socket-reported address IPv4, plain or v4-mapped? A string test, no parsing:
    the kernel always prints mapped addresses as ``::ffff:a.b.c.d``."""
    return ":" not in host or (host.startswith("::ffff:") and "." in host)


def _family_of(ip: str) -> socket.AddressFamily:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise NetnsError(f"{ip!r} is not an IP address") from None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def _new_socket(family: socket.AddressFamily, mark: int, transparent: bool) -> socket.socket:
    # proto=IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on transports whose socket
    # says IPPROTO_TCP (accepted sockets copy the listener's), and Nagle plus delayed ACKs
    # cost ~40 ms per hop on request/response traffic. We set it here as well.
    # Keepalive as ztunnel: on a listener these options are copied into every accepted
    # socket by the kernel (sk_clone), so only dialled sockets pay the four setsockopts.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        if transparent:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        hint = " (needs CAP_NET_ADMIN: run as root)" if exc.errno == errno.EPERM else ""
        raise NetnsError(
            f"cannot set the options of a pod socket (TCP_NODELAY, keepalive, SO_MARK, "
            f"transparent): {exc}{hint}"
        ) from exc
    return sock


def _make_listener(ip: str, port: int, transparent: bool, backlog: int, mark: int) -> socket.socket:
    family = _family_of(ip)
    try:
        sock = _new_socket(family, mark, transparent)
    except OSError as exc:
        if ip != DUAL_STACK or exc.errno != errno.EAFNOSUPPORT:
            raise
        # kernel without IPv6 (ipv6.disable=1): IPv4 is all there is to capture
        ip, sock = IPV4_ANY, _new_socket(socket.AF_INET, mark, transparent)
    try:
        if ip == DUAL_STACK:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise NetnsError(f"cannot listen on {ip}:{port} inside the pod netns: {exc}") from exc
    steer_to_newest(sock)
    return sock


def pod_listener(
    netns: NetnsRef,
    port: int,
    *,
    ip: str = DUAL_STACK,
    transparent: bool = False,
    backlog: int = 1024,
    mark: int = PROXY_MARK,
) -> socket.socket:
    """A non-blocking TCP listener on ip:port inside `netns`, with SO_REUSEADDR,
    SO_REUSEPORT and SO_MARK `mark` (accepted sockets inherit the mark).
    The default `ip` ``::`` is dual-stack (IPv4 and IPv6; see the module docstring).
    `transparent` sets IP_TRANSPARENT (accept for non-local addresses)."""
    return in_netns(netns, _make_listener, ip, port, transparent, backlog, mark)


async def pod_listener_async(
    netns: NetnsRef,
    port: int,
    *,
    ip: str = DUAL_STACK,
    transparent: bool = False,
    backlog: int = 1024,
    mark: int = PROXY_MARK,
) -> socket.socket:
    """`pod_listener` without blocking the event loop."""
    return await run_in_netns(netns, _make_listener, ip, port, transparent, backlog, mark)


def _make_connect_socket(
    family: socket.AddressFamily,
    transparent: bool,
    source: tuple[str, int] | None,
    mark: int,
) -> socket.socket:
    sock = _new_socket(family, mark, transparent)
    if source is not None:
        try:
            sock.bind(source)
        except OSError as exc:
            sock.close()
            raise NetnsError(
                f"cannot bind outbound pod socket to {source[0]}:{source[1]}: {exc}"
            ) from exc
    return sock


def pod_connect_socket(
    netns: NetnsRef,
    *,
    family: socket.AddressFamily = socket.AF_INET,
    transparent: bool = False,
    source: tuple[str, int] | None = None,
    mark: int = PROXY_MARK,
) -> socket.socket:
    """An unconnected, non-blocking TCP socket inside `netns` marked with SO_MARK `mark`, for
    connections the proxy makes from inside the pod (HBONE to a peer's 15008, passthrough).
    The mark makes the pod's rules leave it alone. Optionally bound to `source`
    (with `transparent=True` the source may be a non-local address)."""
    return in_netns(netns, _make_connect_socket, family, transparent, source, mark)


async def pod_connect(
    netns: NetnsRef,
    address: tuple[str, int],
    *,
    connect_timeout: float = 10.0,
    transparent: bool = False,
    source: tuple[str, int] | None = None,
    mark: int = PROXY_MARK,
) -> socket.socket:
    """Connect from inside `netns` to `address` with a marked socket; returns the connected
    non-blocking socket (hand it to `asyncio.open_connection(sock=...)`)."""
    family = _family_of(address[0])
    sock = await run_in_netns(netns, _make_connect_socket, family, transparent, source, mark)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def socket_mark(sock: socket.socket) -> int:
    """The SO_MARK of `sock`."""
    return sock.getsockopt(socket.SOL_SOCKET, SO_MARK)


def original_dst(sock: socket.socket, peer: tuple[Any, ...] | None = None) -> tuple[str, int]:
    """The destination a redirected (REDIRECT/DNAT) connection was addressed to before the
    pod's nat rules rewrote it, from conntrack via SO_ORIGINAL_DST (IPv4) or
    IP6T_SO_ORIGINAL_DST (SOL_IPV6, IPv6). The address is canonical: IPv4 connections
    accepted on a dual-stack socket report plain IPv4, never ``::ffff:a.b.c.d``.

    `peer` is the connection's peer address if the caller already has it (asyncio's
    ``peername``): on an AF_INET6 socket it tells which of the two lookups applies, so
    each connection costs one getsockopt. Without it the IPv6 lookup is tried first and
    an IPv4 connection pays for one failed call.

    conntrack answers for every tracked connection: one that was not rewritten reports the
    address it was made to (the socket's own local address). `NoOriginalDestination` is
    raised when conntrack has no entry at all (no nat rules ever loaded in that netns)."""
    v4 = (socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
    v6 = (socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
    attempts: tuple[tuple[int, int, struct.Struct], ...]
    if sock.family != socket.AF_INET6:
        attempts = (v4,)
    elif peer is None:
        attempts = (v6, v4)
    elif _is_ipv4(str(peer[0])):
        # An AF_INET6 socket carrying an IPv4 connection (v4-mapped): conntrack has it as v4
        attempts = (v4,)
    else:
        attempts = (v6,)
    last: OSError | None = None
    for level, opt, layout in attempts:
        try:
            raw = sock.getsockopt(level, opt, layout.size)
        except OSError as exc:
            last = exc
            continue
        if layout is _SOCKADDR_IN6:
            port, _flow, addr, _scope = layout.unpack(raw[: layout.size])
            addr6 = ipaddress.IPv6Address(addr)
            return str(addr6.ipv4_mapped or addr6), port
        port, addr4 = layout.unpack(raw[: layout.size])
        return str(ipaddress.IPv4Address(addr4)), port
    try:
        where = peer or sock.getpeername()
    except OSError:
        where = "?"
    raise NoOriginalDestination(
        f"connection from {where} has no original destination "
        f"({last.strerror if last else 'unknown'}): conntrack does not know it, so it was not "
        "redirected by the pod's nat rules (are the in-pod rules installed in this pod?)"
    )
