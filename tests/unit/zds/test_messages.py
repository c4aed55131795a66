"""The ZDS codec: Istio's field numbers on the wire, the 1024-byte limit, the fd rules and
hostile bytes (every failure is a ZdsProtocolError, never another exception)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.zds.messages import (
    MAX_MESSAGE,
    Ack,
    Add,
    Del,
    Hello,
    Keep,
    SnapshotSent,
    WorkloadInfo,
    ZdsProtocolError,
    decode_ack,
    decode_hello,
    decode_request,
    encode_ack,
    encode_hello,
    encode_request,
)

ADD = Add("6f1c0d2e-0000-4000-8000-000000000001", WorkloadInfo("web-1", "app", "web"))


# Hand-assembled protobuf bytes: field numbers as in Istio's zds.proto (ZDS.md section 2).
@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (Keep("u"), b"\x2a\x03\x0a\x01u"),  # WorkloadRequest.keep = 5, KeepWorkload.uid = 1
        (Del("u"), b"\x12\x03\x12\x01u"),  # WorkloadRequest.del = 2, DelWorkload.uid = 2 (!)
        (SnapshotSent(), b"\x1a\x00"),  # snapshot_sent = 3
        (
            Add("u", WorkloadInfo("n", "ns", "sa")),
            # add = 1 { uid = 1, workload_info = 2 { name 1, namespace 2, service_account 3 } }
            b"\x0a\x10\x0a\x01u\x12\x0b\x0a\x01n\x12\x02ns\x1a\x02sa",
        ),
    ],
)
def test_request_wire_format(msg: object, wire: bytes) -> None:
    assert encode_request(msg) == wire  # type: ignore[arg-type]
    assert decode_request(wire, 1 if isinstance(msg, Add) else 0) == msg


def test_hello_and_ack_wire_format() -> None:
    assert encode_hello(Hello()) == b"\x08\x01"
    assert decode_hello(b"\x08\x01") == Hello(1)
    assert encode_ack(Ack()) == b"\x0a\x00"
    assert decode_ack(b"\x0a\x05\x0a\x03bad") == Ack("bad")
    assert not Ack("bad").ok


@pytest.mark.parametrize(
    ("data", "nfds", "error"),
    [
        (encode_request(ADD), 0, "No control message"),
        (encode_request(ADD), 2, "exactly one"),
        (encode_request(Del("u")), 1, "Unexpected control message"),
        (encode_request(Keep("u")), 1, "Unexpected control message"),
        (encode_request(SnapshotSent()), 1, "Unexpected control message"),
        (b"\x0a\x03\x0a\x01u", 1, "without workload_info"),  # add without workload_info
        (b"\x0a\x02\x12\x00", 1, "without a uid"),  # add with empty workload_info, no uid
        (b"\x12\x00", 0, "without a uid"),  # del with no uid
        (b"\x32\x00", 0, "no known payload"),  # field 6: an unknown oneof member
        (b"", 0, "no known payload"),
        (b"\xff\xff\xff", 0, "undecodable"),
        (b"\x0a\xff\x01", 1, "undecodable"),  # length past the end
        (b"\x2a\x03\x0a\x01u" + b"\x00" * MAX_MESSAGE, 0, "more than"),
    ],
)
def test_bad_requests(data: bytes, nfds: int, error: str) -> None:
    with pytest.raises(ZdsProtocolError, match=error):
        decode_request(data, nfds)


def test_hello_rules() -> None:
    with pytest.raises(ZdsProtocolError, match="version 0"):
        decode_hello(b"")
    with pytest.raises(ZdsProtocolError, match="version 2"):
        decode_hello(b"\x08\x02")
    with pytest.raises(ZdsProtocolError, match="Unexpected control message"):
        decode_hello(b"\x08\x01", 1)
    with pytest.raises(ZdsProtocolError, match="without an ack"):
        decode_ack(b"")


def test_size_limit_on_encode() -> None:
    with pytest.raises(ValueError, match="1024-byte"):
        encode_request(Add("u", WorkloadInfo("n" * 1100, "ns", "sa")))
    # a long NACK reason is cut, never refused
    long = encode_ack(Ack("x" * 5000))
    assert len(long) <= MAX_MESSAGE
    assert decode_ack(long).error.endswith("...")


UIDS = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)
NAMES = st.text(min_size=1, max_size=60)


@given(
    st.one_of(
        st.builds(Add, UIDS, st.builds(WorkloadInfo, NAMES, NAMES, NAMES)),
        st.builds(Keep, UIDS),
        st.builds(Del, UIDS),
        st.just(SnapshotSent()),
    )
)
def test_round_trip(msg: object) -> None:
    wire = encode_request(msg)  # type: ignore[arg-type]
    assert len(wire) <= MAX_MESSAGE
    assert decode_request(wire, 1 if isinstance(msg, Add) else 0) == msg


@given(st.binary(max_size=1100), st.integers(0, 3))
def test_hostile_bytes_only_raise_protocol_errors(data: bytes, nfds: int) -> None:
    for decode in (decode_request, decode_ack, decode_hello):
        with contextlib.suppress(ZdsProtocolError):
            decode(data, nfds)
