"""Istio's TCP metrics for the node proxy, on a prometheus_client registry.

Counters (REFERENCE.md "Telemetry"), all with `telemetry.TCP_LABEL_NAMES`:
istio_tcp_connections_opened_total, istio_tcp_connections_closed_total,
istio_tcp_connections_failed_total, istio_tcp_received_bytes_total,
istio_tcp_sent_bytes_total; and the `istio_tcp_sockets_open{reporter}` gauge. No `*_created`
series (ztunnel has none).

Accounting follows ztunnel (`proxy/metrics.rs` `ConnectionResult`): a listener calls
`opened(labels)` at the *attempt* (outbound before dialling; inbound once the request is
valid, before authorization) and gets a `ConnCounters` handle; it calls
`handle.closed(received, sent, flag)` exactly once, whatever happened. `closed` is counted
for every opened connection, on the label set with `response_flags=flag`; when the flag is a
failure (`DENY`, `CONNECT`, ...) `failed` is counted on that same label set. Bytes are
counted on the opened (`-`) label set. Routing refusals and early denies (bad authority,
self-call) never call `opened`: they record no metric, as in ztunnel.

Byte semantics follow Istio: *received* = bytes from the client towards the server
(request direction), *sent* = bytes from the server back to the client (response
direction), for both reporters.

Hot path: nothing is updated per relayed chunk (`sync` is called by the proxy's periodic
flush and on close). Label children are cached per label tuple, and the label computation
itself (`telemetry.tcp_labels`) is cached per (reporter, workloads, identities, service,
policy) key, so a steady flow of connections between the same peers costs a dict lookup and
a few counter increments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import Service, Workload
from ketch.ztunnel.telemetry import (
    TCP_CONNECTIONS_CLOSED,
    TCP_CONNECTIONS_FAILED,
    TCP_CONNECTIONS_OPENED,
    TCP_LABEL_NAMES,
    TCP_RECEIVED_BYTES,
    TCP_SENT_BYTES,
    TCP_SOCKETS_OPEN,
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    tcp_labels,
)

LabelValues = tuple[str, ...]
MAX_CACHED = 10_000  # label sets; the caches are cleared (not grown) past this
_FLAG = TCP_LABEL_NAMES.index("response_flags")
_REPORTER = TCP_LABEL_NAMES.index("reporter")


@dataclass(frozen=True, slots=True)
class _Children:
    """The label children of one opened label set (`response_flags="-"`)."""

    opened: Any
    closed: Any
    received: Any
    sent: Any


@dataclass(frozen=True, slots=True)
class _Failed:
    """The label children of one failure label set (a flag other than `-`): only closed
    and failed exist there, so no zero-valued opened/bytes series appear."""

    closed: Any
    failed: Any


class ConnCounters:
    """The counters of one opened connection; `closed()` exactly once at the end."""

    __slots__ = ("_c", "_done", "_m", "_received", "_sent", "_values")

    def __init__(self, metrics: ZtunnelMetrics, values: LabelValues, children: _Children) -> None:
        self._m = metrics
        self._values = values
        self._c = children
        self._received = 0
        self._sent = 0
        self._done = False

    def add_bytes(self, received: int, sent: int) -> None:
        """Account bytes so far (for long-lived connections); `closed()` adds the rest."""
        if received:
            self._c.received.inc(received)
            self._received += received
        if sent:
            self._c.sent.inc(sent)
            self._sent += sent

    def sync(self, received_total: int, sent_total: int) -> None:
        """The connection has moved these totals so far: add what was not reported yet
        (the node proxy calls this periodically for open connections)."""
        if not self._done:
            self.add_bytes(max(0, received_total - self._received), max(0, sent_total - self._sent))

    def closed(
        self, received_total: int = 0, sent_total: int = 0, flag: ResponseFlags = ResponseFlags.NONE
    ) -> None:
        """The connection ended having moved these totals (only the unreported part is
        added); `flag` says why it failed (`NONE`: it did not)."""
        if self._done:
            return
        self.sync(received_total, sent_total)
        self._done = True
        self._m._open_gauge(self._values[_REPORTER]).dec()
        if flag is ResponseFlags.NONE:
            self._c.closed.inc()
            return
        flagged = self._m._failed((*self._values[:_FLAG], flag.value, *self._values[_FLAG + 1 :]))
        flagged.closed.inc()
        flagged.failed.inc()

    @property
    def done(self) -> bool:
        return self._done


class ZtunnelMetrics:
    """The node proxy's TCP counters on `registry` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # process-wide in prometheus_client: the proxy exports no `*_created` series
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, TCP_LABEL_NAMES, registry=registry)

        self.opened_total = counter(TCP_CONNECTIONS_OPENED, "TCP connections opened")
        self.closed_total = counter(TCP_CONNECTIONS_CLOSED, "TCP connections closed")
        self.failed_total = counter(
            TCP_CONNECTIONS_FAILED, "TCP connections that could not be established"
        )
        self.received_bytes = counter(
            TCP_RECEIVED_BYTES, "Bytes received from the client (request direction)"
        )
        self.sent_bytes = counter(TCP_SENT_BYTES, "Bytes sent to the client (response direction)")
        self.sockets_open = Gauge(
            TCP_SOCKETS_OPEN,
            "Connections the proxy has open now (opened and not yet closed)",
            ["reporter"],
            registry=registry,
        )
        self._children: dict[LabelValues, _Children] = {}
        self._failures: dict[LabelValues, _Failed] = {}
        self._open: dict[str, Any] = {}  # reporter -> istio_tcp_sockets_open child
        self._labels: dict[tuple[object, ...], LabelValues] = {}

    # ------------------------------------------------------------------ label sets

    def label_values(
        self,
        reporter: Reporter,
        *,
        src_workload: Workload | None,
        src_identity: SpiffeId | None,
        dst_workload: Workload | None,
        dst_service: Service | None,
        security_policy: SecurityPolicy,
        dst_identity: SpiffeId | None = None,
    ) -> LabelValues:
        """`tcp_labels(...)` as a tuple in TCP_LABEL_NAMES order, cached."""
        key = (
            reporter,
            src_workload,
            src_identity,
            dst_workload,
            dst_service,
            security_policy,
            dst_identity,
        )
        values = self._labels.get(key)
        if values is None:
            labels = tcp_labels(
                reporter,
                src_workload=src_workload,
                src_identity=src_identity,
                dst_workload=dst_workload,
                dst_service=dst_service,
                security_policy=security_policy,
                dst_identity=dst_identity,
            )
            values = tuple(labels[k] for k in TCP_LABEL_NAMES)
            if len(self._labels) >= MAX_CACHED:
                self._labels.clear()
            self._labels[key] = values
        return values

    def _kids(self, values: LabelValues) -> _Children:
        kids = self._children.get(values)
        if kids is None:
            metrics: list[MetricWrapperBase] = [
                self.opened_total,
                self.closed_total,
                self.received_bytes,
                self.sent_bytes,
            ]
            kids = _Children(*(m.labels(*values) for m in metrics))
            if len(self._children) >= MAX_CACHED:
                self._children.clear()
            self._children[values] = kids
        return kids

    def _failed(self, values: LabelValues) -> _Failed:
        kids = self._failures.get(values)
        if kids is None:
            kids = _Failed(self.closed_total.labels(*values), self.failed_total.labels(*values))
            if len(self._failures) >= MAX_CACHED:
                self._failures.clear()
            self._failures[values] = kids
        return kids

    def _open_gauge(self, reporter: str) -> Any:
        g = self._open.get(reporter)
        if g is None:
            g = self._open[reporter] = self.sockets_open.labels(reporter)
        return g

    def cached_label_sets(self) -> int:
        return len(self._children)

    # ------------------------------------------------------------------ events

    def opened(self, values: LabelValues) -> ConnCounters:
        """Count a connection attempt; the handle's `closed()` must follow."""
        kids = self._kids(values)
        kids.opened.inc()
        self._open_gauge(values[_REPORTER]).inc()
        return ConnCounters(self, values, kids)
