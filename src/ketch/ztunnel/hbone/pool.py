"""HBONE client connection pool: reuse mTLS HTTP/2 connections for many tunnels.

Key = (source identity, destination identities, destination address), as in ztunnel: a
connection is only shared by tunnels that would present the same client certificate and
accept the same server identities. One connection carries up to `max_streams` (100) tunnels,
capped by the peer's MAX_CONCURRENT_STREAMS; when all are busy a new connection is dialled.
Assignment is decided synchronously (no awaits between looking and reserving), so
concurrent `open()`s never overshoot a connection; callers that find a connection still
dialling wait for it instead of dialling their own.

Connections are released after `idle_timeout` (5 min) without tunnels, kept alive with
PING every 10 s (20 s timeout), and stop taking tunnels when the peer sends GOAWAY.
The TCP socket is made by the caller's `connect` callable, so it can be created inside a pod
network namespace with SO_MARK; the default dials `dst_addr` from the current namespace.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ketch.identity.spiffe import SpiffeId
from ketch.util.tasks import spawn
from ketch.ztunnel.hbone.driver import H2Protocol
from ketch.ztunnel.hbone.errors import (
    ConnectionClosedError,
    ConnectRefused,
    ErrorCode,
    HboneError,
    HboneTimeout,
    StreamResetError,
    TlsError,
    UsageError,
)
from ketch.ztunnel.hbone.proto import Role
from ketch.ztunnel.hbone.sockopts import set_keepalive
from ketch.ztunnel.hbone.tls import verify_server
from ketch.ztunnel.hbone.tunnel import Tunnel

log = logging.getLogger("ketch.ztunnel.hbone.pool")

Connector = Callable[[], Awaitable[socket.socket]]


class UpstreamConnectError(HboneError):
    """The TCP connection or TLS handshake to the HBONE peer failed."""


@dataclass(frozen=True)
class PoolKey:
    src_identity: SpiffeId
    dst_identities: tuple[SpiffeId, ...]
    dst_addr: tuple[str, int]  # the peer's HBONE endpoint, e.g. ("10.0.1.5", 15008)


@dataclass(eq=False)
class _Conn:
    key: PoolKey
    ready: asyncio.Future[H2Protocol]
    proto: H2Protocol | None = None
    reserved: int = 0  # open() calls between checkout and tunnel registration
    idle: asyncio.TimerHandle | None = None
    dead: bool = False
    tunnels_opened: int = field(default=0)

    def capacity(self, max_streams: int) -> int:
        if self.dead:
            return 0
        p = self.proto
        if p is None:
            return max_streams - self.reserved
        if p.closed or not p.conn.can_open_stream():
            return 0
        limit = min(max_streams, p.conn.peer_max_streams)
        return limit - len(p.tunnels) - self.reserved


async def _default_connect(addr: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio: NODELAY
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


class HboneClientPool:
    """Opens HBONE tunnels over pooled connections. `client_tls(src_identity)` returns the
    TLS client context holding that workload's certificate (see tls.client_context)."""

    def __init__(
        self,
        client_tls: Callable[[SpiffeId], ssl.SSLContext],
        *,
        max_streams: int = 100,
        idle_timeout: float = 300.0,
        ping_interval: float | None = 10.0,
        ping_timeout: float = 20.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._client_tls = client_tls
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self._conns: dict[PoolKey, list[_Conn]] = {}
        self._closed = False

    def connections(self, key: PoolKey | None = None) -> int:
        """Live (or dialling) connections, for one key or all."""
        if key is not None:
            return len(self._conns.get(key, ()))
        return sum(len(v) for v in self._conns.values())

    async def open(
        self,
        key: PoolKey,
        authority: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        connect: Connector | None = None,
    ) -> Tunnel:
        """Open a tunnel to `authority` ("ip:port") through the HBONE peer `key.dst_addr`.

        Returns once the peer answered 200. Raises ConnectRefused (other statuses),
        UpstreamConnectError / TlsError / IdentityMismatch (dial failed), HboneTimeout.
        """
        hdrs = tuple(headers)
        for attempt in range(3):
            c = self._checkout(key, connect)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    p = await asyncio.shield(c.ready)
            except TimeoutError:
                c.reserved -= 1
                raise HboneTimeout(
                    f"HBONE connect to {key.dst_addr[0]}:{key.dst_addr[1]} timed out after "
                    f"{self.connect_timeout:g}s; is port 15008 reachable?"
                ) from None
            except BaseException:
                c.reserved -= 1
                raise
            c.reserved -= 1
            try:
                sid = p.conn.connect(authority, hdrs)
            except (UsageError, ConnectionClosedError):
                continue  # raced with GOAWAY / a lower peer limit: pick or dial another
            t = Tunnel(p, sid, authority)
            p.add_tunnel(t)
            c.tunnels_opened += 1
            self._busy(c)
            p.flush()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    status = await t.wait_response()
            except TimeoutError:
                t.abort(ErrorCode.CANCEL)
                raise HboneTimeout(
                    f"HBONE CONNECT {authority} via {key.dst_addr[0]}:{key.dst_addr[1]}: no "
                    f"response within {self.connect_timeout:g}s"
                ) from None
            except StreamResetError as e:
                if e.code == ErrorCode.REFUSED_STREAM and attempt < 2:
                    continue  # never processed by the peer (GOAWAY/limit): safe to retry
                raise
            except asyncio.CancelledError:
                t.abort(ErrorCode.CANCEL)
                raise
            if status != 200:
                t.close()
                raise ConnectRefused(authority, status)
            return t
        raise ConnectionClosedError(
            f"HBONE peer {key.dst_addr[0]}:{key.dst_addr[1]} keeps refusing new streams"
        )

    def _checkout(self, key: PoolKey, connect: Connector | None) -> _Conn:
        """Pick a connection with a free stream slot, or start dialling one (no awaits)."""
        if self._closed:
            raise ConnectionClosedError("HBONE client pool is closed")
        conns = self._conns.setdefault(key, [])
        for c in conns:
            if c.capacity(self.max_streams) > 0:
                c.reserved += 1
                return c
        loop = asyncio.get_running_loop()
        c = _Conn(key, loop.create_future())
        c.reserved = 1
        conns.append(c)
        spawn(self._dial(c, connect), name=f"hbone-dial-{key.dst_addr}")
        return c

    async def _dial(self, c: _Conn, connect: Connector | None) -> None:
        key = c.key
        loop = asyncio.get_running_loop()
        where = f"{key.dst_addr[0]}:{key.dst_addr[1]}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                try:
                    sock = await (
                        connect() if connect is not None else _default_connect(key.dst_addr)
                    )
                except OSError as e:
                    raise UpstreamConnectError(
                        f"cannot reach HBONE peer {where}: {e}; is port 15008 blocked between nodes?"
                    ) from e
                try:
                    set_keepalive(sock)
                except OSError as e:  # not fatal: the TLS handshake will tell
                    log.debug("HBONE dial %s: cannot set TCP keepalive: %s", where, e)
                try:
                    ctx = self._client_tls(key.src_identity)
                except HboneError:
                    sock.close()
                    raise
                except Exception as e:  # caller-supplied callback: translate at the boundary
                    sock.close()
                    raise TlsError(
                        f"no client TLS context for {key.src_identity}: {e}; "
                        "is the workload certificate available?"
                    ) from e
                try:
                    transport, p = await loop.create_connection(
                        lambda: H2Protocol(
                            Role.CLIENT,
                            ping_interval=self.ping_interval,
                            ping_timeout=self.ping_timeout,
                            settings_timeout=self.connect_timeout,
                        ),
                        sock=sock,
                        ssl=ctx,
                        server_hostname="",  # no SNI (HBONE); identities are checked below
                        ssl_handshake_timeout=self.connect_timeout,
                    )
                except ssl.SSLError as e:
                    sock.close()
                    detail = getattr(e, "verify_message", None) or e.reason or str(e)
                    raise TlsError(
                        f"TLS handshake with HBONE peer {where} failed ({detail}); "
                        "does it share our trust roots and present a valid workload certificate?"
                    ) from e
                except OSError as e:
                    sock.close()
                    raise UpstreamConnectError(
                        f"HBONE peer {where} dropped the connection: {e}"
                    ) from e
            try:
                p.peer_identity = verify_server(
                    transport.get_extra_info("ssl_object"), key.dst_identities
                )
            except TlsError:
                p.abort(ConnectionClosedError("peer identity rejected"))
                raise
        except TimeoutError:
            self._dial_failed(
                c,
                HboneTimeout(f"HBONE connect to {where} timed out after {self.connect_timeout:g}s"),
            )
            return
        except HboneError as e:
            log.warning("HBONE dial %s failed: %s", where, e)
            self._dial_failed(c, e)
            return
        except asyncio.CancelledError:
            self._dial_failed(c, ConnectionClosedError(f"HBONE dial to {where} aborted"))
            raise
        c.proto = p
        p.on_idle = lambda _p: self._idle(c)
        p.on_closed = lambda _p: self._remove(c)
        if p.closed:
            self._remove(c)
        c.ready.set_result(p)
        if not p.tunnels and not c.reserved:
            self._idle(c)

    def _dial_failed(self, c: _Conn, exc: HboneError) -> None:
        self._remove(c)
        if not c.ready.done():
            c.ready.set_exception(exc)
            c.ready.exception()  # mark retrieved: there may be no waiter left

    def _remove(self, c: _Conn) -> None:
        c.dead = True
        if c.idle is not None:
            c.idle.cancel()
            c.idle = None
        conns = self._conns.get(c.key)
        if conns is not None and c in conns:
            conns.remove(c)
            if not conns:
                del self._conns[c.key]

    def _busy(self, c: _Conn) -> None:
        if c.idle is not None:
            c.idle.cancel()
            c.idle = None

    def _idle(self, c: _Conn) -> None:
        if c.idle is not None or c.dead:
            return
        c.idle = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, c)

    def _expire(self, c: _Conn) -> None:
        c.idle = None
        p = c.proto
        if p is None or p.tunnels or c.reserved:
            return
        log.debug("HBONE connection to %s idle for %gs; closing", c.key.dst_addr, self.idle_timeout)
        self._remove(c)
        p.goaway()

    async def close(self) -> None:
        """Close every pooled connection (tunnels on them fail)."""
        self._closed = True
        protos = [c.proto for cs in self._conns.values() for c in cs if c.proto is not None]
        for cs in list(self._conns.values()):
            for c in list(cs):
                self._remove(c)
        for p in protos:
            p.goaway()
            p.close()
        for p in protos:
            await p.wait_lost()
