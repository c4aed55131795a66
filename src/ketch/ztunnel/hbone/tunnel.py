"""asyncio side of HBONE: one `asyncio.Protocol` per TLS connection, one `Tunnel` per stream.

`H2Protocol` owns an `HboneConnection` (the sans-IO core) and the TLS transport. Received
bytes go into the core, events come out and are dispatched to `Tunnel`s; whatever the core
queues is written once per batch. It is a buffered Protocol rather than asyncio streams:
no task per connection, no extra copies, one transport write per received batch.

Back-pressure, both ways:
- receiving: a tunnel's bytes are acknowledged to the core (re-opening the HTTP/2 window)
  only when the application `read()`s them, so a slow consumer stops the remote sender
  after at most the 4 MiB stream window;
- sending: `Tunnel.write()` returns once the bytes are framed, and waits while the peer's
  window is exhausted or the TLS transport's buffer is above its high-water mark.

`relay()` copies between a tunnel and a plain TCP stream in both directions independently,
maps TCP FIN <-> END_STREAM and errors <-> RST_STREAM, and returns byte counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.errors import (
    ConnectionClosedError,
    ErrorCode,
    HboneError,
    HboneTimeout,
    ProtocolError,
    StreamResetError,
)
from ketch.ztunnel.hbone.proto import HboneConnection, Role, StreamState

log = logging.getLogger("ketch.ztunnel.hbone")

# A writer waits once this much of its data is queued behind the peer's window.
PENDING_HIGH_WATER = 256 * 1024
TRANSPORT_HIGH_WATER = 1024 * 1024


class Tunnel:
    """A bidirectional byte stream over one HBONE CONNECT stream, with half-close."""

    def __init__(self, proto_: H2Protocol, stream_id: int, authority: str) -> None:
        self._p = proto_
        self.stream_id = stream_id
        self.authority = authority
        self.status: int | None = None
        self.response_headers: proto.Headers = ()
        self._chunks: deque[bytes] = deque()
        self._eof = False  # peer half-closed
        self._error: HboneError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._response: asyncio.Future[None] = proto_.loop.create_future()
        self._eof_sent = False
        self._finished = False
        self.on_finished: Callable[[Tunnel], None] | None = None
        self._sink: _TcpSplice | None = None

    # ------------------------------------------------------------------ app side

    @property
    def peer_identity(self) -> SpiffeId | None:
        return self._p.peer_identity

    @property
    def closed(self) -> bool:
        return self._finished

    async def read(self) -> bytes:
        """The next chunk of tunnel bytes; b"" once the peer half-closed.

        Raises StreamResetError if the stream was reset, HboneError if the connection died.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                self._p.check_finished(self)
                return b""
            self._read_waiter = self._p.loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data = self._chunks.popleft()
        self._p.ack(self.stream_id, len(data))
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def write(self, data: bytes) -> None:
        """Send bytes; waits while the peer's flow-control window or our buffer is full."""
        if self._error is not None:
            raise self._error
        if self._eof_sent:
            raise ConnectionClosedError(f"HBONE stream {self.stream_id}: write after write_eof")
        p = self._p
        try:
            p.conn.send_data(self.stream_id, data)
        except HboneError as e:
            raise self._error or e from None
        p.flush()
        while (p.conn.pending_send(self.stream_id) > PENDING_HIGH_WATER or p.paused) and (
            self._error is None
        ):
            self._write_waiter = p.loop.create_future()
            try:
                await self._write_waiter
            finally:
                self._write_waiter = None
        if self._error is not None:
            raise self._error

    def write_nowait(self, data: bytes) -> bool:
        """Send bytes without waiting; False means "stop producing until writable"."""
        if self._error is not None:
            raise self._error
        p = self._p
        p.conn.send_data(self.stream_id, data)
        p.flush()
        return self.writable()

    def writable(self) -> bool:
        p = self._p
        return not p.paused and p.conn.pending_send(self.stream_id) <= PENDING_HIGH_WATER

    def write_eof(self) -> None:
        """Half-close our direction (END_STREAM, after any queued bytes)."""
        if self._eof_sent or self._error is not None or self._finished:
            return
        self._eof_sent = True
        self._p.conn.end_stream(self.stream_id)
        self._p.flush()
        self._p.check_finished(self)

    def abort(self, code: ErrorCode | int = ErrorCode.CANCEL) -> None:
        """Reset the stream (RST_STREAM); both directions stop."""
        if self._finished:
            return
        self._p.conn.reset(self.stream_id, code)
        self._p.flush()
        self._fail(StreamResetError(self.stream_id, int(code), remote=False))

    def close(self) -> None:
        """Finish with the tunnel: a no-op if both sides half-closed, else a reset (CANCEL)."""
        if not self._finished:
            if self._p.conn.stream_state(self.stream_id) is StreamState.CLOSED:
                self._finish()
            else:
                self.abort(ErrorCode.CANCEL)

    async def wait_response(self) -> int:
        await self._response
        assert self.status is not None
        return self.status

    # ------------------------------------------------------------------ protocol side

    def _feed(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.tunnel_data(data)
            return
        self._chunks.append(data)
        self._wake_reader()

    def _feed_eof(self) -> None:
        self._eof = True
        if self._sink is not None:
            self._sink.tunnel_eof()
            return
        self._wake_reader()

    def _ack(self, n: int) -> None:
        self._p.ack(self.stream_id, n)

    def _attach(self, sink: _TcpSplice) -> None:
        """Deliver from now on straight to `sink` (callbacks, no read() awaits)."""
        self._sink = sink
        while self._chunks:
            sink.tunnel_data(self._chunks.popleft())
        if self._error is not None:
            sink.tunnel_error(self._error)
        elif self._eof:
            sink.tunnel_eof()

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self) -> None:
        if self._sink is not None:
            self._sink.tunnel_writable()
        w = self._write_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _on_response(self, status: int, headers: proto.Headers) -> None:
        self.status = status
        self.response_headers = headers
        if not self._response.done():
            self._response.set_result(None)

    def _fail(self, exc: HboneError) -> None:
        if self._error is None:
            self._error = exc
        if not self._response.done():
            self._response.set_exception(exc)
            self._response.exception()  # retrieved: nobody may be waiting
        self._wake_reader()
        self._wake_writer()
        if self._sink is not None:
            self._sink.tunnel_error(exc)
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            if self._chunks:
                # Never read: return the bytes to the connection window, or every tunnel
                # closed with unread data would shrink it for all others.
                n = sum(len(c) for c in self._chunks)
                self._chunks.clear()
                self._ack(n)
            cb, self.on_finished = self.on_finished, None
            if cb is not None:
                cb(self)


