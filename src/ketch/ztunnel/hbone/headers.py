"""HBONE request headers: the `:authority` target and the informational client headers.

Pure functions, no I/O. The authority of an HBONE CONNECT is always `ip:port` (IPv6 as
`[addr]:port`); names are never resolved by the tunnel. The client adds `baggage`
(W3C baggage with Kubernetes attributes), `forwarded: for="ip:port"` (RFC 7239) and a W3C
`traceparent`, as ztunnel does.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class InvalidAuthority(ValueError):
    """The :authority is not `ip:port`; the server answers 400."""


@dataclass(frozen=True, slots=True)
class Authority:
    ip: IPAddress
    port: int

    def __str__(self) -> str:
        return format_hostport(self.ip, self.port)


def format_hostport(ip: IPAddress | str, port: int) -> str:
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if addr.version == 6:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


def parse_authority(value: str) -> Authority:
    """Parse an HBONE `:authority` ("10.0.0.1:8080", "[fd00::1]:80") strictly."""
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise InvalidAuthority(f"authority {value!r}: expected [ipv6]:port")
        host, port_s = value[1:close], value[close + 2 :]
        if "%" in host:
            raise InvalidAuthority(f"authority {value!r}: IPv6 zone identifiers are not allowed")
        try:
            ip: IPAddress = ipaddress.IPv6Address(host)
        except ValueError as e:
            raise InvalidAuthority(f"authority {value!r}: {host!r} is not an IPv6 address") from e
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise InvalidAuthority(f"authority {value!r}: expected ip:port")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError as e:
            raise InvalidAuthority(
                f"authority {value!r}: {host!r} is not an IPv4 address (IPv6 needs brackets; "
                "HBONE authorities are never host names)"
            ) from e
    if not port_s.isascii() or not port_s.isdigit() or len(port_s) > 5:
        raise InvalidAuthority(f"authority {value!r}: bad port {port_s!r}")
    port = int(port_s)
    if not 0 < port < 65536:
        raise InvalidAuthority(f"authority {value!r}: port {port} out of range")
    return Authority(ip, port)


def forwarded(src_ip: IPAddress | str, src_port: int, host: str | None = None) -> str:
    """RFC 7239 `forwarded` value: `for="ip:port"` plus `;host=...` for a service target."""
    value = f'for="{format_hostport(src_ip, src_port)}"'
    if host:
        value += f";host={host}"
    return value


# Characters kept in a baggage value: W3C baggage-octet (printable ASCII without space,
# '"', ',', ';', '\\') and also without '=': ztunnel splits entries on ',' and ';' and
# key from value on '=' without any unquoting. Everything else is dropped, which also
# keeps CR/LF/NUL and other bytes that are illegal in a header value out.
_BAGGAGE_DROP: Final = re.compile(r"[^\x21\x23-\x2b\x2d-\x3a\x3c\x3e-\x5b\x5d-\x7e]+")
# A baggage key is an RFC 9110 token.
_BAGGAGE_KEY: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def baggage(attributes: Mapping[str, str]) -> str:
    """W3C baggage: `k8s.cluster.name=c1,k8s.namespace.name=ns,...`, values raw.

    Values are not percent-encoded, because ztunnel's parser does not decode them
    (zt:src/baggage.rs); characters that would break the header or the `k=v,k=v` syntax
    are dropped instead (see `_BAGGAGE_DROP`). Entries whose value ends up empty are left
    out. Typical keys: k8s.cluster.name, k8s.namespace.name, k8s.<kind>.name,
    service.name, service.version; a key that is not a token raises ValueError.
    """
    parts = []
    for k, v in attributes.items():
        if not _BAGGAGE_KEY.fullmatch(k):
            raise ValueError(f"baggage key {k!r} is not an HTTP token")
        value = _BAGGAGE_DROP.sub("", v)
        if value:
            parts.append(f"{k}={value}")
    return ",".join(parts)


def traceparent(trace_id: bytes | None = None, span_id: bytes | None = None) -> str:
    """A W3C `traceparent` (version 00, sampled flag off); random ids unless given."""
    tid = trace_id if trace_id is not None else secrets.token_bytes(16)
    sid = span_id if span_id is not None else secrets.token_bytes(8)
    if len(tid) != 16 or len(sid) != 8 or not any(tid) or not any(sid):
        raise ValueError("traceparent needs a non-zero 16-byte trace id and 8-byte span id")
    return f"00-{tid.hex()}-{sid.hex()}-00"
