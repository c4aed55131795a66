"""Hostile HBONE peers over real mTLS on loopback: rapid reset, control-frame floods,
slow prefaces. A raw HTTP/2 client (frames written by hand) attacks a real `HboneServer`
whose handler dials a real upstream listener, as the inbound listener does; the tests
count the upstream connections the attack caused and check that honest clients on other
connections are still served and that nothing is logged with a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

import hpack
import pytest

from ketch.util.tasks import spawn
from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.errors import ErrorCode, ProtocolError
from ketch.ztunnel.hbone.headers import parse_authority
from ketch.ztunnel.hbone.pool import HboneClientPool
from ketch.ztunnel.hbone.server import HboneServer, IncomingConnect
from ketch.ztunnel.hbone.tcp_relay import relay
from tests.unit.ztunnel.hbone.conftest import (
    TD,
    Mesh,
    ServerFactory,
    eventually,
    key_for,
    listening_socket,
)

pytestmark = pytest.mark.timeout(60)

_RST = struct.Struct(">L")


class Upstream:
    """A plain TCP "app" that counts the connections it accepts."""

    def __init__(self) -> None:
        self.accepts = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def dial_and_relay(inc: IncomingConnect) -> None:
    """What the inbound listener does: connect to the app first, then answer 200."""
    auth = parse_authority(inc.info.authority)
    reader, writer = await asyncio.open_connection(str(auth.ip), auth.port)
    await relay(inc.accept(), reader, writer)


class RawPeer:
    """An HTTP/2 client over mTLS that writes whatever frames a test gives it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.enc = hpack.Encoder()

    @classmethod
    async def connect(cls, mesh: Mesh, srv: HboneServer) -> RawPeer:
        ctx = mesh.client_ctx(mesh.client_id)
        r, w = await asyncio.open_connection(*srv.address, ssl=ctx, server_hostname="")
        w.write(proto.PREFACE + proto.frame(proto.SETTINGS, 0, 0))
        return cls(r, w)

    def connect_frame(self, sid: int, authority: str) -> bytes:
        block = self.enc.encode([(":method", "CONNECT"), (":authority", authority)])
        return proto.frame(proto.HEADERS, proto.FLAG_END_HEADERS, sid, block)

    async def send(self, data: bytes) -> bool:
        """Write; False once the server has closed the connection."""
        if self.writer.is_closing():
            return False
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), 5)
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def frames_until_eof(self, within: float = 10.0) -> list[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) of every frame until the server closes."""
        out = []
        async with asyncio.timeout(within):
            while True:
                try:
                    hdr = await self.reader.readexactly(9)
                    payload = await self.reader.readexactly(int.from_bytes(hdr[:3], "big"))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return out
                out.append((hdr[3], hdr[4], int.from_bytes(hdr[5:9], "big") & 0x7FFFFFFF, payload))

    def close(self) -> None:
        self.writer.close()


def goaway_codes(frames: list[tuple[int, int, int, bytes]]) -> list[int]:
    return [int.from_bytes(p[4:8], "big") for t, _, _, p in frames if t == proto.GOAWAY]


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


async def honest_client_works(mesh: Mesh, srv: HboneServer, up: Upstream | None = None) -> None:
    """A well-behaved client on its own connection gets a working tunnel to `up`."""
    own = up is None
    app = Upstream() if up is None else up
    assert app.server is not None or own
    target = await app.start() if own else _addr(app)
    pool = HboneClientPool(mesh.client_ctx, connect_timeout=5.0)
    try:
        t = await pool.open(key_for(mesh, srv), target)
        await t.write(b"ping")
        assert await t.read() == b"ping"
        t.close()
    finally:
        await pool.close()
        if own:
            app.close()


def _addr(up: Upstream) -> str:
    assert up.server is not None
    return f"127.0.0.1:{up.server.sockets[0].getsockname()[1]}"


# ---------------------------------------------------------------------------------------
# Rapid reset (CVE-2023-44487)
# ---------------------------------------------------------------------------------------


async def test_rapid_reset_makes_no_upstream_connections_and_gets_enhance_your_calm(
    mesh: Mesh, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    attacked, spare = Upstream(), Upstream()
    target = await attacked.start()
    await spare.start()
    srv = await make_server(dial_and_relay)
    peer = await RawPeer.connect(mesh, srv)
    try:
        sid = 1
        for _ in range(40):  # up to 40 x 100 = 4000 streams, each reset at once
            batch = bytearray()
            for _ in range(100):
                batch += peer.connect_frame(sid, target)
                batch += proto.frame(proto.RST_STREAM, 0, sid, _RST.pack(ErrorCode.CANCEL))
                sid += 2
            if not await peer.send(bytes(batch)):
                break
        frames = await peer.frames_until_eof()
        assert ErrorCode.ENHANCE_YOUR_CALM in goaway_codes(frames)
        # Well before the 4000 streams were sent, the server hung up.
        assert sid < 4000
        await honest_client_works(mesh, srv, spare)
        await asyncio.sleep(0.2)  # anything the attack started would have connected by now
        assert attacked.accepts <= 5, attacked.accepts
        assert spare.accepts == 1
        await eventually(lambda: not srv._handlers)
        assert_no_traceback(caplog)
    finally:
        peer.close()
        attacked.close()
        spare.close()


async def test_reset_before_decision_cancels_the_upstream_connect(
    mesh: Mesh, make_server: ServerFactory
) -> None:
    """A reset that arrives while the handler is still deciding cancels the handler."""
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow_decision(inc: IncomingConnect) -> None:
        started.set()
        try:
            await asyncio.sleep(30)  # a slow policy lookup / app connect
        except asyncio.CancelledError:
            cancelled.set()
            raise
        inc.accept()

    srv = await make_server(slow_decision)
    peer = await RawPeer.connect(mesh, srv)
    try:
        await peer.send(peer.connect_frame(1, "10.0.0.1:80"))
        await asyncio.wait_for(started.wait(), 5)
        await peer.send(proto.frame(proto.RST_STREAM, 0, 1, _RST.pack(ErrorCode.CANCEL)))
        await asyncio.wait_for(cancelled.wait(), 5)
        await eventually(lambda: not srv._handlers)
    finally:
        peer.close()


async def test_occasional_resets_are_tolerated(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    """Clients that cancel some CONNECTs (fewer than half) keep their connection."""
    up = Upstream()
    target = await up.start()
    srv = await make_server(dial_and_relay)
    key = key_for(mesh, srv)
    try:
        for i in range(30):
            t = await pool.open(key, target)
            if i % 3 == 0:
                t.close()  # RST_STREAM(CANCEL) right after the 200
                continue
            await t.write(b"x")
            assert await t.read() == b"x"
            t.close()
        assert pool.connections(key) == 1
        assert len(srv.connections) == 1
    finally:
        up.close()


# ---------------------------------------------------------------------------------------
# Control-frame floods
# ---------------------------------------------------------------------------------------


async def test_ping_flood_from_a_peer_that_never_reads_is_cut_off(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """The attacker sends PINGs and never reads the ACKs: the server's output is bounded
    (MAX_UNSENT_CONTROL past its transport's high-water mark) and the connection dropped."""
    caplog.set_level(logging.INFO)
    lsock = listening_socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # fill up quickly
    srv = HboneServer(lsock, mesh.server_ctx(), TD, echo_handler)
    await srv.start()
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, srv.address)
    ctx = mesh.client_ctx(mesh.client_id)
    r, w = await asyncio.open_connection(sock=raw, ssl=ctx, server_hostname="")
    peer = RawPeer(r, w)
    try:
        await peer.send(proto.PREFACE + proto.frame(proto.SETTINGS, 0, 0))
        await eventually(lambda: len(srv.connections) == 1)
        (conn,) = srv.connections
        pings = b"".join(proto.frame(proto.PING, 0, 0, i.to_bytes(8, "big")) for i in range(2000))
        for _ in range(2000):  # up to 68 MB; the server gives up long before
            if conn.closed or not await peer.send(pings):
                break
        await eventually(lambda: conn.closed and not srv.connections, within=10)
        assert isinstance(conn.close_reason, ProtocolError)
        assert conn.close_reason.code == ErrorCode.ENHANCE_YOUR_CALM
        assert "ENHANCE_YOUR_CALM" in caplog.text
        await honest_client_works(mesh, srv)
        assert_no_traceback(caplog)
    finally:
        peer.close()
        await srv.close(drain_timeout=0.5)


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(
            proto.frame(proto.SETTINGS, 0, 0, struct.pack(">HL", 3, 100) * 100),
            id="settings-with-100-entries",
        ),
        pytest.param(
            proto.frame(proto.HEADERS, 0, 1, b"\x82")
            + proto.frame(proto.CONTINUATION, 0, 1) * 10_000,
            id="empty-continuations",
        ),
        pytest.param(proto.frame(proto.SETTINGS, 0, 0) * 5000, id="settings-flood"),
    ],
)
async def test_control_frame_abuse_gets_goaway_enhance_your_calm(
    mesh: Mesh, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, attack: bytes
) -> None:
    caplog.set_level(logging.INFO)
    srv = await make_server(echo_handler)
    peer = await RawPeer.connect(mesh, srv)
    try:
        await peer.send(attack)
        frames = await peer.frames_until_eof()
        assert goaway_codes(frames)[-1:] == [ErrorCode.ENHANCE_YOUR_CALM]
        await eventually(lambda: not srv.connections)
        await honest_client_works(mesh, srv)
        assert_no_traceback(caplog)
    finally:
        peer.close()


