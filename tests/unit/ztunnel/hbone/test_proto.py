"""Sans-IO HBONE framing: bytes in, events out; no sockets."""

from __future__ import annotations

import contextlib
import struct

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.errors import ConnectionClosedError, ErrorCode, HboneError, ProtocolError
from ketch.ztunnel.hbone.headers import parse_authority
from ketch.ztunnel.hbone.proto import (
    ConnectRequest,
    ConnectResponse,
    Data,
    Event,
    GoAway,
    HboneConnection,
    InvalidRequest,
    PingAck,
    Role,
    StreamEnded,
    StreamReset,
    StreamState,
    frame,
)


def pump(a: HboneConnection, b: HboneConnection) -> tuple[list[Event], list[Event]]:
    """Exchange bytes until both sides are quiet; returns (events at a, events at b)."""
    ea: list[Event] = []
    eb: list[Event] = []
    for _ in range(100):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return ea, eb
        if out_a:
            eb += b.receive_data(out_a)
        if out_b:
            ea += a.receive_data(out_b)
    raise AssertionError("connections never went quiet")


def of(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture
def pair() -> tuple[HboneConnection, HboneConnection]:
    c, s = HboneConnection(Role.CLIENT), HboneConnection(Role.SERVER)
    pump(c, s)
    return c, s


def open_tunnel(c: HboneConnection, s: HboneConnection, authority: str = "10.0.0.1:80") -> int:
    sid = c.connect(authority, [("baggage", "k8s.namespace.name=a")])
    _, ev = pump(c, s)
    (req,) = of(ev, ConnectRequest)
    assert req == ConnectRequest(
        sid, authority, (("baggage", "k8s.namespace.name=a"),), parse_authority(authority)
    )
    s.respond(sid, 200)
    ec, _ = pump(c, s)
    assert of(ec, ConnectResponse) == [ConnectResponse(sid, 200, ())]
    return sid


def test_tunnel_data_both_ways_and_half_close(
    pair: tuple[HboneConnection, HboneConnection],
) -> None:
    c, s = pair
    sid = open_tunnel(c, s)
    c.send_data(sid, b"ping")
    c.end_stream(sid)
    _, ev = pump(c, s)
    assert of(ev, Data) == [Data(sid, b"ping", 4)]
    assert of(ev, StreamEnded) == [StreamEnded(sid)]
    assert s.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    # Server can still talk after the client's half-close.
    s.send_data(sid, b"pong", end=True)
    ec, _ = pump(c, s)
    assert of(ec, Data) == [Data(sid, b"pong", 4)]
    assert of(ec, StreamEnded) == [StreamEnded(sid)]
    assert c.stream_state(sid) is StreamState.CLOSED
    assert s.stream_state(sid) is StreamState.CLOSED
    assert c.open_streams == s.open_streams == 0


def test_flow_control_queues_until_acked(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    sid = open_tunnel(c, s)
    blob = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB > 4 MiB stream window
    c.send_data(sid, blob)
    _, ev = pump(c, s)
    got = b"".join(e.data for e in of(ev, Data))
    assert len(got) == proto.STREAM_WINDOW
    assert c.pending_send(sid) == len(blob) - proto.STREAM_WINDOW
    # Nothing more flows until the receiver consumes (back-pressure).
    assert pump(c, s) == ([], [])
    s.ack_data(sid, len(got))
    _, ev = pump(c, s)
    got += b"".join(e.data for e in of(ev, Data))
    assert got == blob
    assert c.pending_send(sid) == 0
    assert max(len(e.data) for e in of(ev, Data)) <= proto.MAX_FRAME_SIZE


def test_connection_window_shared_by_streams(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    sids = [open_tunnel(c, s) for _ in range(5)]
    for sid in sids:
        c.send_data(sid, b"x" * proto.STREAM_WINDOW)
    _, ev = pump(c, s)
    assert sum(len(e.data) for e in of(ev, Data)) == proto.CONNECTION_WINDOW
    for sid in sids:
        n = sum(len(e.data) for e in of(ev, Data) if e.stream_id == sid)
        s.ack_data(sid, n)
    _, ev = pump(c, s)
    assert sum(len(e.data) for e in of(ev, Data)) == proto.STREAM_WINDOW
    assert all(c.pending_send(sid) == 0 for sid in sids)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([(":method", "GET"), (":authority", "10.0.0.1:80")], "only CONNECT"),
        ([(":method", "CONNECT"), (":authority", "example.com:80")], "not an IPv4"),
        ([(":method", "CONNECT"), (":authority", "10.0.0.1")], "expected ip:port"),
        ([(":method", "CONNECT"), (":authority", "fd00::1:80")], "not an IPv4"),
        ([(":method", "CONNECT"), (":authority", "10.0.0.1:0")], "out of range"),
        ([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":path", "/")], ":path"),
        ([(":method", "CONNECT"), (":scheme", "https"), (":authority", "1.2.3.4:5")], ":scheme"),
        ([(":method", "CONNECT")], "without :authority"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:5"), ("Upper", "x")], "malformed"),
        ([(":method", "CONNECT"), (":authority", "1.2.3.4:5"), ("connection", "x")], "malformed"),
        ([(":method", "CONNECT"), ("x", "1"), (":authority", "1.2.3.4:5")], "pseudo-header after"),
    ],
)
def test_invalid_requests_become_400(fields: list[tuple[str, str]], reason: str) -> None:
    s = HboneConnection(Role.SERVER)
    enc = hpack.Encoder()
    wire = proto.PREFACE + frame(proto.SETTINGS, 0, 0)
    wire += frame(proto.HEADERS, proto.FLAG_END_HEADERS, 1, enc.encode(fields))
    (ev,) = of(s.receive_data(wire), InvalidRequest)
    assert ev.stream_id == 1
    assert ev.status == 400
    assert reason in ev.reason
    s.respond(1, 400)
    assert s.stream_state(1) is StreamState.CLOSED
    # The server still accepts a good request on the same connection.
    good = enc.encode([(":method", "CONNECT"), (":authority", "[fd00::1]:8080")])
    evs = s.receive_data(frame(proto.HEADERS, proto.FLAG_END_HEADERS, 3, good))
    assert of(evs, ConnectRequest) == [
        ConnectRequest(3, "[fd00::1]:8080", (), parse_authority("[fd00::1]:8080"))
    ]


def test_error_response_ends_stream_and_client_sees_status(
    pair: tuple[HboneConnection, HboneConnection],
) -> None:
    c, s = pair
    sid = c.connect("10.0.0.1:80")
    pump(c, s)
    s.respond(sid, 401)
    ec, _es = pump(c, s)
    assert of(ec, ConnectResponse) == [ConnectResponse(sid, 401, ())]
    assert c.stream_state(sid) is StreamState.CLOSED
    assert s.stream_state(sid) is StreamState.CLOSED


def test_reset_propagates(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    sid = open_tunnel(c, s)
    c.reset(sid, ErrorCode.CONNECT_ERROR)
    _, es = pump(c, s)
    assert of(es, StreamReset) == [StreamReset(sid, ErrorCode.CONNECT_ERROR, remote=True)]
    with pytest.raises(HboneError):
        s.send_data(sid, b"late")


def test_ping_and_ack(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    c.ping(b"12345678")
    ec, _es = pump(c, s)
    assert of(ec, PingAck) == [PingAck(b"12345678")]


def test_goaway_refuses_unprocessed_streams(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    sid1 = open_tunnel(c, s)
    s.goaway()
    sid2 = c.connect("10.0.0.1:81")  # crosses the GOAWAY on the wire
    ec, es = pump(c, s)
    assert of(es, ConnectRequest) == []
    assert of(ec, GoAway) == [GoAway(sid1, 0, b"")]
    assert of(ec, StreamReset) == [StreamReset(sid2, ErrorCode.REFUSED_STREAM, remote=True)]
    assert not c.can_open_stream()
    with pytest.raises(ConnectionClosedError):
        c.connect("10.0.0.1:82")
    # The existing stream keeps working while draining.
    c.send_data(sid1, b"still here")
    _, es = pump(c, s)
    assert of(es, Data) == [Data(sid1, b"still here", 10)]


def test_max_concurrent_streams_enforced() -> None:
    c, s = HboneConnection(Role.CLIENT), HboneConnection(Role.SERVER, max_concurrent_streams=2)
    pump(c, s)
    assert c.peer_max_streams == 2
    c.connect("1.1.1.1:1")
    c.connect("1.1.1.1:2")
    assert not c.can_open_stream()
    # A client that ignores the limit gets REFUSED_STREAM.
    enc = hpack.Encoder()
    s.receive_data(c.data_to_send())
    blk = enc.encode([(":method", "CONNECT"), (":authority", "1.1.1.1:3")])
    raw = HboneConnection(Role.SERVER, max_concurrent_streams=0)
    raw.receive_data(proto.PREFACE + frame(proto.SETTINGS, 0, 0))
    raw.data_to_send()
    raw.receive_data(frame(proto.HEADERS, proto.FLAG_END_HEADERS, 1, blk))
    assert frame(proto.RST_STREAM, 0, 1, struct.pack(">L", 7)) in raw.data_to_send()


def test_headers_split_over_continuation() -> None:
    s = HboneConnection(Role.SERVER)
    blk = hpack.Encoder().encode(
        [(":method", "CONNECT"), (":authority", "1.2.3.4:5"), ("baggage", "v" * 100)]
    )
    wire = proto.PREFACE + frame(proto.SETTINGS, 0, 0)
    wire += frame(proto.HEADERS, 0, 1, blk[:10])
    wire += frame(proto.CONTINUATION, 0, 1, blk[10:20])
    wire += frame(proto.CONTINUATION, proto.FLAG_END_HEADERS, 1, blk[20:])
    assert of(s.receive_data(wire), ConnectRequest) == [
        ConnectRequest(1, "1.2.3.4:5", (("baggage", "v" * 100),), parse_authority("1.2.3.4:5"))
    ]


def test_interrupted_header_block_is_connection_error() -> None:
    s = HboneConnection(Role.SERVER)
    wire = proto.PREFACE + frame(proto.SETTINGS, 0, 0) + frame(proto.HEADERS, 0, 1, b"\x82")
    wire += frame(proto.PING, 0, 0, b"x" * 8)
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(wire)
    assert ei.value.code is ErrorCode.PROTOCOL_ERROR
    assert s.closed
    assert b"\x07" in s.data_to_send()  # a GOAWAY went out


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", ErrorCode.PROTOCOL_ERROR),
        (proto.PREFACE + frame(proto.PING, 0, 0, b"x" * 8), ErrorCode.PROTOCOL_ERROR),
        (proto.PREFACE + frame(proto.SETTINGS, 0, 0, b"12345"), ErrorCode.FRAME_SIZE_ERROR),
        (proto.PREFACE + frame(proto.SETTINGS, 0, 1), ErrorCode.PROTOCOL_ERROR),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0, struct.pack(">HL", 4, 2**31)),
            ErrorCode.FLOW_CONTROL_ERROR,
        ),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0, struct.pack(">HL", 5, 100)),
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0) + frame(proto.DATA, 0, 1, b"x"),
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0) + frame(proto.HEADERS, 4, 2, b"\x82"),
            ErrorCode.PROTOCOL_ERROR,
        ),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0) + frame(proto.HEADERS, 4, 1, b"\xff"),
            ErrorCode.COMPRESSION_ERROR,
        ),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0) + b"\x20\x00\x00\x00\x00\x00\x00\x00\x01",
            ErrorCode.FRAME_SIZE_ERROR,
        ),
        (
            proto.PREFACE
            + frame(proto.SETTINGS, 0, 0)
            + frame(proto.WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1)),
            ErrorCode.FLOW_CONTROL_ERROR,
        ),
        (
            proto.PREFACE + frame(proto.SETTINGS, 0, 0) + frame(proto.PUSH_PROMISE, 4, 1, b"1234"),
            ErrorCode.PROTOCOL_ERROR,
        ),
    ],
)
def test_connection_errors(wire: bytes, code: ErrorCode) -> None:
    s = HboneConnection(Role.SERVER)
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(wire)
    assert ei.value.code is code
    assert s.receive_data(b"more") == []


