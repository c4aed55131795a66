"""HBONE server: accepts mTLS HTTP/2 connections on a caller-made listening socket.

The socket is created by the caller (the inbound listener on 15008, usually inside a pod's
network namespace); this module only accepts on it. Each connection goes through an
explicit TLS handshake (so failures are logged with the peer address and reason), the
client's SPIFFE identity is checked against our trust domain, and every valid CONNECT is
handed to the `handler` coroutine as an `IncomingConnect`, which either `refuse()`s it with a
status (401 denied, 503 unreachable, ...) or `accept()`s it and gets a `Tunnel`.
Malformed requests (not CONNECT, bad authority) are answered 400 without calling the handler.

Hostile clients: one deadline (`handshake_timeout`) covers TLS, the HTTP/2 preface and the
client's first SETTINGS, counted from accept. A CONNECT the client resets before we answer
it cancels its handler task (and with it any app connection still being made); streams
reset in the same read never reach the handler at all. Connection-level abuse (rapid
reset, control-frame floods) is detected by the HTTP/2 core (see `proto`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import cast

from ketch.identity.spiffe import SpiffeId
from ketch.util.tasks import spawn
from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.driver import H2Protocol
from ketch.ztunnel.hbone.errors import HboneError, TlsError, UsageError
from ketch.ztunnel.hbone.headers import Authority
from ketch.ztunnel.hbone.proto import Role
from ketch.ztunnel.hbone.sockopts import set_keepalive
from ketch.ztunnel.hbone.tls import verify_client
from ketch.ztunnel.hbone.tunnel import Tunnel

log = logging.getLogger("ketch.ztunnel.hbone.server")

SockAddr = tuple[str, int]


@dataclass(frozen=True)
class ConnectInfo:
    """What the server knows about an incoming CONNECT, for routing and authorization."""

    authority: str
    headers: proto.Headers
    peer_identity: SpiffeId
    local_addr: SockAddr
    peer_addr: SockAddr
    target: Authority  # the authority, parsed (and validated) once by the CONNECT rules

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class IncomingConnect:
    """One CONNECT awaiting a decision: `accept()` (200) or `refuse(status)`.

    The tunnel exists from the moment the request arrives, so bytes a client sends before
    our 200 (optimistic data) are kept, flow-controlled, until the handler accepts.
    """

    def __init__(self, proto_: H2Protocol, stream_id: int, info: ConnectInfo) -> None:
        self._p = proto_
        self.stream_id = stream_id
        self.info = info
        self._tunnel = Tunnel(proto_, stream_id, info.authority)
        proto_.add_tunnel(self._tunnel)
        self.tunnel: Tunnel | None = None
        self.status: int | None = None
        # Set by the server: the handler task and the decision deadline, both dropped as
        # soon as the CONNECT is answered or the client gave up on it.
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def _decided(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._task = None
        self._tunnel.on_failed = None

    @property
    def decided(self) -> bool:
        return self.status is not None

    def accept(self, headers: Iterable[tuple[str, str]] = ()) -> Tunnel:
        """Answer 200 and return the open tunnel (its reads fail if the client already
        reset the stream)."""
        if self.status is not None:
            raise UsageError(f"HBONE stream {self.stream_id} already answered {self.status}")
        self.status = 200
        self._decided()
        t = self.tunnel = self._tunnel
        if not t.closed:
            self._p.conn.respond(self.stream_id, 200, headers)
            self._p.flush()
            t._on_response(200, ())
        return t

    def refuse(self, status: int) -> None:
        """Answer with an error status (400, 401, 503, ...) and end the stream."""
        if status == 200:
            raise UsageError("refuse() needs a non-200 status; use accept()")
        if self.status is not None:
            return
        self.status = status
        self._decided()
        if not self._tunnel.closed:
            self._p.conn.respond(self.stream_id, status)
            self._p.flush()
            self._tunnel._finish()


Handler = Callable[[IncomingConnect], Awaitable[None]]


class _ServerH2(H2Protocol):
    """The server side of one HBONE connection: the client's identity is checked the moment
    TLS completes, before any HTTP/2 byte is processed (H2Protocol holds early bytes until
    `connection_made`), so no request is ever dispatched for an unverified peer."""

    def __init__(self, server: HboneServer, deadline: float) -> None:
        super().__init__(
            Role.SERVER,
            on_request=server._on_request,
            ping_interval=server._ping_interval,
            ping_timeout=server._ping_timeout,
            settings_timeout=server._handshake_timeout,
        )
        self._server = server
        self._deadline = deadline  # loop time by which the client's SETTINGS must be in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        srv = self._server
        tr = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        try:
            self.peer_identity = verify_client(tr.get_extra_info("ssl_object"), srv._trust_domain)
        except TlsError as e:
            srv.handshake_failures += 1
            log.warning("HBONE connection from %s rejected: %s", tr.get_extra_info("peername"), e)
            tr.abort()
            return
        srv.connections.add(self)
        self.on_closed = srv.connections.discard
        # TLS took part of the handshake deadline; the preface and SETTINGS get the rest.
        self._settings_timeout = max(0.0, self._deadline - self.loop.time())
        super().connection_made(tr)


class HboneServer:
    """Serves HBONE on `sock` (already bound and listening, any network namespace)."""

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLContext,
        trust_domain: str,
        handler: Handler,
        *,
        handshake_timeout: float = 10.0,  # accept -> TLS + preface + SETTINGS, in total
        decision_timeout: float = 10.0,
        ping_interval: float | None = 10.0,
        ping_timeout: float = 20.0,
    ) -> None:
        # `sock` is used as the caller listen()ed it (backlog included): we only accept on it
        self._sock = sock
        self._tls = tls
        self._trust_domain = trust_domain
        self._handler = handler
        self._handshake_timeout = handshake_timeout
        self._decision_timeout = decision_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._accepting: asyncio.Task[None] | None = None
        self.connections: set[H2Protocol] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()
        self.handshake_failures = 0

    @property
    def address(self) -> SockAddr:
        name = self._sock.getsockname()
        return (name[0], name[1])

    async def start(self) -> None:
        self._sock.setblocking(False)
        self._accepting = spawn(self._accept_loop(), name=f"hbone-accept-{self.address}")

    async def _accept_loop(self) -> None:
        """Accept raw TCP and hand each socket to its own TLS handshake task. The socket is
        given to the loop's TLS layer before any byte is read from it (accept-then-start_tls
        loses a ClientHello that arrives before start_tls on uvloop)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("HBONE accept on %s: %s; pausing accepts for 1s", self.address, e)
                    await asyncio.sleep(1.0)
                    continue
                if self._sock.fileno() == -1:  # closed by close()
                    return
                log.warning("HBONE accept on %s failed: %s", self.address, e)
                continue
            deadline = loop.time() + self._handshake_timeout
            task = spawn(self._handshake(conn, deadline), name=f"hbone-handshake-{conn.fileno()}")
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def set_tls(self, tls: ssl.SSLContext) -> None:
        """Use a new context (certificate rotation) for connections accepted from now on."""
        self._tls = tls

    async def close(self, drain_timeout: float = 5.0) -> None:
        """Stop accepting, GOAWAY every connection, wait up to `drain_timeout`, then force."""
        if self._accepting is not None:
            self._accepting.cancel()
        self._sock.close()
        for c in list(self.connections):
            c.goaway()
        if self.connections:
            waits = [c.wait_closed() for c in self.connections]
            _, pending = await asyncio.wait(
                [spawn(w, name="hbone-drain") for w in waits], timeout=drain_timeout
            )
            for t in pending:
                t.cancel()
        conns = list(self.connections)
        for c in conns:
            c.abort(HboneError("HBONE server shut down"))
        for c in conns:
            await c.wait_lost()
        for t in list(self._handshakes):
            t.cancel()
        if self._handshakes:
            await asyncio.wait(list(self._handshakes), timeout=drain_timeout)
        for h in list(self._handlers):
            h.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=drain_timeout)
        if self._accepting is not None:
            await asyncio.wait([self._accepting], timeout=1.0)

    async def _handshake(self, conn: socket.socket, deadline: float) -> None:
        """TLS, then (in `_ServerH2`) the client preface and SETTINGS, all before `deadline`:
        a client that drips its ClientHello or preface byte by byte holds a socket and a
        task for at most `handshake_timeout` (slowloris)."""
        loop = asyncio.get_running_loop()
        try:
            peer = conn.getpeername()
        except OSError:
            peer = None
        try:
            set_keepalive(conn)
        except OSError as e:  # not fatal; if the client is gone the handshake says so
            log.debug("HBONE connection from %s: cannot set TCP keepalive: %s", peer, e)
        try:
            await loop.connect_accepted_socket(
                lambda: _ServerH2(self, deadline),
                conn,
                ssl=self._tls,
                ssl_handshake_timeout=max(0.001, deadline - loop.time()),
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, TimeoutError, ConnectionError) as e:
            conn.close()
            self.handshake_failures += 1
            detail = getattr(e, "verify_message", None) or getattr(e, "reason", None) or repr(e)
            log.warning(
                "HBONE TLS handshake from %s failed (%s); is the client a mesh workload "
                "with a certificate from our CA?",
                peer,
                detail,
            )

    def _on_request(self, p: H2Protocol, ev: proto.ConnectRequest) -> None:
        assert p.transport is not None
        assert p.peer_identity is not None
        local = p.transport.get_extra_info("sockname")
        peer = p.transport.get_extra_info("peername")
        info = ConnectInfo(
            ev.authority,
            ev.headers,
            p.peer_identity,
            (local[0], local[1]),
            (peer[0], peer[1]),
            ev.target,
        )
        inc = IncomingConnect(p, ev.stream_id, info)
        task = spawn(self._run(inc), name=f"hbone-in-{info.peer_addr}-{ev.stream_id}")
        inc._task = task
        inc._deadline = p.loop.call_later(self._decision_timeout, self._decision_overdue, inc)
        inc._tunnel.on_failed = lambda _exc: self._abandoned(inc)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _abandoned(self, inc: IncomingConnect) -> None:
        """The client reset the stream (or the connection died) before we answered: stop
        deciding, so a reset CONNECT never costs an app connection (rapid reset)."""
        task = inc._task
        if inc.decided or task is None:
            return
        inc._decided()
        task.cancel()

    def _decision_overdue(self, inc: IncomingConnect) -> None:
        if not inc.decided:
            log.warning(
                "HBONE CONNECT %s from %s: no accept/refuse within %gs; answering 503",
                inc.info.authority,
                inc.info.peer_identity,
                self._decision_timeout,
            )
            inc.refuse(503)

    async def _run(self, inc: IncomingConnect) -> None:
        try:
            await self._handler(inc)
        except HboneError as e:
            log.info("HBONE stream %s to %s ended: %s", inc.stream_id, inc.info.authority, e)
        finally:
            if not inc.decided:
                inc.refuse(503)
            if inc.tunnel is not None:
                inc.tunnel.close()
