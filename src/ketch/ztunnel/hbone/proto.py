"""Sans-IO HTTP/2 for HBONE: framing and the connection/stream state machines (RFC 9113).

`HboneConnection` holds no sockets: feed it received bytes with `receive_data()`, act on the
events it returns, and write `data_to_send()` to the transport. The same object serves the
client role (opens CONNECT streams) and the server role (answers them). What a request or
response *means* (is it a valid HBONE CONNECT? which status?) is decided by `connect`; this
module only frames, tracks stream states and windows, and enforces connection limits.

Where it sits: the bottom of the HBONE data path. `driver.H2Protocol` feeds it the bytes
that TLS decrypted and writes what it queues; everything above works with its events.

Why not the `h2` library: measured on this project's 2-core machine, a relay on h2's default
path cost about twice Envoy's added latency per request, and h2 formats every received frame
for a debug log even with logging off (~40% of CPU under bulk data). This module does only
what HBONE needs, with struct on memoryviews and no per-byte Python work (see docs/hbone.md).

Subset handled (everything else is rejected or ignored exactly as RFC 9113 says):
- connection preface, SETTINGS / SETTINGS ACK, PING / PING ACK, GOAWAY, WINDOW_UPDATE;
- HEADERS + CONTINUATION (HPACK via the `hpack` package), DATA with padding, RST_STREAM,
  PRIORITY (parsed and ignored, RFC 9113 section 5.3.2 deprecates it);
- PUSH_PROMISE is a PROTOCOL_ERROR (we advertise ENABLE_PUSH=0 and never push);
- unknown frame types and unknown settings are ignored (sections 4.1, 6.5.2);
- END_STREAM is a TCP half-close; RST_STREAM is an abortive close.

Flow control: we advertise 4 MiB per stream and 16 MiB for the connection (ztunnel's
values) and only re-open a window when the application calls `ack_data()` for bytes it has
actually consumed, which is how back-pressure reaches the remote sender. Outgoing DATA that
does not fit the peer's windows is queued per stream and sent when WINDOW_UPDATEs arrive;
`pending_send(stream_id)` tells the I/O layer how much is queued so it can stop reading.

Abuse limits (each ends the connection with GOAWAY(ENHANCE_YOUR_CALM); constants below):
rapid reset (Envoy's premature-reset rule), control frames queued while the peer does not
read them (the I/O layer reports progress with `control_written()`), SETTINGS entries per
frame, CONTINUATION frames per header block, and stream errors the peer provokes. Per
connection, state is bounded by MAX_CONCURRENT_STREAMS streams, the 16 MiB receive window,
one frame of MAX_FRAME_SIZE being reassembled, and MAX_HEADER_BLOCK for a header block.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, cast

import hpack

from ketch.ztunnel.hbone import connect
from ketch.ztunnel.hbone.connect import ConnectRequest as ConnectRequest
from ketch.ztunnel.hbone.connect import ConnectResponse as ConnectResponse
from ketch.ztunnel.hbone.connect import Headers as Headers
from ketch.ztunnel.hbone.connect import InvalidRequest as InvalidRequest
from ketch.ztunnel.hbone.errors import (
    ConnectionClosedError,
    ErrorCode,
    ProtocolError,
    UsageError,
)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags.
FLAG_END_STREAM: Final = 0x1
FLAG_ACK: Final = 0x1
FLAG_END_HEADERS: Final = 0x4
FLAG_PADDED: Final = 0x8
FLAG_PRIORITY: Final = 0x20

# Settings identifiers (section 6.5.2).
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME: Final = 16_384
MAX_WINDOW: Final = 2**31 - 1

# HBONE values (REFERENCE.md, matching ztunnel).
STREAM_WINDOW: Final = 4 * 1024 * 1024
CONNECTION_WINDOW: Final = 16 * 1024 * 1024
MAX_FRAME_SIZE: Final = 1024 * 1024
MAX_CONCURRENT_STREAMS: Final = 100
MAX_HEADER_LIST_SIZE: Final = 64 * 1024
# A header block (HEADERS + CONTINUATIONs) larger than this ends the connection.
MAX_HEADER_BLOCK: Final = 64 * 1024

# Rapid reset (CVE-2023-44487), Envoy's rule: once a peer has opened this many streams,
# the connection is closed with GOAWAY(ENHANCE_YOUR_CALM) as soon as at least half of them
# were reset by the peer "prematurely", i.e. before we answered the CONNECT (Envoy's
# overload.premature_reset_total_stream_count = 500, 50%; Envoy calls a reset within 1 s
# premature, we use "before the response", which needs no clock). The server also cancels
# the pending decision of every such stream, so the streams before the GOAWAY cost no
# upstream connection either.
PREMATURE_RESET_MIN_STREAMS: Final = 500

# Control-frame floods (CVE-2019-9512 PING flood, CVE-2019-9515 SETTINGS flood): every
# PING, SETTINGS and many stream errors make us queue a reply. A peer that sends them but
# never reads our replies would grow our output without bound; once this many control
# frames are queued and not confirmed written (`control_written()`), the connection gets
# GOAWAY(ENHANCE_YOUR_CALM). Envoy's max_outbound_control_frames default is 1000.
MAX_UNSENT_CONTROL: Final = 1000
# More entries than this in one SETTINGS frame is abuse (nghttp2's max_settings, 32).
MAX_SETTINGS_ENTRIES: Final = 32
# CONTINUATION flood (CVE-2024-27316 family): empty CONTINUATIONs add no bytes to a header
# block, so the block size limit alone does not end it. nghttp2 allows 8 per block.
MAX_CONTINUATIONS: Final = 8
# Stream errors we answer with RST_STREAM (window overruns, malformed frames on a stream,
# streams over MAX_CONCURRENT_STREAMS, ...): a peer provoking more than this over the
# connection's life gets ENHANCE_YOUR_CALM (the h2 crate's max_local_error_reset_streams,
# 1024; RUSTSEC-2024-0003). Late frames on already closed streams are not counted.
MAX_LOCAL_ERROR_RESETS: Final = 1024

_HDR = struct.Struct(">HBBBL")  # length is 24 bits: 16 + 8
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Serialise one frame (used by the connection and by tests' frame factory)."""
    n = len(payload)
    return _HDR.pack(n >> 8, n & 0xFF, ftype, flags, stream_id & MAX_WINDOW) + payload


