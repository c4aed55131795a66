"""`relay()`: copy bytes between a `Tunnel` and a plain TCP connection, both ways.

The two directions run independently; the byte counts come back in a `RelayResult`.
Endings map as ztunnel maps them:
- TCP FIN <-> END_STREAM (half-close, each direction on its own);
- peer RST_STREAM(NO_ERROR or CANCEL) on the open tunnel -> end of stream: FIN to the app
  after the bytes before it, and the TCP -> tunnel direction ends (the peer reads no more);
- app RST (ECONNRESET) -> END_STREAM (then CANCEL for what the peer still sends), not
  RST_STREAM(CONNECT_ERROR);
- any other error either way -> RST_STREAM(CONNECT_ERROR) and the TCP connection aborted.

The fast path (`_TcpSplice`) takes the TCP transport over from its StreamReader/Writer and
moves bytes in transport callbacks, so no task switch happens per chunk; this is the hot
loop of the data path, keep per-chunk work out of it. `_relay_streams` is the slower
two-coroutine copy for streams that cannot be taken over.

Where it sits: the last step of the inbound (tunnel <-> app) and outbound (app <-> tunnel)
listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from ketch.ztunnel.hbone.errors import ErrorCode, HboneError
from ketch.ztunnel.hbone.tunnel import Tunnel


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
            if isinstance(exc, ConnectionResetError) and not self._up_done:
                # The app reset its connection: like ztunnel (zt:src/copy.rs), read that as
                # its EOF and end the stream cleanly (END_STREAM), not RST_STREAM
                # (CONNECT_ERROR), which peers count as a failed connection. Nothing can
                # reach the app any more; relay() then cancels what the peer still sends.
                self._up_done = self._down_done = True
                self.t.write_eof()
            else:
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
        # Called for END_STREAM, and again if a graceful RST_STREAM follows it.
        if not self._down_done:
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
        if self.t.send_closed and not self._up_done:
            # The peer ended the stream with RST_STREAM(NO_ERROR/CANCEL): it reads no more,
            # so there is nothing left to copy from TCP; close once our writes are out.
            self._up_done = True
            if not self._reading_paused:
                self._reading_paused = True
                self.tr.pause_reading()
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
        self.t._detach()  # nothing more goes to this transport
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
    connection, which ends the other direction too; graceful peer resets and app RSTs are
    ends of stream instead (see the module docstring). Never raises for network errors:
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
    app_reset = False

    def fail(exc: BaseException) -> None:
        nonlocal first_error
        if app_reset:
            return  # the tunnel already ended cleanly (see upstream())
        if first_error is None:
            first_error = exc
        tunnel.abort(ErrorCode.CONNECT_ERROR)
        writer.transport.abort()

    async def upstream() -> None:  # TCP -> tunnel
        nonlocal app_reset
        try:
            while True:
                data = await reader.read(chunk_size)
                if not data:
                    tunnel.write_eof()
                    return
                counts.sent += len(data)
                await tunnel.write(data)
        except ConnectionResetError:
            # App RST: END_STREAM, then stop the other direction (see _TcpSplice).
            app_reset = True
            tunnel.write_eof()
            tunnel.abort(ErrorCode.CANCEL)
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

    def stop_upstream() -> None:
        # Peer RST_STREAM(NO_ERROR/CANCEL): it reads no more, so end the TCP -> tunnel
        # copy as if the app had closed. Reading is paused first so the reader gets no
        # data after its EOF.
        cast(asyncio.Transport, writer.transport).pause_reading()
        reader.feed_eof()

    tunnel.on_send_closed = stop_upstream
    try:
        await asyncio.gather(upstream(), downstream())
    except BaseException:
        tunnel.abort(ErrorCode.CANCEL)
        writer.transport.abort()
        raise
    finally:
        tunnel.on_send_closed = None
        tunnel.close()
        writer.close()
        with contextlib.suppress(OSError, HboneError):
            await writer.wait_closed()
    return RelayResult(counts.sent, counts.received, first_error)
