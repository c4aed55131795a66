"""Sans-IO abuse limits of the HTTP/2 core: rapid reset, control-frame floods, CONTINUATION
floods, and bounded per-connection state. Bytes in, GOAWAY codes and table sizes out."""

from __future__ import annotations

import itertools
import struct

import hpack
import pytest

from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.errors import ErrorCode, ProtocolError
from ketch.ztunnel.hbone.proto import HboneConnection, Role, frame

_U32 = struct.Struct(">L")


def server() -> HboneConnection:
    s = HboneConnection(Role.SERVER)
    s.receive_data(proto.PREFACE + frame(proto.SETTINGS, 0, 0))
    s.data_to_send()
    s.control_written()
    return s


def goaway_code(out: bytes) -> int | None:
    """The error code of the last GOAWAY in `out`, if any."""
    pos, code = 0, None
    while pos + 9 <= len(out):
        n = int.from_bytes(out[pos : pos + 3], "big")
        if out[pos + 3] == proto.GOAWAY:
            code = int.from_bytes(out[pos + 13 : pos + 17], "big")
        pos += 9 + n
    return code


def connect(enc: hpack.Encoder, sid: int) -> bytes:
    block = enc.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    return frame(proto.HEADERS, proto.FLAG_END_HEADERS, sid, block)


def rst(sid: int, code: int = ErrorCode.CANCEL) -> bytes:
    return frame(proto.RST_STREAM, 0, sid, _U32.pack(code))


def test_rapid_reset_gets_enhance_your_calm_after_the_budget() -> None:
    s, enc = server(), hpack.Encoder()
    n = proto.PREMATURE_RESET_MIN_STREAMS
    for i in range(n - 1):
        s.receive_data(connect(enc, 2 * i + 1) + rst(2 * i + 1))
    assert not s.closed
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(connect(enc, 2 * n - 1) + rst(2 * n - 1))
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert goaway_code(s.data_to_send()) == ErrorCode.ENHANCE_YOUR_CALM


def test_answered_then_cancelled_streams_are_not_premature_and_state_stays_bounded() -> None:
    """A long-lived connection where a third of the streams are reset before the answer,
    the rest answered and then cancelled, stays up; its tables do not grow."""
    s, enc = server(), hpack.Encoder()
    peak_streams = peak_reset = peak_out = 0
    for i in range(3000):
        sid = 2 * i + 1
        s.receive_data(connect(enc, sid))
        if i % 3:
            s.respond(sid, 200)
        s.receive_data(rst(sid))
        peak_streams = max(peak_streams, s.open_streams)
        peak_reset = max(peak_reset, len(s._reset_by_us))
        peak_out = max(peak_out, len(s._out))
        s.data_to_send()
    assert not s.closed
    assert s.premature_resets == 1000
    assert peak_streams <= 1
    assert peak_reset <= 1025
    assert peak_out <= 4
    assert not s._buf


def ping(i: int) -> bytes:
    return frame(proto.PING, 0, 0, i.to_bytes(8, "big"))


def test_ping_flood_unread_gets_enhance_your_calm() -> None:
    s = server()
    flood = b"".join(ping(i) for i in range(proto.MAX_UNSENT_CONTROL))
    s.receive_data(flood)  # exactly at the bound: still fine
    assert not s.closed
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(ping(0))
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert goaway_code(s.data_to_send()) == ErrorCode.ENHANCE_YOUR_CALM


def test_pings_answered_and_written_are_not_a_flood() -> None:
    s = server()
    for _ in range(5):
        s.receive_data(b"".join(ping(i) for i in range(900)))
        s.data_to_send()
        s.control_written()  # the driver: the transport is not backed up
    assert not s.closed


def test_settings_flood_unread_gets_enhance_your_calm() -> None:
    s = server()
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(frame(proto.SETTINGS, 0, 0) * (proto.MAX_UNSENT_CONTROL + 1))
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM


