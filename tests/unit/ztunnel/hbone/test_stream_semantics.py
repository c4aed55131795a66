"""How stream endings map between HBONE and TCP, as ztunnel maps them:

- a peer RST_STREAM with NO_ERROR or CANCEL on an open tunnel is an end of stream: the TCP
  side gets the bytes that came before it and then a FIN, not a RST
  (zt:src/proxy/h2.rs, the read half treats those codes as EOF);
- any other reset code still aborts the TCP side;
- an app that resets its TCP connection (ECONNRESET) ends the tunnel with END_STREAM,
  not RST_STREAM(CONNECT_ERROR) (zt:src/copy.rs ignores ECONNRESET on read).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from ketch.util.tasks import spawn
from ketch.ztunnel.hbone.errors import ErrorCode, StreamResetError
from ketch.ztunnel.hbone.pool import HboneClientPool
from ketch.ztunnel.hbone.server import IncomingConnect
from ketch.ztunnel.hbone.tcp_relay import RelayResult, _relay_streams, relay
from ketch.ztunnel.hbone.tunnel import Tunnel
from tests.unit.ztunnel.hbone.conftest import Mesh, ServerFactory, eventually, key_for

pytestmark = pytest.mark.timeout(60)

Relay = Callable[[Tunnel, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[RelayResult]]


async def _streams_relay(
    t: Tunnel, r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> RelayResult:
    return await _relay_streams(t, r, w, chunk_size=65536)


RELAYS = pytest.mark.parametrize("copy", [relay, _streams_relay], ids=["splice", "streams"])


async def app_reads_until_end(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """What a TCP app sees: the bytes, then "fin" or "rst"."""
    got = bytearray()
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            got += chunk
    except ConnectionResetError:
        return bytes(got), "rst"
    return bytes(got), "fin"


@RELAYS
@pytest.mark.parametrize(
    ("code", "graceful"),
    [(ErrorCode.NO_ERROR, True), (ErrorCode.CANCEL, True), (ErrorCode.CONNECT_ERROR, False)],
)
async def test_peer_reset_code_decides_end_of_stream_or_abort(
    mesh: Mesh,
    make_server: ServerFactory,
    pool: HboneClientPool,
    copy: Relay,
    code: ErrorCode,
    graceful: bool,
) -> None:
    """NO_ERROR/CANCEL: the relay ends cleanly (data, then FIN, no error); other codes
    abort it and come back as the relay's error."""

    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.write(b"response")
        await asyncio.sleep(0.05)
        t.abort(code)

    srv = await make_server(handler)
    results: list[RelayResult] = []

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
        results.append(await copy(t, reader, writer))

    fe = await asyncio.start_server(front, "127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection(*fe.sockets[0].getsockname())
        got, how = await app_reads_until_end(r)
        assert got == b"response"
        w.close()
        await eventually(lambda: bool(results))
        if graceful:
            assert how == "fin"
            assert results[0].error is None
        else:
            assert isinstance(results[0].error, StreamResetError)
            assert results[0].error.code == ErrorCode.CONNECT_ERROR
    finally:
        fe.close()


@pytest.mark.parametrize("code", [ErrorCode.NO_ERROR, ErrorCode.CANCEL])
async def test_tunnel_read_sees_graceful_reset_as_eof(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool, code: ErrorCode
) -> None:
    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.write(b"bye")
        t.abort(code)

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    assert await t.read() == b"bye"
    assert await t.read() == b""
    await t.write(b"ignored")  # the peer reads no more: discarded, not an error
    t.write_eof()
    await eventually(lambda: t.closed)


def _reset_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # close with linger 0: the kernel sends a RST


@RELAYS
async def test_app_reset_becomes_end_stream_not_connect_error(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool, copy: Relay
) -> None:
    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(7)
        writer.write(b"partial")
        await writer.drain()
        await asyncio.sleep(0.05)
        _reset_socket(writer)

    be = await asyncio.start_server(app, "127.0.0.1", 0)
    be_addr = be.sockets[0].getsockname()
    results: list[RelayResult] = []

    async def handler(inc: IncomingConnect) -> None:
        r, w = await asyncio.open_connection(*be_addr)
        results.append(await copy(inc.accept(), r, w))

    srv = await make_server(handler)
    try:
        t = await pool.open(key_for(mesh, srv), f"127.0.0.1:{be_addr[1]}")
        await t.write(b"request")
        got = bytearray()
        while chunk := await asyncio.wait_for(t.read(), 5):  # no StreamResetError
            got += chunk
        assert got == b"partial"
        await eventually(lambda: bool(results))
        assert results[0].error is None
        assert results[0].sent == len(b"partial")
    finally:
        be.close()


async def test_writer_blocked_on_the_window_returns_when_the_peer_ends_gracefully(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool
) -> None:
    stop = asyncio.Event()

    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await stop.wait()  # never reads: the client's window runs out
        t.abort(ErrorCode.NO_ERROR)

    srv = await make_server(handler)
    t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
    writing = spawn(t.write(b"w" * 8_000_000), name="blocked-writer")
    await asyncio.sleep(0.3)
    assert not writing.done()  # held by flow control
    stop.set()
    await asyncio.wait_for(writing, 5)
    assert await t.read() == b""


@RELAYS
async def test_end_stream_then_graceful_reset_ends_the_relay_without_the_app_closing(
    mesh: Mesh, make_server: ServerFactory, pool: HboneClientPool, copy: Relay
) -> None:
    """RFC 9113 section 8.1: a server may END_STREAM its response, then RST_STREAM
    (NO_ERROR) the request side. The relay must finish even if the app keeps its side open."""

    async def handler(inc: IncomingConnect) -> None:
        t = inc.accept()
        await t.write(b"done")
        t.write_eof()
        await asyncio.sleep(0.05)
        t.abort(ErrorCode.NO_ERROR)

    srv = await make_server(handler)
    results: list[RelayResult] = []

    async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        t = await pool.open(key_for(mesh, srv), "10.0.0.1:80")
        results.append(await copy(t, reader, writer))

    fe = await asyncio.start_server(front, "127.0.0.1", 0)
    try:
        r, w = await asyncio.open_connection(*fe.sockets[0].getsockname())
        got, how = await app_reads_until_end(r)
        assert (got, how) == (b"done", "fin")
        await eventually(lambda: bool(results), within=3)  # the app never closed its side
        assert results[0].error is None
        w.close()
    finally:
        fe.close()