async def echo_handler(inc: IncomingConnect) -> None:
    await dial_and_relay(inc)


def _sock_of(srv: HboneServer) -> socket.socket:
    (p,) = srv.connections
    assert p.transport is not None
    sock = p.transport.get_extra_info("socket")
    assert sock is not None
    return sock  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------
# Slow preface
# ---------------------------------------------------------------------------------------


async def test_slow_tls_then_dripped_preface_is_closed_at_the_handshake_deadline(
    mesh: Mesh, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """One deadline covers TLS + preface + SETTINGS, counted from accept: a client that
    takes most of it for TLS and then drips the preface byte by byte is cut off on time."""
    caplog.set_level(logging.INFO)
    deadline = 1.0
    srv = await make_server(echo_handler, handshake_timeout=deadline)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection(*srv.address)
    await asyncio.sleep(0.6)  # slow to start TLS, but within the deadline
    await writer.start_tls(mesh.client_ctx(mesh.client_id), server_hostname="")

    async def drip() -> None:
        for b in proto.PREFACE:
            writer.write(bytes([b]))
            await asyncio.sleep(0.05)

    dripping = spawn(drip(), name="drip")
    try:
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass  # the server's SETTINGS, then nothing until it hangs up
        elapsed = loop.time() - started
        assert deadline - 0.1 <= elapsed < deadline + 0.4, elapsed
        assert not srv.connections
        assert_no_traceback(caplog)
    finally:
        dripping.cancel()
        writer.close()


# ---------------------------------------------------------------------------------------
# Memory held for an attacker stays bounded
# ---------------------------------------------------------------------------------------


async def test_reset_streams_leave_no_state_behind(mesh: Mesh, make_server: ServerFactory) -> None:
    """Streams reset before an answer (below the rapid-reset budget) leave no tunnel, no
    stream entry, no handler task and no pending decision timer on the server."""
    loop = asyncio.get_running_loop()
    scheduled = getattr(loop, "_scheduled", None)  # asyncio's timer heap (not on uvloop)
    up = Upstream()
    target = await up.start()
    srv = await make_server(dial_and_relay, decision_timeout=30.0)
    peer = await RawPeer.connect(mesh, srv)
    try:
        await eventually(lambda: len(srv.connections) == 1)
        (conn,) = srv.connections
        timers_before = len(scheduled) if scheduled is not None else 0
        n = proto.PREMATURE_RESET_MIN_STREAMS - 50
        batch = bytearray()
        for i in range(n):
            sid = 2 * i + 1
            batch += peer.connect_frame(sid, target)
            batch += proto.frame(proto.RST_STREAM, 0, sid, _RST.pack(ErrorCode.CANCEL))
        assert await peer.send(bytes(batch))
        await eventually(lambda: conn.conn.peer_streams == n)
        await asyncio.sleep(0.1)
        assert not conn.closed
        assert conn.conn.open_streams == 0
        assert not conn.tunnels
        assert not srv._handlers
        assert up.accepts == 0
        if scheduled is not None:
            assert len(scheduled) <= timers_before + 5
    finally:
        peer.close()
        up.close()