def test_unknown_frames_and_priority_ignored(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    sid = open_tunnel(c, s)
    ev = s.receive_data(frame(0xEE, 0, 0, b"whatever") + frame(proto.PRIORITY, 0, sid, b"\0" * 5))
    assert ev == []


def test_padded_data_and_window_credit(pair: tuple[HboneConnection, HboneConnection]) -> None:
    c, s = pair
    sid = open_tunnel(c, s)
    ev = s.receive_data(frame(proto.DATA, proto.FLAG_PADDED, sid, b"\x03abc\0\0\0"))
    assert ev == [Data(sid, b"abc", 7)]


# ---------------------------------------------------------------------------- hypothesis


def _client_bytes() -> bytes:
    c, s = HboneConnection(Role.CLIENT), HboneConnection(Role.SERVER)
    wire = c.data_to_send()
    s.receive_data(wire)
    c.receive_data(s.data_to_send())
    for i in range(3):
        sid = c.connect(f"10.0.0.{i}:80", [("forwarded", 'for="1.2.3.4:5"')])
        out = c.data_to_send()
        wire += out
        s.receive_data(out)
        s.respond(sid, 200)
        c.receive_data(s.data_to_send())
        c.send_data(sid, bytes([i]) * 1000, end=i == 1)
        c.ping(bytes(8))
        wire += c.data_to_send()
    return wire


CLIENT_WIRE = _client_bytes()


def _respond_all(s: HboneConnection, events: list[Event]) -> None:
    for e in events:
        if isinstance(e, ConnectRequest):
            s.respond(e.stream_id, 200)


def _feed(chunks: list[bytes]) -> list[Event]:
    s = HboneConnection(Role.SERVER)
    out: list[Event] = []
    for ch in chunks:
        evs = s.receive_data(ch)
        _respond_all(s, evs)
        out += evs
    return out


@given(st.integers(min_value=0, max_value=len(CLIENT_WIRE)))
def test_every_split_point_gives_same_events(split: int) -> None:
    whole = _feed([CLIENT_WIRE])
    assert _feed([CLIENT_WIRE[:split], CLIENT_WIRE[split:]]) == whole


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=200))
def test_random_fragmentation_gives_same_events(sizes: list[int]) -> None:
    chunks, pos = [], 0
    for n in sizes:
        chunks.append(CLIENT_WIRE[pos : pos + n])
        pos += n
    chunks.append(CLIENT_WIRE[pos:])
    assert _feed(chunks) == _feed([CLIENT_WIRE])


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.binary(max_size=400), st.sampled_from([Role.SERVER, Role.CLIENT]))
def test_hostile_bytes_only_raise_our_errors(junk: bytes, role: Role) -> None:
    conn = HboneConnection(role)
    prefix = proto.PREFACE if role is Role.SERVER else b""
    with contextlib.suppress(HboneError):
        conn.receive_data(prefix + frame(proto.SETTINGS, 0, 0) + junk)


