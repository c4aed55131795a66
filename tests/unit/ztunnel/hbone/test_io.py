"""HBONE over real TLS on loopback: tunnels, half-close, pooling, hostile peers."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import hpack
import pytest

from ketch.identity.ca import CertificateAuthority
from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import proto, tls
from ketch.ztunnel.hbone.errors import (
    ConnectRefused,
    ErrorCode,
    HboneError,
    HboneTimeout,
    IdentityMismatch,
    StreamResetError,
    TlsError,
)
from ketch.ztunnel.hbone.pool import HboneClientPool, PoolKey, UpstreamConnectError
from ketch.ztunnel.hbone.server import HboneServer, IncomingConnect
from ketch.ztunnel.hbone.tcp_relay import RelayResult, _relay_streams, _TcpSplice, relay
from ketch.ztunnel.hbone.tunnel import Tunnel
from tests import prereq
from tests.unit.ztunnel.hbone.conftest import (
    TD,
    Mesh,
    ServerFactory,
    eventually,
    key_for,
    listening_socket,
    workload,
)

Relay = Callable[[Tunnel, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[RelayResult]]

pytestmark = pytest.mark.timeout(60)


async def read_all(t: Tunnel) -> bytes:
    out = bytearray()
    while chunk := await t.read():
        out += chunk
    return bytes(out)


async def echo(inc: IncomingConnect) -> None:
    t = inc.accept()
    while chunk := await t.read():
        await t.write(chunk)
    t.write_eof()


async def test_echo_and_identities(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    seen = []

    async def handler(inc: IncomingConnect) -> None:
        seen.append(inc.info)
        await echo(inc)

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.9.8.7:8080", [("forwarded", 'for="10.0.0.1:1234"')])
    assert t.status == 200
    assert t.peer_identity == mesh.server_id
    payload = bytes(range(256)) * 4000
    await t.write(payload)
    t.write_eof()
    assert await read_all(t) == payload
    (info,) = seen
    assert info.authority == "10.9.8.7:8080"
    assert info.peer_identity == mesh.client_id
    assert info.header("forwarded") == 'for="10.0.0.1:1234"'
    assert info.local_addr == srv.address


async def test_half_close_client_first(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        got = await read_all(t)  # until the client's END_STREAM
        for _ in range(3):  # the server keeps talking after the client half-closed
            await t.write(b"len=%d;" % len(got))
        t.write_eof()

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.0.0.2:80")
    await t.write(b"x" * 1000)
    t.write_eof()
    assert await read_all(t) == b"len=1000;" * 3


async def test_server_first_banner_and_server_half_close(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.write(b"220 hello\r\n")
        t.write_eof()  # server is done talking but still listens
        got = await read_all(t)
        assert got == b"QUIT\r\n"

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.0.0.2:25")
    assert await read_all(t) == b"220 hello\r\n"
    await t.write(b"QUIT\r\n")  # client can still send after the server's FIN
    t.write_eof()
    await eventually(lambda: t.closed)


@pytest.mark.parametrize(("status", "hint"), [(401, "denied"), (503, "unreachable")])
async def test_refusal_status(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool, status: int, hint: str
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        inc.refuse(status)

    srv = await make_server(handler)
    with pytest.raises(ConnectRefused, match=hint) as ei:
        await pool.open(key_for(mesh, srv), "10.0.0.3:80")
    assert ei.value.status == status


async def test_bad_authority_is_400(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    called = []

    async def handler(inc: IncomingConnect) -> None:
        called.append(inc)
        inc.refuse(503)

    srv = await make_server(handler)
    for bad in ["example.com:80", "10.0.0.1", "[::1]"]:
        with pytest.raises(ConnectRefused) as ei:
            await pool.open(key_for(mesh, srv), bad)
        assert ei.value.status == 400
    assert called == []
    assert pool.connections() == 1  # the connection survived all three


async def test_handler_crash_answers_503(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        raise HboneError("backend gone")

    srv = await make_server(handler)
    with pytest.raises(ConnectRefused) as ei:
        await pool.open(key_for(mesh, srv), "10.0.0.3:80")
    assert ei.value.status == 503


async def test_thousand_concurrent_streams_checksummed(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        h = hashlib.sha256(await read_all(t)).digest()
        await t.write(h)
        t.write_eof()

    srv = await make_server(handler)
    key = key_for(mesh, srv)

    async def one(i: int) -> None:
        t = await pool.open(key, f"10.0.{i // 250}.{i % 250}:80")
        data = i.to_bytes(4, "big") * (1 + (i * 37) % 3000)
        await t.write(data)
        t.write_eof()
        assert await read_all(t) == hashlib.sha256(data).digest()

    await asyncio.gather(*(one(i) for i in range(1000)))
    assert 10 <= pool.connections(key) <= 12


async def test_pool_reuse_100_then_second_connection(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    release = asyncio.Event()

    async def handler(inc: IncomingConnect) -> None:
        inc.accept()
        await release.wait()

    srv = await make_server(handler)
    key = key_for(mesh, srv)
    tunnels = [await pool.open(key, "10.0.0.1:80") for _ in range(100)]
    assert pool.connections(key) == 1
    assert len(srv.connections) == 1
    extra = await pool.open(key, "10.0.0.1:80")
    assert pool.connections(key) == 2
    assert len(srv.connections) == 2
    # Closing one frees a slot on the first connection: the next open reuses it.
    tunnels[0].close()
    await asyncio.sleep(0)
    await pool.open(key, "10.0.0.1:80")
    assert pool.connections(key) == 2
    release.set()
    extra.close()


async def test_pool_different_keys_do_not_share(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        inc.accept()

    srv = await make_server(handler)
    k1 = key_for(mesh, srv)
    k2 = PoolKey(mesh.client_id, (mesh.server_id, mesh.client_id), srv.address)
    await pool.open(k1, "10.0.0.1:80")
    await pool.open(k2, "10.0.0.1:80")
    assert pool.connections(k1) == pool.connections(k2) == 1


async def test_idle_connection_released(mesh: Mesh, make_server: ServerFactory) -> None:
    async def handler(inc: IncomingConnect) -> None:
        await echo(inc)

    srv = await make_server(handler)
    pool = HboneClientPool(mesh.client_ctx, idle_timeout=0.2)
    try:
        key = key_for(mesh, srv)
        t = await pool.open(key, "10.0.0.1:80")
        t.write_eof()
        assert await read_all(t) == b""
        assert pool.connections(key) == 1
        await eventually(lambda: not pool.connections(key) and not srv.connections)
    finally:
        await pool.close()


async def test_wrong_expected_identity(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    srv = await make_server(echo)
    other = SpiffeId(TD, "other", "sa")
    with pytest.raises(IdentityMismatch, match="server-sa") as ei:
        await pool.open(key_for(mesh, srv, expected=other), "10.0.0.1:80")
    assert ei.value.expected == (other,)
    assert ei.value.actual == (mesh.server_id,)


async def test_server_cert_from_another_ca(mesh: Mesh) -> None:
    rogue = CertificateAuthority.create(TD)
    cert = workload(rogue, mesh.server_id)
    srv = HboneServer(listening_socket(), tls.server_context(cert, rogue.trust_bundle), TD, echo)
    await srv.start()
    pool = HboneClientPool(mesh.client_ctx)
    try:
        with pytest.raises(TlsError, match="self-signed certificate in certificate chain"):
            await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    finally:
        await pool.close()
        await srv.close()


async def _client_with(
    mesh: Mesh, srv: HboneServer, cert: tls.WorkloadCert, roots: list[bytes]
) -> Exception:
    pool = HboneClientPool(lambda _i: tls.client_context(cert, roots), connect_timeout=5)
    try:
        with pytest.raises(HboneError) as ei:
            await pool.open(key_for(mesh, srv), "10.0.0.1:80")
        return ei.value
    finally:
        await pool.close()


async def test_client_cert_from_another_ca_rejected(mesh: Mesh, make_server: ServerFactory) -> None:
    srv = await make_server(echo)
    rogue = CertificateAuthority.create(TD)
    cert = workload(rogue, mesh.client_id)
    await _client_with(mesh, srv, cert, mesh.ca.trust_bundle)
    assert srv.handshake_failures == 1
    assert not srv.connections


async def test_client_from_other_trust_domain_rejected(mesh: Mesh) -> None:
    # The server trusts both roots (a multi-domain bundle), but only serves its own domain.
    evil = CertificateAuthority.create("evil.example")
    srv = HboneServer(
        listening_socket(),
        tls.server_context(mesh.server_cert, [*mesh.ca.trust_bundle, *evil.trust_bundle]),
        TD,
        echo,
    )
    await srv.start()
    try:
        cert = workload(evil, SpiffeId("evil.example", "a", "b"))
        await _client_with(mesh, srv, cert, mesh.ca.trust_bundle)
        assert srv.handshake_failures == 1
        assert not srv.connections
    finally:
        await srv.close()


async def test_tls_client_without_cert_rejected(mesh: Mesh, make_server: ServerFactory) -> None:
    srv = await make_server(echo)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=mesh.ca.trust_bundle_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(*srv.address, ssl=ctx, server_hostname="")
    writer.write(proto.PREFACE + proto.frame(proto.SETTINGS, 0, 0))
    try:
        data = await reader.read()
    except (ssl.SSLError, ConnectionError):
        data = b""
    assert data == b""  # the server never speaks HTTP/2 to it
    writer.close()
    assert srv.handshake_failures == 1


async def test_garbage_and_stalled_peers_do_not_block_others(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    srv = await make_server(echo, handshake_timeout=0.5)
    # Garbage instead of a ClientHello.
    r1, w1 = await asyncio.open_connection(*srv.address)
    w1.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
    assert await asyncio.wait_for(r1.read(), 5) == b""
    # A peer that connects and says nothing: the handshake timeout bounds it.
    r2, w2 = await asyncio.open_connection(*srv.address)
    # Meanwhile, real clients are served.
    t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    await t.write(b"hi")
    t.write_eof()
    assert await read_all(t) == b"hi"
    assert await asyncio.wait_for(r2.read(), 5) == b""
    assert srv.handshake_failures == 2
    for w in (w1, w2):
        w.close()


async def _raw_h2(
    mesh: Mesh, srv: HboneServer
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = mesh.client_ctx(mesh.client_id)
    reader, writer = await asyncio.open_connection(*srv.address, ssl=ctx, server_hostname="")
    writer.write(proto.PREFACE + proto.frame(proto.SETTINGS, 0, 0))
    return reader, writer


async def _read_frames_until(reader: asyncio.StreamReader, ftype: int) -> tuple[int, int, bytes]:
    while True:
        hdr = await asyncio.wait_for(reader.readexactly(9), 5)
        length = int.from_bytes(hdr[:3], "big")
        payload = await reader.readexactly(length)
        if hdr[3] == ftype:
            return hdr[4], int.from_bytes(hdr[5:9], "big"), payload


async def test_non_connect_method_gets_400_over_tls(mesh: Mesh, make_server: ServerFactory) -> None:
    srv = await make_server(echo)
    reader, writer = await _raw_h2(mesh, srv)
    enc, dec = hpack.Encoder(), hpack.Decoder()
    block = enc.encode(
        [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "1.2.3.4:80")]
    )
    writer.write(
        proto.frame(proto.HEADERS, proto.FLAG_END_HEADERS | proto.FLAG_END_STREAM, 1, block)
    )
    _, sid, payload = await _read_frames_until(reader, proto.HEADERS)
    assert sid == 1
    assert (b":status", b"400") in [tuple(h) for h in dec.decode(payload, raw=True)]
    writer.close()


async def test_protocol_violation_closes_connection_with_goaway(
    mesh: Mesh, make_server: ServerFactory
) -> None:
    srv = await make_server(echo)
    reader, writer = await _raw_h2(mesh, srv)
    writer.write(proto.frame(proto.DATA, 0, 0, b"x"))  # DATA on stream 0
    _, _, payload = await _read_frames_until(reader, proto.GOAWAY)
    assert int.from_bytes(payload[4:8], "big") == ErrorCode.PROTOCOL_ERROR
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_silent_stream_does_not_block_others(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    srv = await make_server(echo)
    key = key_for(mesh, srv)
    silent = await pool.open(key, "10.0.0.1:80")  # never sends anything
    busy = await pool.open(key, "10.0.0.1:81")
    await busy.write(b"z" * 5_000_000)  # more than a stream window
    busy.write_eof()
    assert len(await read_all(busy)) == 5_000_000
    assert not silent.closed


async def test_slow_reader_backpressure(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    stop = asyncio.Event()
    written = 0
    writers: list[Tunnel] = []

    async def handler(inc: IncomingConnect) -> None:
        nonlocal written
        t = inc.accept()
        writers.append(t)
        try:
            while not stop.is_set():
                await t.write(b"y" * 65536)
                written += 65536
        except HboneError:
            pass

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    await eventually(lambda: written >= proto.STREAM_WINDOW)
    # Without reads, the writer ends up parked in write(): held at the stream window plus
    # the sender's queue, however fast or slow this machine is.
    await eventually(lambda: bool(writers) and writers[0]._write_waiter is not None)
    held = written
    from ketch.ztunnel.hbone.tunnel import PENDING_HIGH_WATER

    assert held <= proto.STREAM_WINDOW + PENDING_HIGH_WATER + 65536
    for _ in range(20):  # and it stays parked while nothing is read
        await asyncio.sleep(0)
    assert written == held
    got = len(await t.read())
    assert got > 0
    stop.set()
    t.close()


async def test_goaway_drains_existing_and_new_streams_use_new_connection(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    srv = await make_server(echo)
    key = key_for(mesh, srv)
    t1 = await pool.open(key, "10.0.0.1:80")
    (sconn,) = srv.connections
    sconn.goaway()
    await eventually(
        lambda: all(c.proto is None or c.proto.conn.goaway_received for c in pool._conns[key])
    )
    t2 = await pool.open(key, "10.0.0.1:81")
    assert len(srv.connections) == 2
    # The draining connection still carries t1 to completion.
    await t1.write(b"old")
    t1.write_eof()
    assert await read_all(t1) == b"old"
    await eventually(lambda: sconn not in srv.connections)
    t2.close()


async def test_ping_keepalive_answered(mesh: Mesh, make_server: ServerFactory) -> None:
    srv = await make_server(echo)
    pool = HboneClientPool(mesh.client_ctx, ping_interval=0.05, ping_timeout=0.2)
    try:
        key = key_for(mesh, srv)
        t = await pool.open(key, "10.0.0.1:80")
        p = pool._conns[key][0].proto
        assert p is not None
        await eventually(lambda: p._ping_seq >= 5)
        assert not p.closed
        await t.write(b"ok")
        t.write_eof()
        assert await read_all(t) == b"ok"
    finally:
        await pool.close()


async def test_ping_timeout_kills_dead_connection(mesh: Mesh) -> None:
    """A peer that completes TLS and sends SETTINGS but then goes silent."""
    ctx = mesh.server_ctx()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(proto.frame(proto.SETTINGS, 0, 0))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, sock=listening_socket(), ssl=ctx)
    addr = server.sockets[0].getsockname()
    pool = HboneClientPool(mesh.client_ctx, ping_interval=0.05, ping_timeout=0.3)
    try:
        key = PoolKey(mesh.client_id, (mesh.server_id,), (addr[0], addr[1]))
        with pytest.raises(HboneTimeout, match="PING"):
            await pool.open(key, "10.0.0.1:80")
        assert pool.connections(key) == 0
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_connect_refused_port(mesh: Mesh, pool: HboneClientPool) -> None:
    s = listening_socket()
    addr = s.getsockname()
    s.close()  # nothing listens there now
    key = PoolKey(mesh.client_id, (mesh.server_id,), (addr[0], addr[1]))
    with pytest.raises(UpstreamConnectError, match="15008"):
        await pool.open(key, "10.0.0.1:80")


async def test_custom_connect_callable(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    srv = await make_server(echo)
    made = []

    async def connect() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, srv.address)
        made.append(sock)
        return sock

    t = await pool.open(key_for(mesh, srv), "10.0.0.1:80", connect=connect)
    assert len(made) == 1
    t.close()


async def _streams_relay(
    t: Tunnel, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> RelayResult:
    return await _relay_streams(t, r, w, chunk_size=65536)


@pytest.mark.parametrize("copy", [relay, _streams_relay], ids=["splice", "streams"])
async def test_relay_copies_both_ways_with_half_close(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool, copy: Relay
) -> None:
    """Client app <-TCP-> relay <-HBONE-> server relay <-TCP-> backend.

    The front relay starts only after the client's bytes and FIN sit in its StreamReader,
    so the splice must forward what the reader had buffered.
    """
    backend_got = asyncio.get_running_loop().create_future()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(-1)  # until the FIN that crossed the tunnel
        backend_got.set_result(data)
        writer.write(b"reply:" + data[:10])
        writer.write_eof()
        await writer.drain()
        writer.close()

    be = await asyncio.start_server(backend, "127.0.0.1", 0)
    be_addr = be.sockets[0].getsockname()
    results = []

    async def handler(inc: IncomingConnect) -> None:
        r, w = await asyncio.open_connection(*be_addr)
        results.append(await copy(inc.accept(), r, w))

    srv = await make_server(handler)

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = await pool.open(key_for(mesh, srv), f"127.0.0.1:{be_addr[1]}")
        await eventually(lambda: reader._eof)  # type: ignore[attr-defined]  # everything (and the FIN) is buffered
        results.append(await copy(t, reader, writer))

    fe = await asyncio.start_server(front, "127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection(*fe.sockets[0].getsockname())
        payload = b"0123456789" * 10_000
        w.write(payload)
        w.write_eof()
        reply = await asyncio.wait_for(r.read(-1), 10)
        assert reply == b"reply:0123456789"
        assert await backend_got == payload
        w.close()
        await eventually(lambda: len(results) == 2)
        for res in results:
            assert res.error is None
        assert {(res.sent, res.received) for res in results} == {
            (len(payload), 16),
            (16, len(payload)),
        }
    finally:
        fe.close()
        be.close()


async def test_reset_reaches_reader(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.read()
        t.abort(ErrorCode.CONNECT_ERROR)

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    await t.write(b"x")
    with pytest.raises(StreamResetError) as ei:
        await read_all(t)
    assert ei.value.code == ErrorCode.CONNECT_ERROR
    assert ei.value.remote


class _DeadTransport:
    """A TCP transport whose peer vanished: shutdown() fails with ENOTCONN."""

    def __init__(self) -> None:
        self.written = b""
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise OSError(107, "Transport endpoint is not connected")

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_dead_tcp_peer_does_not_kill_shared_connection(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.write(b"bye")
        t.write_eof()
        await read_all(t)

    srv = await make_server(handler)
    key = key_for(mesh, srv)
    doomed = await pool.open(key, "10.0.0.1:80")
    other = await pool.open(key, "10.0.0.1:81")
    dead = _DeadTransport()
    splice = _TcpSplice(doomed, dead)  # type: ignore[arg-type]
    doomed._attach(splice)
    await asyncio.wait_for(splice.done, 5)  # END_STREAM arrived; write_eof failed
    assert dead.written == b"bye"
    assert dead.aborted
    assert isinstance(splice.error, OSError)
    # The shared HTTP/2 connection survived and still carries the other tunnel.
    await other.write(b"still fine")
    other.write_eof()
    assert await read_all(other) == b"bye"
    assert pool.connections(key) == 1


async def test_undecided_request_times_out_with_503(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        await asyncio.Event().wait()  # a stuck policy/backend lookup

    srv = await make_server(handler, decision_timeout=0.2)
    with pytest.raises(ConnectRefused) as ei:
        await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    assert ei.value.status == 503


def _buffered_at_least(t: Tunnel, n: int) -> bool:
    return sum(map(len, t._chunks)) >= n


async def test_unread_data_is_returned_to_connection_window(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    """Tunnels closed with unread bytes must not leak the shared connection window."""

    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.write(b"u" * 3_000_000)
        await read_all(t)

    srv = await make_server(handler)
    key = key_for(mesh, srv)
    for _ in range(8):  # 8 x 3 MB > the 16 MiB connection window
        t = await pool.open(key, "10.0.0.1:80")
        first = len(await t.read())
        # Wait until all of it sits unread in the tunnel, then drop it.
        await eventually(partial(_buffered_at_least, t, 3_000_000 - first))
        t.close()
    t = await pool.open(key, "10.0.0.1:80")
    got = 0
    async with asyncio.timeout(10):
        while got < 3_000_000:
            got += len(await t.read())
    assert pool.connections(key) == 1


async def test_ipv6_loopback(mesh: Mesh, pool: HboneClientPool) -> None:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.bind(("::1", 0))
    except OSError:
        sock.close()
        prereq.require(False, "needs IPv6 loopback (::1)", "enable IPv6 on lo")
    sock.listen(16)
    seen = []

    async def handler(inc: IncomingConnect) -> None:
        seen.append(inc.info)
        await echo(inc)

    srv = HboneServer(sock, mesh.server_ctx(), TD, handler)
    await srv.start()
    try:
        key = PoolKey(mesh.client_id, (mesh.server_id,), ("::1", srv.address[1]))
        t = await pool.open(key, "[fd00::7]:443")
        await t.write(b"v6")
        t.write_eof()
        assert await read_all(t) == b"v6"
        assert seen[0].authority == "[fd00::7]:443"
        assert seen[0].peer_addr[0] == "::1"
    finally:
        await srv.close()
