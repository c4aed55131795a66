"""Istio-compatible telemetry values for the node proxy, as pure functions.

The metrics layer defines its prometheus_client Counters with `TCP_LABEL_NAMES` and, for
each connection, increments them with `tcp_labels(...)` (one dict per reporter). When the
connection finishes, the listener builds an `AccessLogRecord` with `access_log_record(...)`
and writes `format_text(record)` or `format_json(record)`.

Label values follow Istio's standard metrics so existing dashboards work: missing values
are `unknown`; canonical service/revision come from the workload (control plane fields,
then the `service.istio.io/canonical-*`, `app.kubernetes.io/*`, `app`/`version` labels).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import IpAddr, Service, Workload, format_authority

UNKNOWN = "unknown"

TCP_CONNECTIONS_OPENED = "istio_tcp_connections_opened_total"
TCP_CONNECTIONS_CLOSED = "istio_tcp_connections_closed_total"
TCP_CONNECTIONS_FAILED = "istio_tcp_connections_failed_total"
TCP_RECEIVED_BYTES = "istio_tcp_received_bytes_total"
TCP_SENT_BYTES = "istio_tcp_sent_bytes_total"
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
    NONE = "none"
    UNKNOWN = "unknown"


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


def app_label(w: Workload) -> str:
    return _first(w.labels, "app", _K8S_NAME) or canonical_service(w)


def version_label(w: Workload) -> str:
    return _first(w.labels, "version", _K8S_VERSION) or UNKNOWN


def _side(prefix: str, w: Workload | None, identity: SpiffeId | None) -> dict[str, str]:
    return {
        f"{prefix}_workload": workload_name(w) if w else UNKNOWN,
        f"{prefix}_canonical_service": canonical_service(w) if w else UNKNOWN,
        f"{prefix}_canonical_revision": canonical_revision(w) if w else UNKNOWN,
        f"{prefix}_workload_namespace": w.namespace if w else UNKNOWN,
        f"{prefix}_principal": identity.uri if identity else UNKNOWN,
        f"{prefix}_app": app_label(w) if w else UNKNOWN,
        f"{prefix}_version": version_label(w) if w else UNKNOWN,
        f"{prefix}_cluster": (w.cluster_id or UNKNOWN) if w else UNKNOWN,
    }


def tcp_labels(
    reporter: Reporter,
    *,
    src_workload: Workload | None,
    src_identity: SpiffeId | None,
    dst_workload: Workload | None,
    dst_service: Service | None,
    security_policy: SecurityPolicy,
    dst_identity: SpiffeId | None = None,
    response_flags: str = "-",
) -> dict[str, str]:
    """All `TCP_LABEL_NAMES` for one connection as seen by `reporter`. `dst_identity`
    defaults to the destination workload's identity."""
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
        "response_flags": response_flags or "-",
    }
    # Order as TCP_LABEL_NAMES, so `Counter.labels(*d.values())` also works.
    return {k: labels[k] for k in TCP_LABEL_NAMES}


# --------------------------------------------------------------------------- access log


class Direction(enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


ACCESS_LOG_FIELDS: tuple[str, ...] = (
    "src.addr",
    "src.workload",
    "src.namespace",
    "src.identity",
    "dst.addr",
    "dst.hbone_addr",
    "dst.service",
    "dst.workload",
    "dst.namespace",
    "dst.identity",
    "direction",
    "bytes_sent",
    "bytes_recv",
    "duration",
    "error",
)


@dataclass(frozen=True)
class AccessLogRecord:
    """One finished connection. Empty strings mean "not applicable / unknown" and are
    omitted by the formatters; `duration_ms` is wall-clock milliseconds."""

    src_addr: str
    src_workload: str
    src_namespace: str
    src_identity: str
    dst_addr: str
    dst_hbone_addr: str
    dst_service: str
    dst_workload: str
    dst_namespace: str
    dst_identity: str
    direction: Direction
    bytes_sent: int
    bytes_recv: int
    duration_ms: float
    error: str

    def fields(self) -> dict[str, str | int | float]:
        """The record with REFERENCE field names (`src.addr`, ...), empty values dropped."""
        d = asdict(self)
        out: dict[str, str | int | float] = {}
        for name in ACCESS_LOG_FIELDS:
            key = "duration_ms" if name == "duration" else name.replace(".", "_")
            v = d[key]
            if isinstance(v, Direction):
                v = v.value
            if v == "" and name not in ("bytes_sent", "bytes_recv"):
                continue
            out[name] = v
        return out


def access_log_record(
    *,
    direction: Direction,
    src: tuple[IpAddr, int],
    src_workload: Workload | None,
    src_identity: SpiffeId | None,
    dst: tuple[IpAddr, int],
    dst_workload: Workload | None,
    dst_service: Service | None,
    dst_identity: SpiffeId | None = None,
    hbone_addr: tuple[IpAddr, int] | None = None,
    bytes_sent: int = 0,
    bytes_recv: int = 0,
    duration_s: float = 0.0,
    error: str | BaseException | None = None,
) -> AccessLogRecord:
    if dst_identity is None and dst_workload is not None:
        dst_identity = dst_workload.identity
    if isinstance(error, BaseException):
        error = str(error) or type(error).__name__
    return AccessLogRecord(
        src_addr=format_authority(*src),
        src_workload=workload_name(src_workload) if src_workload else "",
        src_namespace=src_workload.namespace if src_workload else "",
        src_identity=src_identity.uri if src_identity else "",
        dst_addr=format_authority(*dst),
        dst_hbone_addr=format_authority(*hbone_addr) if hbone_addr else "",
        dst_service=dst_service.hostname if dst_service else "",
        dst_workload=workload_name(dst_workload) if dst_workload else "",
        dst_namespace=dst_workload.namespace if dst_workload else "",
        dst_identity=dst_identity.uri if dst_identity else "",
        direction=direction,
        bytes_sent=bytes_sent,
        bytes_recv=bytes_recv,
        duration_ms=round(duration_s * 1000.0, 3),
        error=error or "",
    )


def _text_value(v: str | int | float) -> str:
    if isinstance(v, str):
        if v == "" or any(c in v for c in ' "=\\') or not v.isprintable():
            return json.dumps(v)
        return v
    return str(v)


def format_text(rec: AccessLogRecord) -> str:
    """`key=value` pairs (values with spaces, quotes or `=` JSON-quoted), ztunnel style,
    e.g. `src.addr=10.0.0.1:4321 ... duration=12.5ms`."""
    parts = []
    for k, v in rec.fields().items():
        if k == "duration":
            parts.append(f"duration={v}ms")
        else:
            parts.append(f"{k}={_text_value(v)}")
    return " ".join(parts)


def format_json(rec: AccessLogRecord) -> str:
    """One JSON object per line; `duration` in milliseconds."""
    return json.dumps(rec.fields(), separators=(",", ":"), sort_keys=False)
