"""ZDS messages and their codec (sans-IO): typed messages <-> one datagram's bytes.

The wire is Istio's `istio.workload.zds` protobuf (our `.proto`, ZDS.md section 2), one
message per SOCK_SEQPACKET datagram, no length prefix. Both ends read into a 1024-byte
buffer, so every message must encode to at most `MAX_MESSAGE` bytes. Only `add` carries a
file descriptor (the pod's network namespace, SCM_RIGHTS); the fd rules are checked here
from the number of fds the transport received with the datagram (ztunnel's
`src/inpod/protocol.rs` errors: "No control message", "Unexpected control message").

Nothing outside this module sees a protobuf: decoding returns frozen dataclasses that were
validated on the way in (non-empty uid, WorkloadInfo present in `add`, known oneof).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ketch.proto.gen.istio.workload import zds_pb2 as pb

MAX_MESSAGE = 1024  # bytes: the read buffer of both ends (ZDS.md section 1)
VERSION_V1 = 1
MAX_UID = 253  # a Kubernetes uid is a 36-char UUID; anything near the limit is hostile


class ZdsProtocolError(Exception):
    """The peer broke the ZDS protocol (bad bytes, wrong fd count, wrong order). The
    connection must be closed; the message says what was wrong for the operator."""


# ------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class Hello:
    """Node proxy -> agent, first message (`ZdsHello`)."""

    version: int = VERSION_V1


@dataclass(frozen=True)
class WorkloadInfo:
    name: str
    namespace: str
    service_account: str


@dataclass(frozen=True)
class Add:
    """Serve pod `uid` (the Kubernetes pod UID); its netns fd travels with the datagram."""

    uid: str
    info: WorkloadInfo


@dataclass(frozen=True)
class Keep:
    """Snapshot only: keep serving `uid` (the agent has no netns handle for it)."""

    uid: str


@dataclass(frozen=True)
class Del:
    uid: str


@dataclass(frozen=True)
class SnapshotSent:
    pass


Request = Add | Keep | Del | SnapshotSent


@dataclass(frozen=True)
class Ack:
    """Node proxy -> agent, one per request in order. `error` empty = ACK, else NACK."""

    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


# ------------------------------------------------------------------------ encode


def _check_size(data: bytes, what: str) -> bytes:
    if len(data) > MAX_MESSAGE:
        raise ValueError(
            f"ZDS {what} encodes to {len(data)} bytes, more than the {MAX_MESSAGE}-byte "
            "datagram both ends read (names or uid too long?)"
        )
    return data


def encode_hello(msg: Hello) -> bytes:
    return _check_size(pb.ZdsHello(version=msg.version).SerializeToString(), "hello")  # type: ignore[arg-type]


def encode_request(msg: Request) -> bytes:
    """The datagram for `msg`. Raises ValueError if it would exceed MAX_MESSAGE."""
    req = pb.WorkloadRequest()
    if isinstance(msg, Add):
        req.add.uid = msg.uid
        req.add.workload_info.name = msg.info.name
        req.add.workload_info.namespace = msg.info.namespace
        req.add.workload_info.service_account = msg.info.service_account
    elif isinstance(msg, Keep):
        req.keep.uid = msg.uid
    elif isinstance(msg, Del):
        getattr(req, "del").uid = msg.uid  # `del` is a Python keyword
    else:
        req.snapshot_sent.SetInParent()
    return _check_size(req.SerializeToString(), type(msg).__name__)


def encode_ack(msg: Ack) -> bytes:
    resp = pb.WorkloadResponse()
    resp.ack.error = msg.error
    data = resp.SerializeToString()
    if len(data) > MAX_MESSAGE:  # a long NACK reason: cut it rather than fail the ACK
        resp.ack.error = msg.error[: MAX_MESSAGE - 16] + "..."
        data = resp.SerializeToString()
        while len(data) > MAX_MESSAGE:
            resp.ack.error = resp.ack.error[:-64] + "..."
            data = resp.SerializeToString()
    return data


# ------------------------------------------------------------------------ decode


def _parse(cls: type, data: bytes, what: str) -> object:
    if len(data) > MAX_MESSAGE:
        raise ZdsProtocolError(f"{what}: {len(data)} bytes, more than {MAX_MESSAGE}")
    msg = cls()
    try:
        msg.ParseFromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ZdsProtocolError(f"{what}: undecodable protobuf ({e})") from None
    return msg


def _no_fds(nfds: int, what: str) -> None:
    if nfds:
        raise ZdsProtocolError(f"Unexpected control message: {nfds} fd(s) with a {what}")


def _uid(value: str, what: str) -> str:
    if not value:
        raise ZdsProtocolError(f"{what} without a uid")
    if len(value) > MAX_UID or not value.isprintable():
        raise ZdsProtocolError(f"{what}: uid {value[:40]!r}... is not a pod uid")
    return value


def decode_hello(data: bytes, nfds: int = 0) -> Hello:
    msg = _parse(pb.ZdsHello, data, "hello")
    assert isinstance(msg, pb.ZdsHello)
    _no_fds(nfds, "hello")
    if msg.version != VERSION_V1:
        raise ZdsProtocolError(
            f"hello with ZDS version {msg.version}; this agent speaks V1 ({VERSION_V1})"
        )
    return Hello(msg.version)


def decode_request(data: bytes, nfds: int) -> Request:
    """A WorkloadRequest datagram that arrived with `nfds` file descriptors. Raises
    ZdsProtocolError (the caller closes the fds and the connection)."""
    msg = _parse(pb.WorkloadRequest, data, "WorkloadRequest")
    assert isinstance(msg, pb.WorkloadRequest)
    kind = msg.WhichOneof("payload")
    if kind == "add":
        if nfds == 0:
            raise ZdsProtocolError("No control message: add without the netns fd")
        if nfds != 1:
            raise ZdsProtocolError(f"add with {nfds} fds; exactly one (the netns) is expected")
        uid = _uid(msg.add.uid, "add")
        if not msg.add.HasField("workload_info"):
            raise ZdsProtocolError(f"add {uid!r} without workload_info")
        wi = msg.add.workload_info
        if not wi.name or not wi.namespace:
            raise ZdsProtocolError(f"add {uid!r}: workload_info needs name and namespace")
        return Add(
            uid,
            WorkloadInfo(wi.name, wi.namespace, wi.service_account or "default"),
        )
    _no_fds(nfds, kind or "WorkloadRequest without payload")
    if kind == "keep":
        return Keep(_uid(msg.keep.uid, "keep"))
    if kind == "del":
        return Del(_uid(getattr(msg, "del").uid, "del"))
    if kind == "snapshot_sent":
        return SnapshotSent()
    raise ZdsProtocolError(
        "WorkloadRequest with no known payload (an unknown oneof field from a newer agent?)"
    )


def decode_ack(data: bytes, nfds: int = 0) -> Ack:
    msg = _parse(pb.WorkloadResponse, data, "WorkloadResponse")
    assert isinstance(msg, pb.WorkloadResponse)
    _no_fds(nfds, "WorkloadResponse")
    if msg.WhichOneof("payload") != "ack":
        raise ZdsProtocolError("WorkloadResponse without an ack")
    return Ack(msg.ack.error)


__all__ = [
    "MAX_MESSAGE",
    "VERSION_V1",
    "Ack",
    "Add",
    "Del",
    "Hello",
    "Keep",
    "Request",
    "SnapshotSent",
    "WorkloadInfo",
    "ZdsProtocolError",
    "decode_ack",
    "decode_hello",
    "decode_request",
    "encode_ack",
    "encode_hello",
    "encode_request",
]