FRAME_TYPES = st.sampled_from([*list(range(10)), 32])


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    st.lists(
        st.tuples(
            FRAME_TYPES,
            st.integers(0, 255),
            st.integers(0, 7),
            st.binary(max_size=24),
        ),
        max_size=20,
    ),
    st.sampled_from([Role.SERVER, Role.CLIENT]),
)
def test_hostile_frames_only_raise_our_errors(
    frames: list[tuple[int, int, int, bytes]], role: Role
) -> None:
    conn = HboneConnection(role)
    wire = (proto.PREFACE if role is Role.SERVER else b"") + frame(proto.SETTINGS, 0, 0)
    if role is Role.CLIENT:
        conn.connect("1.2.3.4:5")
        conn.connect("1.2.3.4:6")
    hblk = hpack.Encoder().encode([(":method", "CONNECT"), (":authority", "1.2.3.4:5")])
    wire += frame(proto.HEADERS, proto.FLAG_END_HEADERS, 1, hblk)
    for ftype, flags, sid, payload in frames:
        wire += frame(ftype, flags, sid, payload)
    try:
        evs = conn.receive_data(wire)
        for e in evs:
            if isinstance(e, ConnectRequest):
                conn.respond(e.stream_id, 200)
            elif isinstance(e, Data):
                conn.ack_data(e.stream_id, len(e.data))
        conn.data_to_send()
    except HboneError:
        pass