class H2Protocol(asyncio.Protocol):
    """HTTP/2 over a TLS transport for either role; see the module docstring."""

    def __init__(
        self,
        role: Role,
        *,
        on_request: Callable[[H2Protocol, proto.ConnectRequest], None] | None = None,
        ping_interval: float | None = 10.0,
        ping_timeout: float = 20.0,
        settings_timeout: float = 10.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn = HboneConnection(role)
        self.transport: asyncio.Transport | None = None
        self.tunnels: dict[int, Tunnel] = {}
        self.peer_identity: SpiffeId | None = None
        self.paused = False
        self.closed = False
        self.close_reason: HboneError | None = None
        self._on_request = on_request
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._settings_timeout = settings_timeout
        self._ping_sent_at: float | None = None
        self._ping_seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._got_settings = False
        self.on_idle: Callable[[H2Protocol], None] | None = None
        self.on_closed: Callable[[H2Protocol], None] | None = None
        self._closed_fut: asyncio.Future[None] = self.loop.create_future()
        self._lost_fut: asyncio.Future[None] = self.loop.create_future()
        self._early: list[bytes] = []

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)
        self.flush()
        self._schedule(self._settings_timeout)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            # start_tls() delivers bytes that followed the handshake before we adopt the
            # transport (and before the peer identity is verified): hold them until then.
            self._early.append(data)
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            log.warning("HBONE connection from %s closed: %s", self.peer_name(), e)
            self.flush()
            self._shutdown(e)
            return
        for ev in events:
            self._dispatch(ev)
        self.flush()

    def eof_received(self) -> bool | None:
        self._shutdown(
            ConnectionClosedError(f"HBONE peer {self.peer_name()} closed the connection")
        )
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost_fut.done():
            self._lost_fut.set_result(None)
        if exc is not None:
            err: HboneError = ConnectionClosedError(
                f"HBONE connection to {self.peer_name()} lost: {exc}"
            )
        else:
            err = ConnectionClosedError(f"HBONE connection to {self.peer_name()} closed")
        self._shutdown(err, transport_gone=True)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for t in list(self.tunnels.values()):
            t._wake_writer()

    # ------------------------------------------------------------------ events

    def _dispatch(self, ev: proto.Event) -> None:
        t: Tunnel | None
        if isinstance(ev, proto.Data):
            t = self.tunnels.get(ev.stream_id)
            if t is None:
                self.conn.ack_data(ev.stream_id, len(ev.data))
            else:
                t._feed(ev.data)
        elif isinstance(ev, proto.WindowUpdated):
            if ev.stream_id == 0:
                for t in list(self.tunnels.values()):
                    t._wake_writer()
            elif (t := self.tunnels.get(ev.stream_id)) is not None:
                t._wake_writer()
        elif isinstance(ev, proto.StreamEnded):
            if (t := self.tunnels.get(ev.stream_id)) is not None:
                t._feed_eof()
                self.check_finished(t)
        elif isinstance(ev, proto.ConnectRequest):
            if self._on_request is not None:
                self._on_request(self, ev)
            else:
                self.conn.respond(ev.stream_id, 503)
        elif isinstance(ev, proto.InvalidRequest):
            log.info(
                "HBONE request from %s rejected (%d): %s", self.peer_name(), ev.status, ev.reason
            )
            self.conn.respond(ev.stream_id, ev.status)
        elif isinstance(ev, proto.ConnectResponse):
            if (t := self.tunnels.get(ev.stream_id)) is not None:
                t._on_response(ev.status, ev.headers)
                self.check_finished(t)
        elif isinstance(ev, proto.StreamReset):
            if (t := self.tunnels.get(ev.stream_id)) is not None:
                t._fail(StreamResetError(ev.stream_id, ev.error_code, remote=ev.remote))
        elif isinstance(ev, proto.PingAck):
            self._ping_sent_at = None
        elif isinstance(ev, proto.SettingsChanged):
            self._got_settings = True
            self._schedule(self._ping_interval)
        elif isinstance(ev, proto.GoAway):
            log.info("HBONE peer %s sent GOAWAY (%s); draining", self.peer_name(), ev.error_code)
            if not self.tunnels:
                self.close()

    # ------------------------------------------------------------------ helpers

    def peer_name(self) -> str:
        if self.transport is None:
            return "?"
        peer = self.transport.get_extra_info("peername")
        ident = f" ({self.peer_identity})" if self.peer_identity else ""
        return f"{peer}{ident}"

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def ack(self, stream_id: int, n: int) -> None:
        self.conn.ack_data(stream_id, n)
        self.flush()

    def add_tunnel(self, t: Tunnel) -> None:
        self.tunnels[t.stream_id] = t
        t.on_finished = self._tunnel_finished

    def check_finished(self, t: Tunnel) -> None:
        if self.conn.stream_state(t.stream_id) is StreamState.CLOSED and t.at_eof():
            t._finish()

    def _tunnel_finished(self, t: Tunnel) -> None:
        self.tunnels.pop(t.stream_id, None)
        if not self.tunnels:
            if self.conn.goaway_received is not None or self.conn.goaway_sent:
                self.close()
            elif self.on_idle is not None:
                self.on_idle(self)

    def _schedule(self, delay: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if delay is not None and not self.closed:
            self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if not self._got_settings:
            self._shutdown(
                HboneTimeout(
                    f"HBONE peer {self.peer_name()} sent no HTTP/2 SETTINGS within "
                    f"{self._settings_timeout:g}s"
                )
            )
            return
        if self._ping_interval is None:
            return
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self._ping_timeout:
                self._shutdown(
                    HboneTimeout(
                        f"HBONE peer {self.peer_name()} did not answer PING within "
                        f"{self._ping_timeout:g}s; is the path to port 15008 broken?"
                    )
                )
                return
        else:
            self._ping_seq += 1
            self._ping_sent_at = now
            self.conn.ping(self._ping_seq.to_bytes(8, "big"))
            self.flush()
        self._schedule(min(self._ping_interval, self._ping_timeout))

    def goaway(self) -> None:
        """Graceful drain: no new streams; close when the last tunnel finishes."""
        if self.closed:
            return
        if not self.conn.goaway_sent:
            self.conn.goaway()
            self.flush()
        if not self.tunnels:
            self.close()

    def close(self) -> None:
        self._shutdown(ConnectionClosedError("HBONE connection closed locally"))

    def abort(self, reason: HboneError) -> None:
        self._shutdown(reason)
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Until the protocol stopped (all tunnels failed or finished)."""
        await asyncio.shield(self._closed_fut)

    async def wait_lost(self, grace: float = 2.0) -> None:
        """Until the transport is really gone: a TLS close waits for the peer's
        close_notify, so after `grace` seconds the transport is aborted."""
        if self.transport is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self._lost_fut)
        except TimeoutError:
            self.transport.abort()
            await asyncio.shield(self._lost_fut)

    def _shutdown(self, reason: HboneError, *, transport_gone: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._schedule(None)
        for t in list(self.tunnels.values()):
            t._fail(reason)
        self.tunnels.clear()
        if not transport_gone and self.transport is not None:
            self.flush()
            self.transport.close()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        cb, self.on_closed = self.on_closed, None
        if cb is not None:
            cb(self)


class RelayProgress(Protocol):
    """Live byte counts of a running `relay()` (same meaning as `RelayResult`'s)."""

    @property
    def sent(self) -> int: ...

    @property
    def received(self) -> int: ...


@dataclass
class _StreamCounts:
    sent: int = 0
    received: int = 0


@dataclass(frozen=True)
class RelayResult:
    """Bytes copied by `relay()`: `sent` = TCP -> tunnel, `received` = tunnel -> TCP."""

    sent: int
    received: int
    error: BaseException | None = None


class _TcpSplice(asyncio.Protocol):
    """Callback-driven relay between a TCP transport and a Tunnel: no task switch per chunk.

    TCP -> tunnel: data_received() frames bytes at once; when the tunnel stops being
    writable (peer window or TLS buffer full) TCP reading pauses until tunnel_writable().
    Tunnel -> TCP: bytes are written at once and acknowledged (re-opening the HTTP/2
    window) immediately, or, while the TCP transport is above its high-water mark, only
    after resume_writing(): that is the back-pressure towards the remote sender.
    """

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.t = tunnel
        self.tr = transport
        self.sent = 0
        self.received = 0
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = tunnel._p.loop.create_future()
        self._up_done = False  # TCP FIN forwarded as END_STREAM
        self._down_done = False  # END_STREAM forwarded as TCP FIN
        self._reading_paused = False
        self._tcp_paused = False
        self._unacked = 0

    # TCP side -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.sent += len(data)
        try:
            ok = self.t.write_nowait(data)
        except HboneError as e:
            self._fail(e)
            return
        if not ok and not self._reading_paused:
            self._reading_paused = True
            self.tr.pause_reading()

    def eof_received(self) -> bool:
        self._up_done = True
        self.t.write_eof()
        self._check_done()
        return True  # keep our write side open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self._up_done and self._down_done):
            self._fail(exc or ConnectionResetError("TCP peer closed the connection early"))
        self._finish()

    def pause_writing(self) -> None:
        self._tcp_paused = True

    def resume_writing(self) -> None:
        self._tcp_paused = False
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.t._ack(n)

    # tunnel side ------------------------------------------------------------------------

    def tunnel_data(self, data: bytes) -> None:
        self.received += len(data)
        self.tr.write(data)
        if self._tcp_paused:
            self._unacked += len(data)
        else:
            self.t._ack(len(data))

    def tunnel_eof(self) -> None:
        if self._down_done:
            return
        self._down_done = True
        # Called from the HBONE connection's data_received: must not raise, or the
        # whole shared connection would be torn down. shutdown() fails with ENOTCONN
        # when the TCP peer is already gone.
        if self.tr.can_write_eof() and not self.tr.is_closing():
            try:
                self.tr.write_eof()
            except OSError as e:
                self._fail(e)
                return
        self._check_done()

    def tunnel_writable(self) -> None:
        if self._reading_paused and self.t.writable():
            self._reading_paused = False
            self.tr.resume_reading()

    def tunnel_error(self, exc: BaseException) -> None:
        if self._up_done and self._down_done:
            return
        if self.error is None:
            self.error = exc
        self.tr.abort()  # RST towards the TCP peer
        self._finish()

    # ---------------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.t.abort(ErrorCode.CONNECT_ERROR)
        self.tr.abort()
        self._finish()

    def _check_done(self) -> None:
        if self._up_done and self._down_done:
            self.tr.close()
            self._finish()

    def _finish(self) -> None:
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.t._ack(n)
        if not self.done.done():
            self.done.set_result(None)


async def relay(
    tunnel: Tunnel,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chunk_size: int = 256 * 1024,
    on_start: Callable[[RelayProgress], None] | None = None,
) -> RelayResult:
    """Copy both ways until both directions finished; half-close propagates each way.
    `on_start` is given an object whose `sent`/`received` are the bytes copied so far
    (for live metrics); it costs nothing per chunk.

    A failure in either direction resets the tunnel (CONNECT_ERROR) and aborts the TCP
    connection (RST), which ends the other direction too. Never raises for network errors:
    they come back in `RelayResult.error`. Cancelling `relay` aborts both sides.

    Fast path: the TCP transport is taken over from the stream pair by a callback
    Protocol (`_TcpSplice`), so no task switch happens per chunk; bytes the StreamReader
    had already buffered are forwarded first. Streams that cannot be taken over (already
    closing, or not asyncio's own StreamReader) are copied with two coroutines instead.
    """
    transport = cast(asyncio.Transport, writer.transport)
    # asyncio exposes no public way to take back a StreamReader's buffer; read the
    # private one when it is there, otherwise copy with coroutines (slower, same result).
    buffered = getattr(reader, "_buffer", None)
    reader_eof = getattr(reader, "_eof", None)
    if (
        not isinstance(buffered, bytearray)
        or not isinstance(reader_eof, bool)
        or reader.exception() is not None
        or transport.is_closing()
    ):
        return await _relay_streams(
            tunnel, reader, writer, chunk_size=chunk_size, on_start=on_start
        )
    transport.pause_reading()
    leftover = bytes(buffered)
    buffered.clear()
    splice = _TcpSplice(tunnel, transport)
    if on_start is not None:
        on_start(splice)
    transport.set_protocol(splice)
    try:
        if leftover:
            splice.data_received(leftover)
        if reader_eof:
            splice.eof_received()
        elif not splice._reading_paused:
            transport.resume_reading()
        tunnel._attach(splice)
        await splice.done
    except BaseException:
        tunnel.abort(ErrorCode.CANCEL)
        transport.abort()
        raise
    finally:
        tunnel.close()
        if not transport.is_closing():
            transport.close()
    return RelayResult(splice.sent, splice.received, splice.error)


async def _relay_streams(
    tunnel: Tunnel,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    chunk_size: int,
    on_start: Callable[[RelayProgress], None] | None = None,
) -> RelayResult:
    counts = _StreamCounts()
    if on_start is not None:
        on_start(counts)
    first_error: BaseException | None = None

    def fail(exc: BaseException) -> None:
        nonlocal first_error
        if first_error is None:
            first_error = exc
        tunnel.abort(ErrorCode.CONNECT_ERROR)
        writer.transport.abort()

    async def upstream() -> None:  # TCP -> tunnel
        try:
            while True:
                data = await reader.read(chunk_size)
                if not data:
                    tunnel.write_eof()
                    return
                counts.sent += len(data)
                await tunnel.write(data)
        except (HboneError, OSError) as e:
            fail(e)

    async def downstream() -> None:  # tunnel -> TCP
        try:
            while True:
                data = await tunnel.read()
                if not data:
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                counts.received += len(data)
                writer.write(data)
                await writer.drain()
        except (HboneError, OSError) as e:
            fail(e)

    try:
        await asyncio.gather(upstream(), downstream())
    except BaseException:
        tunnel.abort(ErrorCode.CANCEL)
        writer.transport.abort()
        raise
    finally:
        tunnel.close()
        writer.close()
        with contextlib.suppress(OSError, HboneError):
            await writer.wait_closed()
    return RelayResult(counts.sent, counts.received, first_error)
