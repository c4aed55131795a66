"""`Tunnel`: one HBONE CONNECT stream as a bidirectional byte stream with half-close.

A `Tunnel` belongs to the `driver.H2Protocol` of its HTTP/2 connection, which feeds it the
stream's events (`_feed`, `_feed_eof`, `_fail`, `_on_response`). The application side
either awaits `read()`/`write()`, or attaches a `TunnelSink` (the TCP splice of `tcp_relay`)
that gets bytes by callback, with no task switch per chunk.

Back-pressure, both ways:
- receiving: a tunnel's bytes are acknowledged to the HTTP/2 core (re-opening the window)
  only when the application `read()`s them (or the sink acknowledges them), so a slow
  consumer stops the remote sender after at most the 4 MiB stream window;
- sending: `write()` returns once the bytes are framed, and waits while the peer's window
  is exhausted or the TLS transport's buffer is above its high-water mark.

Where it sits: server handlers and the client pool hand `Tunnel`s to the listeners
(inbound/outbound), which usually pass them to `relay.relay()`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone.connect import Headers
from ketch.ztunnel.hbone.errors import (
    ConnectionClosedError,
    ErrorCode,
    HboneError,
    StreamResetError,
    UsageError,
)
from ketch.ztunnel.hbone.proto import HboneConnection, StreamState


class Connection(Protocol):
    """What a tunnel needs of the connection driver it belongs to (`driver.H2Protocol`)."""

    loop: asyncio.AbstractEventLoop
    conn: HboneConnection
    peer_identity: SpiffeId | None
    paused: bool  # the transport asked us to stop writing

    def flush(self) -> None: ...

    def ack(self, stream_id: int, n: int) -> None: ...

    def check_finished(self, t: Tunnel) -> None: ...


# A writer waits once this much of its data is queued behind the peer's window.
PENDING_HIGH_WATER = 256 * 1024

# A peer RST_STREAM with one of these codes on an open tunnel means "I am done", not
# "something broke": it reads as end of stream, as ztunnel's read half treats them
# (zt:src/proxy/h2.rs). RFC 9113 section 8.1 has servers send NO_ERROR after a complete
# response; h2-based peers send CANCEL when they drop a stream they finished with.
GRACEFUL_RESET_CODES = frozenset({ErrorCode.NO_ERROR, ErrorCode.CANCEL})


class TunnelSink(Protocol):
    """Receives a tunnel's events by callback instead of `read()` (see `Tunnel._attach`)."""

    def tunnel_data(self, data: bytes) -> None: ...
    def tunnel_eof(self) -> None: ...
    def tunnel_error(self, exc: BaseException) -> None: ...
    def tunnel_writable(self) -> None: ...


class Tunnel:
    """A bidirectional byte stream over one HBONE CONNECT stream, with half-close."""

    def __init__(self, proto_: Connection, stream_id: int, authority: str) -> None:
        self._p = proto_
        self.stream_id = stream_id
        self.authority = authority
        self.status: int | None = None
        self.response_headers: Headers = ()
        self._chunks: deque[bytes] = deque()
        self._eof = False  # peer half-closed
        self._error: HboneError | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._response: asyncio.Future[None] = proto_.loop.create_future()
        self._eof_sent = False
        self._send_closed = False  # the peer ended the stream gracefully: it reads no more
        self._finished = False
        self.on_finished: Callable[[Tunnel], None] | None = None
        # Called once if the stream fails (reset, connection lost) before it finished.
        self.on_failed: Callable[[HboneError], None] | None = None
        # Called once when the peer ends the stream gracefully (see `send_closed`), so a
        # copy loop can stop reading what nobody will read.
        self.on_send_closed: Callable[[], None] | None = None
        self._sink: TunnelSink | None = None

    # ------------------------------------------------------------------ app side

    @property
    def peer_identity(self) -> SpiffeId | None:
        return self._p.peer_identity

    @property
    def closed(self) -> bool:
        return self._finished

    @property
    def send_closed(self) -> bool:
        """The peer ended the stream with RST_STREAM(NO_ERROR/CANCEL): reads end with b"",
        and bytes written from now on are discarded (it will not read them)."""
        return self._send_closed

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
        except UsageError as e:
            if self._send_closed:
                return  # discarded: the peer ended the stream gracefully
            raise self._error or e from None
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
        try:  # no cost per chunk unless it raises
            p.conn.send_data(self.stream_id, data)
        except UsageError:
            if self._send_closed:
                return True  # discarded: the peer ended the stream gracefully
            raise
        p.flush()
        return self.writable()

    def writable(self) -> bool:
        p = self._p
        return not p.paused and p.conn.pending_send(self.stream_id) <= PENDING_HIGH_WATER

    def write_eof(self) -> None:
        """Half-close our direction (END_STREAM, after any queued bytes)."""
        if self._eof_sent or self._error is not None or self._finished or self._send_closed:
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

    def _reset_by_peer(self, exc: StreamResetError) -> None:
        """RST_STREAM from the peer: end of stream if graceful on an open tunnel, else failure."""
        if exc.code in GRACEFUL_RESET_CODES and self.status is not None and self.status < 300:
            self._send_closed = True
            w = self._write_waiter  # a write() held by flow control returns (discarded)
            if w is not None and not w.done():
                w.set_result(None)
            cb, self.on_send_closed = self.on_send_closed, None
            if cb is not None:
                cb()
            self._feed_eof()
        else:
            self._fail(exc)

    def _detach(self) -> None:
        """The sink is done (its relay ended): later bytes are buffered and acked on finish."""
        self._sink = None

    def _ack(self, n: int) -> None:
        self._p.ack(self.stream_id, n)

    def _attach(self, sink: TunnelSink) -> None:
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

    def _on_response(self, status: int, headers: Headers) -> None:
        self.status = status
        self.response_headers = headers
        if not self._response.done():
            self._response.set_result(None)

    def _fail(self, exc: HboneError) -> None:
        if self._error is None:
            self._error = exc
        cb, self.on_failed = self.on_failed, None
        if cb is not None and not self._finished:
            cb(exc)
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
