"""The HBONE exception family.

Everything this package raises on purpose derives from `HboneError`, so callers can catch
one class at their task boundary. Classes carry protocol meaning: an HTTP/2 error code for
framing errors, an HTTP status for refused CONNECTs, expected/actual identities for TLS.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ketch.identity.spiffe import SpiffeId


class ErrorCode(IntEnum):
    """HTTP/2 error codes (RFC 9113 section 7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"unknown error code 0x{code:x}"


class HboneError(Exception):
    """Base of every error raised by ketch.ztunnel.hbone."""


class ProtocolError(HboneError):
    """The peer broke HTTP/2 or HBONE rules badly enough to end the whole connection.

    `code` is the HTTP/2 error code sent in our GOAWAY.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"HBONE connection error {code.name}: {message}")
        self.code = code


class StreamError(HboneError):
    """A single tunnel (HTTP/2 stream) failed; the connection carries on."""


class StreamResetError(StreamError):
    """The tunnel was reset, by the peer (`remote=True`) or by us."""

    def __init__(self, stream_id: int, code: int, *, remote: bool) -> None:
        who = "peer" if remote else "local side"
        super().__init__(f"HBONE stream {stream_id} reset by {who} with {code_name(code)}")
        self.stream_id = stream_id
        self.code = code
        self.remote = remote


class UsageError(HboneError):
    """The caller used the sans-IO connection in a way the protocol does not allow
    (for example sending on a stream that is already closed)."""


class ConnectionClosedError(HboneError):
    """The HTTP/2 connection is closed or draining (GOAWAY) and takes no new streams."""


class ConnectRefused(HboneError):
    """The HBONE server answered the CONNECT with a non-200 status."""

    def __init__(self, authority: str, status: int) -> None:
        hint = {
            400: "the server rejected the request (bad authority, or the address is not local to it)",
            401: "denied by authorization policy at the destination",
            503: "the destination is unreachable or unknown to the server",
        }.get(status, "unexpected status")
        super().__init__(f"HBONE CONNECT {authority} refused with status {status}: {hint}")
        self.authority = authority
        self.status = status


class HboneTimeout(HboneError):
    """A network wait (connect, handshake, keepalive PING) exceeded its deadline."""


class TlsError(HboneError):
    """TLS set-up or peer-identity verification failed."""


class NoPeerIdentity(TlsError):
    """The peer's certificate carries no usable SPIFFE URI SAN."""


class IdentityMismatch(TlsError):
    """The server's certificate does not name any of the identities we expected."""

    def __init__(self, expected: tuple[SpiffeId, ...], actual: tuple[SpiffeId, ...]) -> None:
        exp = ", ".join(str(e) for e in expected) or "(none)"
        act = ", ".join(str(a) for a in actual) or "(none)"
        super().__init__(
            f"HBONE peer identity mismatch: expected one of [{exp}], certificate has [{act}]; "
            "is the destination workload running under the expected service account?"
        )
        self.expected = expected
        self.actual = actual


class TrustDomainMismatch(TlsError):
    """The client's certificate is from a different trust domain than ours."""

    def __init__(self, expected: str, actual: SpiffeId) -> None:
        super().__init__(
            f"HBONE client {actual} is outside trust domain {expected!r}; "
            "cross-trust-domain traffic is not allowed"
        )
        self.expected = expected
        self.actual = actual
