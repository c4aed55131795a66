"""Istio-compatible telemetry values for the node proxy, as pure functions.

The metrics layer defines its prometheus_client Counters with `TCP_LABEL_NAMES` and, for
each connection, increments them with `tcp_labels(...)` (one dict per reporter). When the
connection finishes, the listener builds an `AccessLogRecord` with `access_log_record(...)`
and writes `format_text(record)` or `format_json(record)`.

Label values follow ztunnel (`proxy/metrics.rs`) so existing dashboards work: missing values
are `unknown`; `*_canonical_service`/`*_revision` come from the workload (control plane
fields, then the `service.istio.io/canonical-*`, `app.kubernetes.io/*`, `app`/`version`
labels) and `*_app`/`*_version` repeat them, as ztunnel does; `*_cluster` is the workload's
cluster id, else `Kubernetes` (Istio's default cluster name); the locality labels
(`source_region` ...) come from `Workload.locality`. `*_principal` is only ever an mTLS
identity: callers pass `None` for plaintext.

`response_flags` (`ResponseFlags`) says why a connection failed: `DENY` (policy), `CONNECT`
(the upstream or HBONE connection could not be made), `TLS_FAILURE`,
`H2_HANDSHAKE_FAILURE`, `IDENTITY_ERROR` (no certificate of our own); `-` is not a failure.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import IpAddr, Service, Workload, format_authority
from ketch.ztunnel.hbone import ProtocolError, TlsError
from ketch.ztunnel.identity import IdentityUnavailable

UNKNOWN = "unknown"
DEFAULT_CLUSTER = "Kubernetes"  # Istio's cluster name when none is configured

TCP_CONNECTIONS_OPENED = "istio_tcp_connections_opened_total"
TCP_CONNECTIONS_CLOSED = "istio_tcp_connections_closed_total"
TCP_CONNECTIONS_FAILED = "istio_tcp_connections_failed_total"
TCP_RECEIVED_BYTES = "istio_tcp_received_bytes_total"
TCP_SENT_BYTES = "istio_tcp_sent_bytes_total"
TCP_SOCKETS_OPEN = "istio_tcp_sockets_open"
TCP_COUNTERS = (
    TCP_CONNECTIONS_OPENED,
    TCP_CONNECTIONS_CLOSED,
    TCP_CONNECTIONS_FAILED,
    TCP_RECEIVED_BYTES,
    TCP_SENT_BYTES,
)

TCP_LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "connection_security_policy",
    "response_flags",
    # ztunnel adds these four whenever a workload is known; we always have them
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
)

_CANONICAL_NAME = "service.istio.io/canonical-name"
_CANONICAL_REVISION = "service.istio.io/canonical-revision"
_K8S_NAME = "app.kubernetes.io/name"
_K8S_VERSION = "app.kubernetes.io/version"


class Reporter(enum.Enum):
    SOURCE = "source"
    DESTINATION = "destination"


class SecurityPolicy(enum.Enum):
    MUTUAL_TLS = "mutual_tls"
    UNKNOWN = "unknown"


class ResponseFlags(enum.Enum):
    """Why a connection failed (ztunnel's `ResponseFlags`); `NONE` is not a failure."""

    NONE = "-"
    DENY = "DENY"  # authorization policy
    CONNECT = "CONNECT"  # the upstream (app, or HBONE peer) connection failed
    TLS_FAILURE = "TLS_FAILURE"
    H2_HANDSHAKE_FAILURE = "H2_HANDSHAKE_FAILURE"
    IDENTITY_ERROR = "IDENTITY_ERROR"  # no certificate of our own to present

    @property
    def failed(self) -> bool:
        return self is not ResponseFlags.NONE


def connect_failure_flag(error: BaseException) -> ResponseFlags:
    """The flag of a failure to set up an upstream connection (outbound HBONE, outbound
    passthrough, or the app inbound). TLS problems and HTTP/2 protocol errors before the
    tunnel opened are told apart; anything else (refused, unreachable, timeout, non-200
    CONNECT answer) is `CONNECT`."""
    if isinstance(error, IdentityUnavailable):
        return ResponseFlags.IDENTITY_ERROR
    if isinstance(error, TlsError):
        return ResponseFlags.TLS_FAILURE
    if isinstance(error, ProtocolError):
        return ResponseFlags.H2_HANDSHAKE_FAILURE
    return ResponseFlags.CONNECT


def _first(labels: Mapping[str, str], *keys: str) -> str:
    for k in keys:
        v = labels.get(k)
        if v:
            return v
    return ""


def workload_name(w: Workload) -> str:
    """The owning controller's name (Deployment etc.), else the pod name."""
    return w.workload_name or w.name


def canonical_service(w: Workload) -> str:
    return (
        w.canonical_name or _first(w.labels, _CANONICAL_NAME, _K8S_NAME, "app") or workload_name(w)
    )


def canonical_revision(w: Workload) -> str:
    # Istio's default revision is "latest" when a workload declares none.
    return (
        w.canonical_revision
        or _first(w.labels, _CANONICAL_REVISION, _K8S_VERSION, "version")
        or "latest"
    )


def cluster_name(w: Workload) -> str:
    return w.cluster_id or DEFAULT_CLUSTER


def _side(prefix: str, w: Workload | None, identity: SpiffeId | None) -> dict[str, str]:
    if w is None:
        side = dict.fromkeys(
            (
                "workload",
                "canonical_service",
                "canonical_revision",
                "workload_namespace",
                "app",
                "version",
                "cluster",
                "region",
                "zone",
            ),
            UNKNOWN,
        )
    else:
        service, revision = canonical_service(w), canonical_revision(w)
        side = {
            "workload": workload_name(w),
            "canonical_service": service,
            "canonical_revision": revision,
            "workload_namespace": w.namespace,
            # ztunnel: app = canonical service, version = canonical revision
            "app": service,
            "version": revision,
            "cluster": cluster_name(w),
            "region": w.locality.region or UNKNOWN,
            "zone": w.locality.zone or UNKNOWN,
        }
    side["principal"] = identity.uri if identity else UNKNOWN
    return {f"{prefix}_{k}": v for k, v in side.items()}


def tcp_labels(
    reporter: Reporter,
    *,
    src_workload: Workload | None,
    src_identity: SpiffeId | None,
    dst_workload: Workload | None,
    dst_service: Service | None,
    security_policy: SecurityPolicy,
    dst_identity: SpiffeId | None = None,
    response_flags: ResponseFlags = ResponseFlags.NONE,
) -> dict[str, str]:
    """All `TCP_LABEL_NAMES` for one connection as seen by `reporter`. `dst_identity`
    defaults to the destination workload's identity (as ztunnel's `with_destination`);
    `src_identity` is the mTLS identity of the source, `None` for plaintext."""
    if dst_identity is None and dst_workload is not None:
        dst_identity = dst_workload.identity
    labels = {"reporter": reporter.value}
    labels |= _side("source", src_workload, src_identity)
    labels |= {
        "destination_service": dst_service.hostname if dst_service else UNKNOWN,
        "destination_service_namespace": dst_service.namespace if dst_service else UNKNOWN,
        "destination_service_name": dst_service.name if dst_service else UNKNOWN,
    }
    labels |= _side("destination", dst_workload, dst_identity)
    labels |= {
        "request_protocol": "tcp",
        "connection_security_policy": security_policy.value,
        "response_flags": response_flags.value,
    }
    # Order as TCP_LABEL_NAMES, so `Counter.labels(*d.values())` also works.
    return {k: labels[k] for k in TCP_LABEL_NAMES}


# --------------------------------------------------------------------------- access log


class Direction(enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


# ztunnel's access-log fields, in its order (proxy/metrics.rs), then `error`
ACCESS_LOG_FIELDS: tuple[str, ...] = (
    "src.addr",
    "src.workload",
    "src.namespace",
    "src.identity",
    "src.cluster",
    "dst.addr",
    "dst.hbone_addr",
    "dst.service",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "dst.cluster",
    "direction",
    "bytes_sent",
    "bytes_recv",
    "duration",
    "error",
)


@dataclass(frozen=True)
class AccessLogRecord:
    """One finished connection, as ztunnel logs it. Empty strings mean "not applicable /
    unknown" and are omitted by the formatters.

    `dst_addr` is the L4 address the proxy connected to (the peer's `ip:15008`, a waypoint,
    or the app for plaintext); `dst_hbone_addr` the HBONE `:authority` (`podIP:port`), in
    both directions. `bytes_sent` goes from the reporting side's client towards its
    server on outbound, and towards the caller on inbound (ztunnel "unflips" Istio's byte
    metrics for logs). `duration_ms` is whole milliseconds. `response_flags` is the metric
    label (kept on the record for programmatic sinks and tests; not a ztunnel log field)."""

    src_addr: str
    src_workload: str
    src_namespace: str
    src_identity: str
    src_cluster: str
    dst_addr: str
    dst_hbone_addr: str
    dst_service: str
    dst_workload: str
    dst_namespace: str
    dst_identity: str
    dst_cluster: str
    direction: Direction
    bytes_sent: int
    bytes_recv: int
    duration_ms: int
    error: str
    response_flags: ResponseFlags = ResponseFlags.NONE

    def fields(self) -> dict[str, str | int]:
        """The record with ztunnel's field names (`src.addr`, ...), empty values dropped;
        `duration` as ztunnel writes it (`12ms`)."""
        d = asdict(self)
        out: dict[str, str | int] = {}
        for name in ACCESS_LOG_FIELDS:
            if name == "duration":
                out[name] = f"{self.duration_ms}ms"
                continue
            v = d[name.replace(".", "_")]
            if isinstance(v, Direction):
                v = v.value
            if v == "":
                continue
            out[name] = v
        return out


def _log_workload(w: Workload) -> str:
    """ztunnel logs the pod name, falling back to the canonical service."""
    return w.name or canonical_service(w)


def access_log_record(
    *,
    direction: Direction,
    src: tuple[IpAddr, int],
    src_workload: Workload | None,
    src_identity: SpiffeId | None,
    dst: tuple[IpAddr, int],
    dst_workload: Workload | None,
    dst_service: Service | None,
    security_policy: SecurityPolicy,
    dst_identity: SpiffeId | None = None,
    hbone_addr: tuple[IpAddr, int] | str | None = None,
    bytes_sent: int = 0,
    bytes_recv: int = 0,
    duration_s: float = 0.0,
    error: str | BaseException | None = None,
    response_flags: ResponseFlags = ResponseFlags.NONE,
) -> AccessLogRecord:
    """`dst` is the L4 next hop and `hbone_addr` the HBONE authority (see AccessLogRecord).
    Identities are logged only for `mutual_tls`, as ztunnel does."""
    mtls = security_policy is SecurityPolicy.MUTUAL_TLS
    if dst_identity is None and dst_workload is not None:
        dst_identity = dst_workload.identity
    if isinstance(error, BaseException):
        error = str(error) or type(error).__name__
    return AccessLogRecord(
        src_addr=format_authority(*src),
        src_workload=_log_workload(src_workload) if src_workload else "",
        src_namespace=src_workload.namespace if src_workload else "",
        src_identity=src_identity.uri if src_identity and mtls else "",
        src_cluster=cluster_name(src_workload) if src_workload else "",
        dst_addr=format_authority(*dst),
        dst_hbone_addr=(
            hbone_addr
            if isinstance(hbone_addr, str)
            else format_authority(*hbone_addr)
            if hbone_addr
            else ""
        ),
        dst_service=dst_service.hostname if dst_service else "",
        dst_workload=_log_workload(dst_workload) if dst_workload else "",
        dst_namespace=dst_workload.namespace if dst_workload else "",
        dst_identity=dst_identity.uri if dst_identity and mtls else "",
        dst_cluster=cluster_name(dst_workload) if dst_workload else "",
        direction=direction,
        bytes_sent=bytes_sent,
        bytes_recv=bytes_recv,
        duration_ms=int(duration_s * 1000.0),
        error=error or "",
        response_flags=response_flags,
    )


def _text_value(v: str | int) -> str:
    if isinstance(v, str):
        if v == "" or any(c in v for c in ' "=\\') or not v.isprintable():
            return json.dumps(v)
        return v
    return str(v)


def format_text(rec: AccessLogRecord) -> str:
    """`key=value` pairs (values with spaces, quotes or `=` JSON-quoted), ztunnel style,
    e.g. `src.addr=10.0.0.1:4321 ... duration=12ms`."""
    return " ".join(f"{k}={_text_value(v)}" for k, v in rec.fields().items())


def format_json(rec: AccessLogRecord) -> str:
    """One JSON object per line, the same fields (`duration` as `"12ms"`)."""
    return json.dumps(rec.fields(), separators=(",", ":"), sort_keys=False)
