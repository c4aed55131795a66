"""HBONE: mTLS HTTP/2 CONNECT tunnels between node proxies (port 15008).

Layers, bottom up:
- `proto`: sans-IO HTTP/2 subset (`HboneConnection`): framing, stream states, windows,
  limits; bytes in, events out;
- `connect`: HBONE CONNECT request/response rules (pure functions over header lists);
- `tls`: SSL contexts from workload certificates, SPIFFE peer checks;
- `driver`: `H2Protocol`, the asyncio Protocol that runs one connection's core;
- `tunnel`: `Tunnel`, one CONNECT stream as a byte stream with half-close;
- `tcp_relay`: `relay()`, the tunnel <-> TCP copy (the hot loop of the data path);
- `server`: `HboneServer` on a caller-made listening socket;
- `pool`: `HboneClientPool` for outbound tunnels;
- `headers`: authority parsing and the client's informational headers;
- `sockopts`: `set_keepalive()`, ztunnel's TCP keepalive, also for pod sockets;
- `sysalloc`: `tune_malloc()` for the proxy's start-up.
"""

from ketch.ztunnel.hbone.errors import (
    ConnectionClosedError,
    ConnectRefused,
    ErrorCode,
    HboneError,
    HboneTimeout,
    IdentityMismatch,
    NoPeerIdentity,
    ProtocolError,
    StreamResetError,
    TlsError,
    TrustDomainMismatch,
)
from ketch.ztunnel.hbone.headers import (
    Authority,
    InvalidAuthority,
    baggage,
    format_hostport,
    forwarded,
    parse_authority,
    traceparent,
)
from ketch.ztunnel.hbone.pool import HboneClientPool, PoolKey, UpstreamConnectError
from ketch.ztunnel.hbone.server import ConnectInfo, HboneServer, IncomingConnect
from ketch.ztunnel.hbone.sockopts import set_keepalive
from ketch.ztunnel.hbone.sysalloc import tune_malloc
from ketch.ztunnel.hbone.tcp_relay import RelayProgress, RelayResult, relay
from ketch.ztunnel.hbone.tls import (
    WorkloadCert,
    client_context,
    peer_identity,
    server_context,
    verify_client,
    verify_server,
)
from ketch.ztunnel.hbone.tunnel import Tunnel

__all__ = [
    "Authority",
    "ConnectInfo",
    "ConnectRefused",
    "ConnectionClosedError",
    "ErrorCode",
    "HboneClientPool",
    "HboneError",
    "HboneServer",
    "HboneTimeout",
    "IdentityMismatch",
    "IncomingConnect",
    "InvalidAuthority",
    "NoPeerIdentity",
    "PoolKey",
    "ProtocolError",
    "RelayProgress",
    "RelayResult",
    "StreamResetError",
    "TlsError",
    "TrustDomainMismatch",
    "Tunnel",
    "UpstreamConnectError",
    "WorkloadCert",
    "baggage",
    "client_context",
    "format_hostport",
    "forwarded",
    "parse_authority",
    "peer_identity",
    "relay",
    "server_context",
    "set_keepalive",
    "traceparent",
    "tune_malloc",
    "verify_client",
    "verify_server",
]
