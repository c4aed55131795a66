"""The asyncio driver of an HBONE connection: one `asyncio.Protocol` per TLS connection.

`H2Protocol` owns an `HboneConnection` (the sans-IO core in `proto`) and the TLS transport.
Received bytes go into the core, events come out and are dispatched to `Tunnel`s; whatever
the core queues is written once per batch. It is a buffered Protocol rather than asyncio
streams: no task per connection, no extra copies, one transport write per received batch.
It also runs the connection's timers: the SETTINGS deadline and the PING keepalive.

Where it sits: between the TLS transport (made by `server.HboneServer` or
`pool.HboneClientPool`) and the `Tunnel`s of its streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.errors import (
    ConnectionClosedError,
    HboneError,
    HboneTimeout,
    ProtocolError,
    StreamResetError,
)
from ketch.ztunnel.hbone.proto import HboneConnection, Role, StreamState
from ketch.ztunnel.hbone.tunnel import Tunnel

log = logging.getLogger("ketch.ztunnel.hbone")

TRANSPORT_HIGH_WATER = 1024 * 1024


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
            if self.paused and self.transport is not None:
                # The peer is not reading (our buffer is full): a graceful close would
                # wait for it forever.
                self.transport.abort()
            return
        for ev in events:
            self._dispatch(ev)
        self.flush()
        if self.conn.unsent_control and not self.paused:
            # Our buffer is below its high-water mark, so the peer reads what we send and
            # the ACKs/resets just queued are not piling up (see proto.MAX_UNSENT_CONTROL).
            # Once per received batch, not per relayed chunk.
            self.conn.control_written()

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
        self.conn.control_written()
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
            # Events are dispatched after the whole batch was parsed: a stream the peer
            # already reset in the same batch (rapid reset) never reaches the handler.
            if self.conn.stream_state(ev.stream_id) is StreamState.CLOSED:
                return
            if self._on_request is not None:
                self._on_request(self, ev)
            else:
                self.conn.respond(ev.stream_id, 503)
        elif isinstance(ev, proto.InvalidRequest):
            log.info(
                "HBONE request from %s rejected (%d): %s", self.peer_name(), ev.status, ev.reason
            )
            if self.conn.stream_state(ev.stream_id) is not StreamState.CLOSED:
                self.conn.respond(ev.stream_id, ev.status)
        elif isinstance(ev, proto.ConnectResponse):
            if (t := self.tunnels.get(ev.stream_id)) is not None:
                t._on_response(ev.status, ev.headers)
                self.check_finished(t)
        elif isinstance(ev, proto.StreamReset):
            if (t := self.tunnels.get(ev.stream_id)) is not None:
                exc = StreamResetError(ev.stream_id, ev.error_code, remote=ev.remote)
                if ev.remote:
                    t._reset_by_peer(exc)
                    self.check_finished(t)
                else:
                    t._fail(exc)
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
            err = HboneTimeout(
                f"HBONE peer {self.peer_name()} did not complete the HTTP/2 preface and "
                f"SETTINGS in time ({self._settings_timeout:.3g}s after TLS)"
            )
            log.warning("%s; closing", err)
            self._shutdown(err)
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
