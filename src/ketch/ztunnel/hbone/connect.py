"""HBONE CONNECT rules: which requests and responses are valid tunnel set-ups.

Pure functions over decoded header lists, no framing and no I/O. The HTTP/2 core
(`proto.HboneConnection`) decodes a HEADERS block, then asks this module what it means:

- server side, `parse_request()`: a request must be `CONNECT` with an `ip:port`
  `:authority` (RFC 9113 section 8.5: no `:scheme`/`:path`; HBONE never uses extended
  CONNECT's `:protocol`) and must not end the stream; anything else becomes an
  `InvalidRequest` that the server answers 400 without calling the application;
- client side, `parse_response()`: the `:status` of a response, or None if malformed;
- `request_block()` / `response_block()` build what we send.

Where it sits: between the frame parser and the server/pool. The events defined here
(`ConnectRequest`, `InvalidRequest`, `ConnectResponse`) are returned by
`HboneConnection.receive_data()` together with its framing events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ketch.ztunnel.hbone.errors import UsageError
from ketch.ztunnel.hbone.headers import Authority, InvalidAuthority, parse_authority

Headers = tuple[tuple[str, str], ...]
HeaderBlock = list[tuple[bytes, bytes]]

# RFC 9113 section 8.2.2: connection-specific header fields are malformed in HTTP/2.
_CONNECTION_HEADERS: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Server side: a valid HBONE CONNECT arrived; answer with `respond()`."""

    stream_id: int
    authority: str
    headers: Headers
    target: Authority  # `authority`, parsed once here


@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """Server side: a request that is not a valid HBONE CONNECT; answer `respond(sid, status)`."""

    stream_id: int
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """Client side: the final response to our CONNECT (200 = tunnel open)."""

    stream_id: int
    status: int
    headers: Headers


def request_block(authority: str, headers: Iterable[tuple[str, str]] = ()) -> HeaderBlock:
    """The header list of `CONNECT authority` (only `:method` and `:authority`, as ztunnel)."""
    block = [(b":method", b"CONNECT"), (b":authority", authority.encode("ascii"))]
    block.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return block


def response_block(status: int, headers: Iterable[tuple[str, str]] = ()) -> HeaderBlock:
    """The header list of a final response; raises UsageError for a 1xx or invalid status."""
    if not 200 <= status <= 999:
        raise UsageError(f"cannot respond with status {status}")
    block = [(b":status", str(status).encode())]
    block.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return block


def parse_request(
    stream_id: int, fields: HeaderBlock, end_stream: bool
) -> ConnectRequest | InvalidRequest:
    """Judge a request header list: a tunnel request, or the reason it gets a 400."""
    method = authority = None
    regular: list[tuple[str, str]] = []
    reason = None
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                reason = "pseudo-header after regular header"
            elif name == b":method" and method is None:
                method = value
            elif name == b":authority" and authority is None:
                authority = value
            elif name in (b":scheme", b":path", b":protocol"):
                reason = f"{name.decode('latin-1')} is not allowed in an HBONE CONNECT"
            else:
                reason = f"unexpected pseudo-header {name.decode('latin-1')!r}"
        elif name != name.lower() or name in _CONNECTION_HEADERS:
            reason = f"malformed header name {name.decode('latin-1')!r}"
        else:
            regular.append((name.decode("latin-1"), value.decode("latin-1")))
        if reason:
            break
    if reason is None:
        if method != b"CONNECT":
            m = method.decode("latin-1") if method is not None else "(none)"
            reason = f"method {m} is not allowed: HBONE accepts only CONNECT"
        elif authority is None:
            reason = "CONNECT without :authority"
        elif end_stream:
            reason = "CONNECT with END_STREAM opens no tunnel"
    if reason is None:
        assert authority is not None
        auth = authority.decode("latin-1")
        try:
            target = parse_authority(auth)
        except InvalidAuthority as e:
            reason = str(e)
        else:
            return ConnectRequest(stream_id, auth, tuple(regular), target)
    return InvalidRequest(stream_id, 400, reason)


def parse_response(fields: HeaderBlock) -> tuple[int, Headers] | None:
    """`(status, regular headers)` of a response header list, or None if it is malformed
    (missing/duplicate/non-numeric `:status`, other pseudo-headers, upper-case names)."""
    status = None
    regular: list[tuple[str, str]] = []
    for name, value in fields:
        if name == b":status" and status is None and not regular:
            status = value
        elif name[:1] == b":" or name != name.lower():
            return None
        else:
            regular.append((name.decode("latin-1"), value.decode("latin-1")))
    if status is None or len(status) != 3 or not status.isdigit():
        return None
    return int(status), tuple(regular)