def test_settings_with_too_many_entries_gets_enhance_your_calm() -> None:
    s = server()
    entries = struct.pack(">HL", proto.SETTINGS_MAX_CONCURRENT_STREAMS, 10)
    s.receive_data(frame(proto.SETTINGS, 0, 0, entries * proto.MAX_SETTINGS_ENTRIES))
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(frame(proto.SETTINGS, 0, 0, entries * (proto.MAX_SETTINGS_ENTRIES + 1)))
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM


def test_empty_continuation_flood_gets_enhance_your_calm() -> None:
    s, enc = server(), hpack.Encoder()
    block = enc.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    s.receive_data(frame(proto.HEADERS, 0, 1, block[:3]))
    empty = frame(proto.CONTINUATION, 0, 1)
    s.receive_data(empty * (proto.MAX_CONTINUATIONS - 1))
    assert not s.closed
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(empty * 2)
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert not s._cont or len(s._cont[2]) < 100


def test_continuations_within_the_bound_still_work() -> None:
    s, enc = server(), hpack.Encoder()
    block = enc.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    n = proto.MAX_CONTINUATIONS + 1
    cuts = [len(block) * i // n for i in range(n + 1)]
    parts = [block[a:b] for a, b in itertools.pairwise(cuts)]
    data = frame(proto.HEADERS, 0, 1, parts[0])
    for i, p in enumerate(parts[1:], start=2):
        data += frame(proto.CONTINUATION, proto.FLAG_END_HEADERS if i == len(parts) else 0, 1, p)
    (ev,) = s.receive_data(data)
    assert isinstance(ev, proto.ConnectRequest)


def test_provoked_stream_errors_get_enhance_your_calm() -> None:
    s, enc = server(), hpack.Encoder()
    bad_update = struct.pack(">L", 0)  # WINDOW_UPDATE increment 0: a stream error

    def provoke(sid: int) -> None:
        s.receive_data(connect(enc, sid))
        s.respond(sid, 200)
        s.receive_data(frame(proto.WINDOW_UPDATE, 0, sid, bad_update))
        s.data_to_send()
        s.control_written()

    for i in range(proto.MAX_LOCAL_ERROR_RESETS):
        provoke(2 * i + 1)
    with pytest.raises(ProtocolError) as ei:
        provoke(2 * proto.MAX_LOCAL_ERROR_RESETS + 1)
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert s.local_error_resets == proto.MAX_LOCAL_ERROR_RESETS + 1


def test_late_frames_on_closed_streams_do_not_use_up_the_stream_error_budget() -> None:
    """DATA that crossed our END_STREAM on the wire is an honest race, however often."""
    s, enc = server(), hpack.Encoder()
    for i in range(proto.MAX_LOCAL_ERROR_RESETS + 10):
        sid = 2 * i + 1
        s.receive_data(connect(enc, sid))
        s.respond(sid, 200)
        s.end_stream(sid)
        s.receive_data(frame(proto.DATA, proto.FLAG_END_STREAM, sid))  # stream now closed
        s.receive_data(frame(proto.DATA, 0, sid, b"late"))  # -> RST_STREAM(STREAM_CLOSED)
        s.data_to_send()
        s.control_written()
    assert not s.closed
    assert s.local_error_resets == 0


def test_oversized_single_headers_frame_gets_enhance_your_calm() -> None:
    s = server()
    big = b"\x00" * (proto.MAX_HEADER_BLOCK + 1)  # fits a frame (1 MiB), not a header block
    with pytest.raises(ProtocolError) as ei:
        s.receive_data(frame(proto.HEADERS, proto.FLAG_END_HEADERS, 1, big))
    assert ei.value.code == ErrorCode.ENHANCE_YOUR_CALM


def test_application_resets_never_raise_however_many() -> None:
    """Our own resets (Tunnel.abort) are not peer-provoked control frames: no limit hits
    the application, even while nothing is confirmed written."""
    s, enc = server(), hpack.Encoder()
    for i in range(proto.MAX_UNSENT_CONTROL + 10):
        sid = 2 * i + 1
        s.receive_data(connect(enc, sid))
        s.respond(sid, 200)
        s.reset(sid, ErrorCode.CONNECT_ERROR)
    assert not s.closed