def frame_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    return _HDR.pack(length >> 8, length & 0xFF, ftype, flags, stream_id)


# ---------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------

# ConnectRequest, InvalidRequest and ConnectResponse come from `connect`.


@dataclass(frozen=True, slots=True)
class Data:
    """Tunnel bytes. Call `ack_data(stream_id, len(data))` once they are consumed;
    `flow_controlled_len` includes padding, which the connection credits itself."""

    stream_id: int
    data: bytes
    flow_controlled_len: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed the stream (END_STREAM, i.e. TCP FIN)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream was aborted: by the peer's RST_STREAM (`remote`), or by us after a
    stream error, or because a GOAWAY refused it (code REFUSED_STREAM: safe to retry)."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class PingReceived:
    data: bytes


@dataclass(frozen=True, slots=True)
class PingAck:
    data: bytes


@dataclass(frozen=True, slots=True)
class GoAway:
    last_stream_id: int
    error_code: int
    debug: bytes


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """Send window grew; stream_id 0 means the connection window."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    changes: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SettingsAcked:
    pass


Event = (
    ConnectRequest
    | InvalidRequest
    | ConnectResponse
    | Data
    | StreamEnded
    | StreamReset
    | PingReceived
    | PingAck
    | GoAway
    | WindowUpdated
    | SettingsChanged
    | SettingsAcked
)

# ---------------------------------------------------------------------------------------
# Stream state machine (RFC 9113 section 5.1, without push / reserved states)
# ---------------------------------------------------------------------------------------


class StreamState(Enum):
    IDLE = "idle"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"
    HALF_CLOSED_REMOTE = "half-closed (remote)"
    CLOSED = "closed"


class StreamInput(Enum):
    SEND_HEADERS = "send HEADERS"
    RECV_HEADERS = "recv HEADERS"
    SEND_END = "send END_STREAM"
    RECV_END = "recv END_STREAM"
    SEND_RST = "send RST_STREAM"
    RECV_RST = "recv RST_STREAM"


_S = StreamState
_I = StreamInput

# (state, input) -> next state. Anything missing is a protocol violation.
STREAM_TRANSITIONS: Final[dict[tuple[StreamState, StreamInput], StreamState]] = {
    (_S.IDLE, _I.SEND_HEADERS): _S.OPEN,
    (_S.IDLE, _I.RECV_HEADERS): _S.OPEN,
    (_S.OPEN, _I.SEND_HEADERS): _S.OPEN,
    (_S.OPEN, _I.RECV_HEADERS): _S.OPEN,
    (_S.OPEN, _I.SEND_END): _S.HALF_CLOSED_LOCAL,
    (_S.OPEN, _I.RECV_END): _S.HALF_CLOSED_REMOTE,
    (_S.OPEN, _I.SEND_RST): _S.CLOSED,
    (_S.OPEN, _I.RECV_RST): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_HEADERS): _S.HALF_CLOSED_LOCAL,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_END): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _I.SEND_RST): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _I.RECV_RST): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_HEADERS): _S.HALF_CLOSED_REMOTE,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_END): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _I.SEND_RST): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _I.RECV_RST): _S.CLOSED,
}


@dataclass(slots=True)
class _Stream:
    stream_id: int
    state: StreamState = StreamState.IDLE
    send_window: int = DEFAULT_WINDOW
    recv_window: int = STREAM_WINDOW  # what the peer may still send us
    unacked: int = 0  # consumed by the app, not yet returned in a WINDOW_UPDATE
    pending: list[bytes] = field(default_factory=list)
    pending_len: int = 0
    pending_end: bool = False
    headers_done: bool = False  # final response headers sent/received
    tunnel_open: bool = False  # 2xx exchanged: DATA allowed

    def move(self, inp: StreamInput) -> None:
        nxt = STREAM_TRANSITIONS.get((self.state, inp))
        if nxt is None:
            raise UsageError(
                f"stream {self.stream_id}: cannot {inp.value} in state {self.state.value}"
            )
        self.state = nxt


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


# ---------------------------------------------------------------------------------------
# The connection
# ---------------------------------------------------------------------------------------


class HboneConnection:
    """One HTTP/2 connection carrying HBONE CONNECT streams (sans-IO)."""

    def __init__(
        self,
        role: Role,
        *,
        stream_window: int = STREAM_WINDOW,
        connection_window: int = CONNECTION_WINDOW,
        max_frame_size: int = MAX_FRAME_SIZE,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        premature_reset_min_streams: int = PREMATURE_RESET_MIN_STREAMS,
        max_unsent_control: int = MAX_UNSENT_CONTROL,
    ) -> None:
        self.role = role
        self._client = role is Role.CLIENT
        self._out: list[bytes | memoryview] = []
        self._buf = bytearray()
        self._preface_pending = not self._client  # server must first see the client preface
        self._settings_seen = False  # first frame from the peer must be SETTINGS
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, None] = {}  # streams with queued DATA (ordered set)
        self._reset_by_us: set[int] = set()
        self._next_sid = 1 if self._client else 2
        self._last_peer_sid = 0
        self._cont: tuple[int, int, bytearray] | None = (
            None  # (sid, flags, block) awaiting CONTINUATION
        )
        self.closed = False
        self.goaway_received: GoAway | None = None
        self.goaway_sent = False
        # Abuse accounting (see the limits above).
        self._premature_reset_min = premature_reset_min_streams
        self.peer_streams = 0  # streams the peer opened (and we accepted into the table)
        self.premature_resets = 0  # of those, reset by the peer before our response
        self._max_unsent_control = max_unsent_control
        self.unsent_control = 0  # control frames queued, not yet confirmed written
        self.local_error_resets = 0  # RST_STREAMs we sent because the peer erred
        self._cont_frames = 0  # CONTINUATIONs in the header block being received

        # Our settings (what the peer must respect).
        self.local_stream_window = stream_window
        self.local_max_frame = max_frame_size
        self.local_max_streams = max_concurrent_streams
        self._conn_recv_window = connection_window
        self._conn_window_target = connection_window
        self._conn_unacked = 0
        # Peer settings (what we must respect).
        self.peer_max_frame = DEFAULT_MAX_FRAME
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_streams = 2**31 - 1
        self._conn_send_window = DEFAULT_WINDOW

        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST_SIZE)

        if self._client:
            self._out.append(PREFACE)
        settings = [
            (SETTINGS_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
            (SETTINGS_INITIAL_WINDOW_SIZE, stream_window),
            (SETTINGS_MAX_FRAME_SIZE, max_frame_size),
            (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE),
        ]
        if self._client:
            settings.insert(0, (SETTINGS_ENABLE_PUSH, 0))
        self._out.append(frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings)))
        if connection_window > DEFAULT_WINDOW:
            self._out.append(
                frame(WINDOW_UPDATE, 0, 0, _U32.pack(connection_window - DEFAULT_WINDOW))
            )

    # ------------------------------------------------------------------ inspection

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def open_local_streams(self) -> int:
        """Streams we initiated that are still open (counts against the peer's limit)."""
        parity = 1 if self._client else 0
        return sum(1 for sid in self._streams if sid & 1 == parity)

    def can_open_stream(self) -> bool:
        return (
            not self.closed
            and self.goaway_received is None
            and not self.goaway_sent
            and self.open_local_streams < self.peer_max_streams
            and self._next_sid <= MAX_WINDOW
        )

    def stream_state(self, stream_id: int) -> StreamState:
        s = self._streams.get(stream_id)
        if s is not None:
            return s.state
        limit = self._next_sid if stream_id % 2 == self._next_sid % 2 else self._last_peer_sid + 1
        return StreamState.CLOSED if stream_id < limit else StreamState.IDLE

    def control_written(self) -> None:
        """The I/O layer confirms that what `data_to_send()` returned has left our buffers
        (the transport is not backed up): queued control frames no longer count against
        MAX_UNSENT_CONTROL. A driver that never calls this gets ENHANCE_YOUR_CALM after
        that many PING/SETTINGS ACKs and RST_STREAMs."""
        self.unsent_control = 0

    def pending_send(self, stream_id: int) -> int:
        """Bytes queued on the stream waiting for flow-control window."""
        s = self._streams.get(stream_id)
        return s.pending_len if s is not None else 0

    def send_window(self, stream_id: int) -> int:
        s = self._streams.get(stream_id)
        if s is None:
            return 0
        return max(0, min(s.send_window, self._conn_send_window))

    # ------------------------------------------------------------------ commands

    def connect(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> int:
        """Client: open a stream with `CONNECT authority`; returns the stream id."""
        if not self._client:
            raise UsageError("only the client side opens HBONE streams")
        if self.closed or self.goaway_received is not None or self.goaway_sent:
            raise ConnectionClosedError("HTTP/2 connection is closed or draining; open a new one")
        if self.open_local_streams >= self.peer_max_streams:
            raise UsageError(f"peer allows only {self.peer_max_streams} concurrent streams")
        sid = self._next_sid
        if sid > MAX_WINDOW:
            raise ConnectionClosedError("stream ids exhausted on this connection; open a new one")
        self._next_sid += 2
        s = self._new_stream(sid)
        s.move(StreamInput.SEND_HEADERS)
        self._send_headers(sid, connect.request_block(authority, headers), end=False)
        return sid

    def respond(self, stream_id: int, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Server: answer a CONNECT. 2xx opens the tunnel; anything else ends the stream."""
        if self._client:
            raise UsageError("only the server side responds")
        s = self._live_stream(stream_id)
        if s.headers_done:
            raise UsageError(f"stream {stream_id}: response already sent")
        try:
            block = connect.response_block(status, headers)
        except UsageError as e:
            raise UsageError(f"stream {stream_id}: {e}") from None
        s.headers_done = True
        s.move(StreamInput.SEND_HEADERS)
        if 200 <= status < 300:
            s.tunnel_open = True
            self._send_headers(stream_id, block, end=False)
            return
        self._send_headers(stream_id, block, end=True)
        s.move(StreamInput.SEND_END)
        if s.state is not StreamState.CLOSED:
            # The client may still be sending; we are not interested (RFC 9113 section 8.1).
            self._rst(s, ErrorCode.NO_ERROR)
        else:
            self._close(s)

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Queue tunnel bytes; they go out as the peer's windows allow."""
        s = self._live_stream(stream_id)
        if not s.tunnel_open:
            raise UsageError(f"stream {stream_id}: tunnel not established (no 2xx yet)")
        if s.pending_end or s.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE):
            raise UsageError(f"stream {stream_id}: already half-closed locally")
        n = len(data)
        if not s.pending_len and n <= s.send_window and n <= self._conn_send_window:
            # Fast path: everything fits, no queueing.
            if n:
                self._emit_data(s, data, end)
            elif end:
                self._out.append(frame_header(DATA, FLAG_END_STREAM, stream_id, 0))
            if end:
                self._after_send_end(s)
            return
        if n:
            s.pending.append(bytes(data))
            s.pending_len += n
        if end:
            s.pending_end = True
        self._blocked[stream_id] = None
        self._flush_stream(s)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (END_STREAM), after any queued data."""
        self.send_data(stream_id, b"", end=True)

    def reset(self, stream_id: int, code: ErrorCode | int = ErrorCode.CANCEL) -> None:
        s = self._streams.get(stream_id)
        if s is None:
            return  # already closed: resetting again is a no-op
        self._rst(s, code)

    def ack_data(self, stream_id: int, n: int) -> None:
        """The application consumed `n` bytes of the stream: re-open windows (back-pressure)."""
        if n <= 0:
            return
        self._conn_unacked += n
        if self._conn_unacked >= self._conn_window_target // 4:
            inc = self._conn_unacked
            self._conn_unacked = 0
            self._conn_recv_window += inc
            self._out.append(frame(WINDOW_UPDATE, 0, 0, _U32.pack(inc)))
        s = self._streams.get(stream_id)
        if s is None or s.state in (StreamState.HALF_CLOSED_REMOTE, StreamState.CLOSED):
            return
        s.unacked += n
        if s.unacked >= self.local_stream_window // 4:
            inc = s.unacked
            s.unacked = 0
            s.recv_window += inc
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(inc)))

    def ping(self, data: bytes = b"\0" * 8) -> None:
        if len(data) != 8:
            raise UsageError("PING payload must be 8 bytes")
        self._out.append(frame(PING, 0, 0, data))

    def goaway(self, code: ErrorCode | int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        """Start draining: no new streams either way; existing ones finish."""
        self.goaway_sent = True
        self._out.append(frame(GOAWAY, 0, 0, _GOAWAY.pack(self._last_peer_sid, int(code)) + debug))

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the transport; returns the events they complete.

        Raises `ProtocolError` (after queueing a GOAWAY) on a connection error.
        """
        if self.closed:
            return []
        events: list[Event] = []
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        try:
            pos = self._parse(src, events)
        except ProtocolError:
            self.closed = True
            self._buf = bytearray()
            raise
        if src is buf:
            del buf[:pos]
        elif pos < len(data):
            self._buf = bytearray(memoryview(data)[pos:])
        return events

    def _parse(self, src: bytes | bytearray, events: list[Event]) -> int:
        pos = 0
        end = len(src)
        if self._preface_pending:
            n = min(end, len(PREFACE))
            if src[:n] != PREFACE[:n]:
                self._fail(
                    ErrorCode.PROTOCOL_ERROR,
                    "client did not send the HTTP/2 preface (not an HBONE client?)",
                )
            if n < len(PREFACE):
                return 0
            self._preface_pending = False
            pos = len(PREFACE)
        unpack = _HDR.unpack_from
        max_frame = self.local_max_frame
        with memoryview(src) as mv:
            while end - pos >= 9:
                hi, lo, ftype, flags, sid = unpack(src, pos)
                length = (hi << 8) | lo
                if length > max_frame:
                    self._fail(
                        ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {max_frame}"
                    )
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                sid &= MAX_WINDOW
                if ftype == DATA and self._cont is None and self._settings_seen:
                    self._on_data(sid, flags, mv[start:pos], events)
                else:
                    self._on_frame(ftype, flags, sid, mv[start:pos], events)
                if self.closed:
                    break
        return pos

    def _fail(self, code: ErrorCode, message: str) -> None:
        if not self.closed:
            self._out.append(
                frame(
                    GOAWAY,
                    0,
                    0,
                    _GOAWAY.pack(self._last_peer_sid, int(code)) + message.encode()[:256],
                )
            )
            self.goaway_sent = True
            self.closed = True
        raise ProtocolError(code, message)

    def _on_frame(
        self, ftype: int, flags: int, sid: int, payload: memoryview, events: list[Event]
    ) -> None:
        if self._cont is not None and (ftype != CONTINUATION or sid != self._cont[0]):
            self._fail(ErrorCode.PROTOCOL_ERROR, "header block interrupted by another frame")
        if not self._settings_seen:
            if ftype != SETTINGS or flags & FLAG_ACK:
                self._fail(ErrorCode.PROTOCOL_ERROR, "first frame from the peer must be SETTINGS")
            self._settings_seen = True
        if ftype == DATA:
            self._on_data(sid, flags, payload, events)
        elif ftype == HEADERS:
            self._on_headers(sid, flags, payload, events)
        elif ftype == CONTINUATION:
            self._on_continuation(sid, flags, payload, events)
        elif ftype == SETTINGS:
            self._on_settings(sid, flags, payload, events)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(sid, payload, events)
        elif ftype == RST_STREAM:
            self._on_rst(sid, payload, events)
        elif ftype == PING:
            if sid:
                self._fail(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if flags & FLAG_ACK:
                events.append(PingAck(bytes(payload)))
            else:
                self._control(frame(PING, FLAG_ACK, 0, bytes(payload)))
                events.append(PingReceived(bytes(payload)))
        elif ftype == GOAWAY:
            self._on_goaway(sid, payload, events)
        elif ftype == PRIORITY:
            if not sid:
                self._fail(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self._stream_error(sid, ErrorCode.FRAME_SIZE_ERROR, events)
        elif ftype == PUSH_PROMISE:
            self._fail(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE received but push is disabled")
        # Unknown frame types are ignored (RFC 9113 section 5.5).

    # DATA -------------------------------------------------------------------

    def _on_data(self, sid: int, flags: int, payload: memoryview, events: list[Event]) -> None:
        if self._cont is not None:
            self._fail(ErrorCode.PROTOCOL_ERROR, "header block interrupted by DATA")
        if not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        flen = len(payload)
        # Connection-level flow control applies to every DATA frame, even on dead streams.
        self._conn_recv_window -= flen
        if self._conn_recv_window < 0:
            self._fail(ErrorCode.FLOW_CONTROL_ERROR, "peer overran the connection window")
        s = self._streams.get(sid)
        if s is None:
            if self.stream_state(sid) is StreamState.IDLE:
                self._fail(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            self.ack_data(0, flen)
            if sid not in self._reset_by_us:
                self._late_frame_reset(sid)
            return
        if s.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            self.ack_data(0, flen)
            self._stream_error(sid, ErrorCode.STREAM_CLOSED, events)
            return
        s.recv_window -= flen
        if s.recv_window < 0:
            self.ack_data(0, flen)
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        if self._client and not s.headers_done:
            # A response starts with HEADERS; DATA before it is malformed (section 8.1).
            self.ack_data(0, flen)
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, events)
            return
        if flags & FLAG_PADDED:
            if flen < 1 or payload[0] >= flen:
                self._fail(ErrorCode.PROTOCOL_ERROR, "DATA padding exceeds the frame")
            body = payload[1 : flen - payload[0]]
            pad = flen - len(body)
            self._credit_padding(s, pad)
        else:
            body = payload
        if body:
            events.append(Data(sid, body.tobytes(), flen))
        if flags & FLAG_END_STREAM:
            self._recv_end(s, events)

    def _credit_padding(self, s: _Stream, pad: int) -> None:
        # Padding is never delivered, so the application would never ack it: do it here.
        self.ack_data(s.stream_id, pad)

    def _recv_end(self, s: _Stream, events: list[Event]) -> None:
        s.move(StreamInput.RECV_END)
        events.append(StreamEnded(s.stream_id))
        if s.state is StreamState.CLOSED:
            self._close(s)

    # HEADERS ----------------------------------------------------------------

    def _on_headers(self, sid: int, flags: int, payload: memoryview, events: list[Event]) -> None:
        if not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        n = len(payload)
        start, stop = 0, n
        if flags & FLAG_PADDED:
            if n < 1:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "padded HEADERS too short")
            start = 1
            stop = n - payload[0]
        if flags & FLAG_PRIORITY:
            start += 5
        if stop < start:
            self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS padding/priority exceed the frame")
        if stop - start > MAX_HEADER_BLOCK:
            # Checked here too, not only on CONTINUATION: one HEADERS frame may be as large
            # as our MAX_FRAME_SIZE (1 MiB), which we would otherwise copy and HPACK-decode.
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM, f"header block larger than {MAX_HEADER_BLOCK} bytes"
            )
        block = bytearray(payload[start:stop])
        if flags & FLAG_END_HEADERS:
            self._on_header_block(sid, flags, block, events)
        else:
            self._cont = (sid, flags, block)
            self._cont_frames = 0

    def _on_continuation(
        self, sid: int, flags: int, payload: memoryview, events: list[Event]
    ) -> None:
        if self._cont is None:
            self._fail(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            return
        csid, hflags, block = self._cont
        block += payload
        self._cont_frames += 1
        if self._cont_frames > MAX_CONTINUATIONS:
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"header block split into more than {MAX_CONTINUATIONS} CONTINUATION frames",
            )
        if len(block) > MAX_HEADER_BLOCK:
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM, f"header block larger than {MAX_HEADER_BLOCK} bytes"
            )
        if flags & FLAG_END_HEADERS:
            self._cont = None
            self._on_header_block(csid, hflags, block, events)

    def _on_header_block(self, sid: int, flags: int, block: bytearray, events: list[Event]) -> None:
        # Decode first, always: the HPACK table must stay in sync even for refused streams.
        try:
            fields = cast(list[tuple[bytes, bytes]], self._decoder.decode(bytes(block), raw=True))
        except (hpack.HPACKError, IndexError, ValueError, UnicodeError) as e:
            self._fail(ErrorCode.COMPRESSION_ERROR, f"cannot decode header block: {e}")
            return
        end_stream = bool(flags & FLAG_END_STREAM)
        s = self._streams.get(sid)
        if s is None:
            if self._client or sid % 2 == 0 or sid <= self._last_peer_sid:
                if sid in self._reset_by_us:
                    return  # in flight when we reset it
                if self.stream_state(sid) is StreamState.CLOSED:
                    self._late_frame_reset(sid)
                    return
                self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS on unexpected stream {sid}")
            self._last_peer_sid = sid
            if self.goaway_sent:
                return  # draining: ignore new streams (RFC 9113 section 6.8)
            if len(self._streams) >= self.local_max_streams:
                self._error_reset(sid, ErrorCode.REFUSED_STREAM)
                return
            s = self._new_stream(sid)
            s.move(StreamInput.RECV_HEADERS)
            self.peer_streams += 1
            self._on_request(s, fields, end_stream, events)
            return
        if s.state not in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL):
            self._stream_error(sid, ErrorCode.STREAM_CLOSED, events)
            return
        s.move(StreamInput.RECV_HEADERS)
        if self._client and not s.headers_done:
            self._on_response(s, fields, end_stream, events)
            return
        # Trailers: must end the stream; their content is irrelevant to a tunnel.
        if not end_stream:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, events)
            return
        self._recv_end(s, events)

    def _on_request(
        self, s: _Stream, fields: list[tuple[bytes, bytes]], end_stream: bool, events: list[Event]
    ) -> None:
        ev = connect.parse_request(s.stream_id, fields, end_stream)
        if isinstance(ev, InvalidRequest) and end_stream:
            s.move(StreamInput.RECV_END)
        events.append(ev)

    def _on_response(
        self, s: _Stream, fields: list[tuple[bytes, bytes]], end_stream: bool, events: list[Event]
    ) -> None:
        parsed = connect.parse_response(fields)
        if parsed is None:
            self._stream_error(s.stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        code, regular = parsed
        if code < 200:
            if end_stream:
                self._stream_error(s.stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return  # informational: wait for the final response
        s.headers_done = True
        s.tunnel_open = code < 300
        events.append(ConnectResponse(s.stream_id, code, regular))
        if end_stream:
            self._recv_end(s, events)
        elif not s.tunnel_open:
            # Non-2xx without END_STREAM: the stream carries nothing we want.
            self._rst(s, ErrorCode.CANCEL)

    # control frames -----------------------------------------------------------

    def _on_settings(self, sid: int, flags: int, payload: memoryview, events: list[Event]) -> None:
        if sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        n = len(payload)
        if flags & FLAG_ACK:
            if n:
                self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            events.append(SettingsAcked())
            return
        if n % 6:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        if n // 6 > MAX_SETTINGS_ENTRIES:
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"SETTINGS with {n // 6} entries (more than {MAX_SETTINGS_ENTRIES})",
            )
        changes = []
        for off in range(0, n, 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for st in self._streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        self._fail(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= 2**24 - 1:
                    self._fail(ErrorCode.PROTOCOL_ERROR, f"invalid MAX_FRAME_SIZE {value}")
                self.peer_max_frame = value
            elif key == SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == SETTINGS_HEADER_TABLE_SIZE:
                self._encoder.header_table_size = min(value, 65536)
            elif key == SETTINGS_ENABLE_PUSH and (value > 1 or (self._client and value)):
                self._fail(ErrorCode.PROTOCOL_ERROR, f"invalid ENABLE_PUSH {value}")
            changes.append((key, value))
        self._control(frame(SETTINGS, FLAG_ACK, 0))
        events.append(SettingsChanged(tuple(changes)))
        if self._blocked:
            self._flush_blocked(events)

    def _on_window_update(self, sid: int, payload: memoryview, events: list[Event]) -> None:
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        inc = _U32.unpack_from(payload)[0] & MAX_WINDOW
        if not sid:
            if inc == 0:
                self._fail(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE with increment 0")
            self._conn_send_window += inc
            if self._conn_send_window > MAX_WINDOW:
                self._fail(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            events.append(WindowUpdated(0))
            if self._blocked:
                self._flush_blocked(events)
            return
        s = self._streams.get(sid)
        if s is None:
            if self.stream_state(sid) is StreamState.IDLE:
                self._fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return  # closed stream: ignore (section 6.9)
        if inc == 0:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, events)
            return
        s.send_window += inc
        if s.send_window > MAX_WINDOW:
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        if s.pending_len or s.pending_end:
            self._flush_stream(s)
        events.append(WindowUpdated(sid))

    def _on_rst(self, sid: int, payload: memoryview, events: list[Event]) -> None:
        if not sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        s = self._streams.get(sid)
        if s is None:
            if self.stream_state(sid) is StreamState.IDLE:
                self._fail(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        s.move(StreamInput.RECV_RST)
        self._close(s)
        events.append(StreamReset(sid, _U32.unpack_from(payload)[0], remote=True))
        if not self._client and not s.headers_done:
            self.premature_resets += 1
            if (
                self.peer_streams >= self._premature_reset_min
                and 2 * self.premature_resets >= self.peer_streams
            ):
                self._fail(
                    ErrorCode.ENHANCE_YOUR_CALM,
                    f"peer reset {self.premature_resets} of {self.peer_streams} streams before "
                    "they were answered (rapid reset)",
                )

    def _on_goaway(self, sid: int, payload: memoryview, events: list[Event]) -> None:
        if sid:
            self._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            self._fail(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY payload too short")
        last, code = _GOAWAY.unpack_from(payload)
        last &= MAX_WINDOW
        ev = GoAway(last, code, bytes(payload[8:]))
        self.goaway_received = ev
        events.append(ev)
        # Streams we opened above last_stream_id were never processed: safe to retry.
        parity = 1 if self._client else 0
        for s in [
            s for s in self._streams.values() if s.stream_id & 1 == parity and s.stream_id > last
        ]:
            self._close(s)
            events.append(StreamReset(s.stream_id, ErrorCode.REFUSED_STREAM, remote=True))

    # ------------------------------------------------------------------ helpers

    def _new_stream(self, sid: int) -> _Stream:
        s = _Stream(sid, send_window=self.peer_initial_window, recv_window=self.local_stream_window)
        self._streams[sid] = s
        return s

    def _live_stream(self, stream_id: int) -> _Stream:
        s = self._streams.get(stream_id)
        if s is None:
            raise UsageError(f"stream {stream_id} is not open")
        if self.closed:
            raise ConnectionClosedError("HTTP/2 connection is closed")
        return s

    def _close(self, s: _Stream) -> None:
        s.state = StreamState.CLOSED
        self._streams.pop(s.stream_id, None)
        self._blocked.pop(s.stream_id, None)
        s.pending.clear()
        s.pending_len = 0

    def _rst(self, s: _Stream, code: ErrorCode | int) -> None:
        # Not counted as a control reply: this is also the application's own reset(), which
        # must never raise; resets the peer provokes are counted by the callers.
        if s.state is not StreamState.CLOSED:
            s.move(StreamInput.SEND_RST)
        self._out.append(frame(RST_STREAM, 0, s.stream_id, _U32.pack(int(code))))
        self._close(s)
        if len(self._reset_by_us) > 1024:
            self._reset_by_us.clear()
        self._reset_by_us.add(s.stream_id)

    def _stream_error(self, sid: int, code: ErrorCode, events: list[Event]) -> None:
        s = self._streams.get(sid)
        if s is None:
            self._error_reset(sid, code)
            return
        self._count_error_reset()
        self._rst(s, code)
        self._count_control()
        events.append(StreamReset(sid, int(code), remote=False))

    def _error_reset(self, sid: int, code: ErrorCode) -> None:
        """RST_STREAM for a stream with no state left (closed, refused)."""
        self._count_error_reset()
        self._control(frame(RST_STREAM, 0, sid, _U32.pack(int(code))))

    def _late_frame_reset(self, sid: int) -> None:
        """RST_STREAM(STREAM_CLOSED) for a frame on a stream that is already closed. Not
        counted against MAX_LOCAL_ERROR_RESETS: such frames can be honest races (sent
        before our END_STREAM or reset arrived); a flood of them is bounded as control
        frames are."""
        self._control(frame(RST_STREAM, 0, sid, _U32.pack(ErrorCode.STREAM_CLOSED)))

    def _count_error_reset(self) -> None:
        self.local_error_resets += 1
        if self.local_error_resets > MAX_LOCAL_ERROR_RESETS:
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"peer caused more than {MAX_LOCAL_ERROR_RESETS} stream errors",
            )

    def _control(self, data: bytes) -> None:
        """Queue a control frame the peer provoked (ACK or RST_STREAM); bounded while the
        peer is not reading (only called while receiving, so the ProtocolError it may raise
        goes to `receive_data()`'s caller)."""
        self._out.append(data)
        self._count_control()

    def _count_control(self) -> None:
        self.unsent_control += 1
        if self.unsent_control > self._max_unsent_control:
            self._fail(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"more than {self._max_unsent_control} control frames queued and the peer "
                "is not reading them (PING/SETTINGS/reset flood)",
            )

    def _send_headers(self, sid: int, block: list[tuple[bytes, bytes]], *, end: bool) -> None:
        encoded = self._encoder.encode(block)
        limit = self.peer_max_frame
        flags = FLAG_END_STREAM if end else 0
        if len(encoded) <= limit:
            self._out.append(frame(HEADERS, flags | FLAG_END_HEADERS, sid, encoded))
            return
        chunks = [encoded[i : i + limit] for i in range(0, len(encoded), limit)]
        self._out.append(frame(HEADERS, flags, sid, chunks[0]))
        for i, c in enumerate(chunks[1:], start=2):
            self._out.append(
                frame(CONTINUATION, FLAG_END_HEADERS if i == len(chunks) else 0, sid, c)
            )

    def _emit_data(self, s: _Stream, data: bytes, end: bool) -> None:
        """Send `data` (which fits both windows) as DATA frames; END_STREAM on the last."""
        n = len(data)
        s.send_window -= n
        self._conn_send_window -= n
        limit = self.peer_max_frame
        out = self._out
        sid = s.stream_id
        if n <= limit:
            out.append(frame_header(DATA, FLAG_END_STREAM if end else 0, sid, n))
            out.append(data)
            return
        mv = memoryview(data)
        for off in range(0, n, limit):
            chunk = mv[off : off + limit]
            last = off + limit >= n
            out.append(
                frame_header(DATA, FLAG_END_STREAM if (end and last) else 0, sid, len(chunk))
            )
            out.append(chunk)

    def _after_send_end(self, s: _Stream) -> None:
        s.move(StreamInput.SEND_END)
        if s.state is StreamState.CLOSED:
            self._close(s)

    def _flush_stream(self, s: _Stream) -> None:
        while s.pending_len:
            room = min(s.send_window, self._conn_send_window)
            if room <= 0:
                return
            head = s.pending[0]
            if len(head) <= room:
                s.pending.pop(0)
                s.pending_len -= len(head)
                last = not s.pending_len
                self._emit_data(s, head, s.pending_end and last)
                if last and s.pending_end:
                    s.pending_end = False
                    self._blocked.pop(s.stream_id, None)
                    self._after_send_end(s)
                    return
            else:
                s.pending[0] = head[room:]
                s.pending_len -= room
                self._emit_data(s, head[:room], False)
        self._blocked.pop(s.stream_id, None)
        if s.pending_end:
            s.pending_end = False
            self._out.append(frame_header(DATA, FLAG_END_STREAM, s.stream_id, 0))
            self._after_send_end(s)

    def _flush_blocked(self, events: list[Event]) -> None:
        for sid in list(self._blocked):
            s = self._streams.get(sid)
            if s is None:
                self._blocked.pop(sid, None)
                continue
            before = s.pending_len
            self._flush_stream(s)
            if s.pending_len != before:
                events.append(WindowUpdated(sid))
            if self._conn_send_window <= 0:
                break