@given(st.binary(max_size=3 * 1024 * 1024 // 16), st.booleans())
@settings(max_examples=20, deadline=None)
def test_data_roundtrip(blob: bytes, end: bool) -> None:
    c, s = HboneConnection(Role.CLIENT), HboneConnection(Role.SERVER)
    pump(c, s)
    sid = open_tunnel(c, s)
    c.send_data(sid, blob, end=end)
    _, ev = pump(c, s)
    assert b"".join(e.data for e in of(ev, Data)) == blob
    assert bool(of(ev, StreamEnded)) == end


# ---------------------------------------------------------------------------- h2 interop


def test_h2_client_against_our_server() -> None:
    cli = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    cli.initiate_connection()
    srv = HboneConnection(Role.SERVER)
    events = srv.receive_data(cli.data_to_send())
    cli.receive_data(srv.data_to_send())
    cli.send_headers(1, [(":method", "CONNECT"), (":authority", "10.1.2.3:8080")])
    events = srv.receive_data(cli.data_to_send())
    assert of(events, ConnectRequest) == [
        ConnectRequest(1, "10.1.2.3:8080", (), parse_authority("10.1.2.3:8080"))
    ]
    srv.respond(1, 200)
    srv.send_data(1, b"hello from ketch" * 10000)
    h2ev = cli.receive_data(srv.data_to_send())
    assert any(isinstance(e, h2.events.ResponseReceived) for e in h2ev)
    got = b""
    for e in h2ev:
        if isinstance(e, h2.events.DataReceived):
            got += e.data
            cli.acknowledge_received_data(e.flow_controlled_length, 1)
    while len(got) < 160000:
        srv.receive_data(cli.data_to_send())
        for e in cli.receive_data(srv.data_to_send()):
            if isinstance(e, h2.events.DataReceived):
                got += e.data
                cli.acknowledge_received_data(e.flow_controlled_length, 1)
    assert got == b"hello from ketch" * 10000
    cli.send_data(1, b"bye", end_stream=True)
    events = srv.receive_data(cli.data_to_send())
    assert [e for e in events if isinstance(e, Data | StreamEnded)] == [
        Data(1, b"bye", 3),
        StreamEnded(1),
    ]


def test_our_client_against_h2_server() -> None:
    srv = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    srv.initiate_connection()
    cli = HboneConnection(Role.CLIENT)
    sid = cli.connect("[fd00::5]:443", [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-00")])
    h2ev = srv.receive_data(cli.data_to_send())
    (req,) = [e for e in h2ev if isinstance(e, h2.events.RequestReceived)]
    assert dict(req.headers)[b":method"] == b"CONNECT"
    assert dict(req.headers)[b":authority"] == b"[fd00::5]:443"
    srv.send_headers(sid, [(":status", "200")])
    srv.send_data(sid, b"x" * 100, end_stream=True)
    events = cli.receive_data(srv.data_to_send())
    assert of(events, ConnectResponse) == [ConnectResponse(sid, 200, ())]
    assert of(events, Data) == [Data(sid, b"x" * 100, 100)]
    assert of(events, StreamEnded) == [StreamEnded(sid)]
    cli.send_data(sid, b"y" * 70000, end=True)  # larger than h2's default window
    h2ev = srv.receive_data(cli.data_to_send())
    n = sum(len(e.data) for e in h2ev if isinstance(e, h2.events.DataReceived))
    assert n == 65535
    srv.acknowledge_received_data(n, sid)
    srv.increment_flow_control_window(10000)
    cli.receive_data(srv.data_to_send())
    h2ev = srv.receive_data(cli.data_to_send())
    assert sum(len(e.data) for e in h2ev if isinstance(e, h2.events.DataReceived)) == 70000 - n
    assert any(isinstance(e, h2.events.StreamEnded) for e in h2ev)
