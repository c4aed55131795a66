"""Rendering objects for `ketch get`: kubectl-style tables, YAML, JSON and names.

Tables are plain aligned columns (no box drawing), so they stay greppable and readable in a
pipe, like kubectl's. Each kind has its own columns; `wide` adds a few.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from ketch.store import Manifest

Column = tuple[str, Callable[[Manifest], str]]


def age(m: Manifest, now: dt.datetime | None = None) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    ts = m.get("metadata", {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    created = dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    secs = int(((now or dt.datetime.now(dt.UTC)) - created).total_seconds())
    secs = max(secs, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "m" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _spec(m: Manifest) -> dict[str, Any]:
    spec = m.get("spec") or {}
    return spec if isinstance(spec, dict) else {}


def _status(m: Manifest) -> dict[str, Any]:
    status = m.get("status") or {}
    return status if isinstance(status, dict) else {}


def _labels(m: Manifest) -> dict[str, str]:
    return dict(m.get("metadata", {}).get("labels") or {})


def _join(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values) if values else "<none>"


def _svc_ports(m: Manifest) -> str:
    ports = []
    for p in _spec(m).get("ports") or []:
        ports.append(f"{p.get('port')}/{p.get('protocol', 'TCP')}")
    return _join(ports)


def _pod_ready(m: Manifest) -> str:
    total = len(_spec(m).get("containers") or [])
    statuses = _status(m).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{total}"


def _pod_restarts(m: Manifest) -> str:
    return str(
        sum(int(s.get("restartCount", 0)) for s in _status(m).get("containerStatuses") or [])
    )


def _deploy_ready(m: Manifest) -> str:
    return f"{_status(m).get('readyReplicas', 0)}/{_spec(m).get('replicas', 1)}"


def _policy_mode(m: Manifest) -> str:
    return str((_spec(m).get("mtls") or {}).get("mode", "UNSET"))


def _targets(m: Manifest) -> str:
    spec = _spec(m)
    refs = list(spec.get("targetRefs") or [])
    if spec.get("targetRef"):
        refs.append(spec["targetRef"])
    if refs:
        return _join([f"{r.get('kind')}/{r.get('name')}" for r in refs])
    sel = (spec.get("selector") or {}).get("matchLabels")
    if sel:
        return _join([f"{k}={v}" for k, v in sorted(sel.items())])
    return "<namespace>"


def _gw_programmed(m: Manifest) -> str:
    for cond in _status(m).get("conditions") or []:
        if cond.get("type") == "Programmed":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def _gw_address(m: Manifest) -> str:
    addrs = _status(m).get("addresses") or []
    return _join([a.get("value") for a in addrs]) if addrs else ""


def _parents(m: Manifest) -> str:
    return _join(
        [f"{p.get('kind', 'Gateway')}/{p.get('name')}" for p in _spec(m).get("parentRefs") or []]
    )


def _node_status(m: Manifest) -> str:
    for cond in _status(m).get("conditions") or []:
        if cond.get("type") == "Ready":
            return "Ready" if cond.get("status") == "True" else "NotReady"
    return "Unknown"


def _get(path: str, default: str = "<none>") -> Callable[[Manifest], str]:
    def read(m: Manifest) -> str:
        cur: Any = m
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        return default if cur in (None, "", [], {}) else str(cur)

    return read


def _selector(m: Manifest) -> str:
    sel = _spec(m).get("selector") or {}
    sel = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
    return _join([f"{k}={v}" for k, v in sorted(sel.items())])


def _slice_ports(m: Manifest) -> str:
    ports = [p.get("port") for p in m.get("ports") or [] if p.get("port")]
    return _join(ports) if ports else "<unset>"


def _slice_endpoints(m: Manifest) -> str:
    """kubectl's ENDPOINTS: the first three addresses, then "+ N more..."."""
    addrs = [a for ep in m.get("endpoints") or [] for a in ep.get("addresses") or []]
    shown = ",".join(addrs[:3]) or "<none>"
    return f"{shown} + {len(addrs) - 3} more..." if len(addrs) > 3 else shown


_AGE: Column = ("AGE", age)
COLUMNS: dict[str, tuple[list[Column], list[Column]]] = {
    # kind: (default columns after NAME, extra columns for -o wide)
    "Namespace": (
        [("STATUS", lambda m: _status(m).get("phase", "Active")), _AGE],
        [("DATAPLANE", lambda m: _labels(m).get("istio.io/dataplane-mode", "<none>"))],
    ),
    "Node": ([("STATUS", _node_status), _AGE], [("POD-CIDR", _get("spec.podCIDR"))]),
    "ServiceAccount": ([_AGE], []),
    "Pod": (
        [
            ("READY", _pod_ready),
            ("STATUS", lambda m: _status(m).get("phase", "Pending")),
            ("RESTARTS", _pod_restarts),
            _AGE,
        ],
        [("IP", _get("status.podIP")), ("NODE", _get("spec.nodeName"))],
    ),
    "Deployment": (
        [
            ("READY", _deploy_ready),
            ("UP-TO-DATE", lambda m: str(_status(m).get("updatedReplicas", 0))),
            ("AVAILABLE", lambda m: str(_status(m).get("availableReplicas", 0))),
            _AGE,
        ],
        [("SELECTOR", _selector)],
    ),
    "ReplicaSet": (
        [
            ("DESIRED", lambda m: str(_spec(m).get("replicas", 1))),
            ("CURRENT", lambda m: str(_status(m).get("replicas", 0))),
            ("READY", lambda m: str(_status(m).get("readyReplicas", 0))),
            _AGE,
        ],
        [("SELECTOR", _selector)],
    ),
    "EndpointSlice": (
        [
            ("ADDRESSTYPE", lambda m: str(m.get("addressType", ""))),
            ("PORTS", _slice_ports),
            ("ENDPOINTS", _slice_endpoints),
            _AGE,
        ],
        [],
    ),
    "Service": (
        [
            ("TYPE", lambda m: _spec(m).get("type", "ClusterIP")),
            ("CLUSTER-IP", _get("spec.clusterIP")),
            ("PORT(S)", _svc_ports),
            _AGE,
        ],
        [
            ("SELECTOR", _selector),
            ("WAYPOINT", lambda m: _labels(m).get("istio.io/use-waypoint", "<none>")),
        ],
    ),
    "AuthorizationPolicy": (
        [("ACTION", lambda m: _spec(m).get("action", "ALLOW")), _AGE],
        [("TARGETS", _targets)],
    ),
    "PeerAuthentication": ([("MODE", _policy_mode), _AGE], [("TARGETS", _targets)]),
    "RequestAuthentication": ([_AGE], [("TARGETS", _targets)]),
    "Gateway": (
        [
            ("CLASS", _get("spec.gatewayClassName")),
            ("ADDRESS", _gw_address),
            ("PROGRAMMED", _gw_programmed),
            _AGE,
        ],
        [("WAYPOINT-FOR", lambda m: _labels(m).get("istio.io/waypoint-for", "service"))],
    ),
    "HTTPRoute": (
        [("HOSTNAMES", lambda m: _join(_spec(m).get("hostnames") or [])), _AGE],
        [("PARENTS", _parents)],
    ),
}


def render_table(
    console: Console,
    kind: str,
    items: Sequence[Manifest],
    *,
    wide: bool = False,
    with_namespace: bool = False,
    show_labels: bool = False,
    with_kind_prefix: bool = False,
    plural: str = "",
) -> None:
    base, extra = COLUMNS.get(kind, ([_AGE], []))
    columns: list[Column] = []
    if with_namespace:
        columns.append(("NAMESPACE", lambda m: m.get("metadata", {}).get("namespace", "")))
    prefix = f"{plural}/" if with_kind_prefix else ""
    columns.append(("NAME", lambda m: prefix + str(m.get("metadata", {}).get("name", ""))))
    columns += base + (extra if wide else [])
    if show_labels:
        columns.append(
            ("LABELS", lambda m: _join([f"{k}={v}" for k, v in sorted(_labels(m).items())]))
        )
    table = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 3, 0, 0)
    )
    for title, _ in columns:
        table.add_column(title, no_wrap=True, overflow="ignore")
    for m in items:
        table.add_row(*(fn(m) for _, fn in columns))
    console.print(table)


def clean_for_output(m: Manifest) -> Manifest:
    """Drop empty values so -o yaml reads like the user's own file plus server fields."""

    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: prune(v) for k, v in value.items()}
            return {k: v for k, v in out.items() if v not in (None, {}, [])}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    pruned = prune(m)
    assert isinstance(pruned, dict)
    return pruned


def to_yaml(items: Sequence[Manifest]) -> str:
    docs = [clean_for_output(m) for m in items]
    return yaml.safe_dump_all(
        docs, sort_keys=False, default_flow_style=False, explicit_start=len(docs) > 1
    )


def to_json(items: Sequence[Manifest], *, as_list: bool) -> str:
    docs = [clean_for_output(m) for m in items]
    if as_list:
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}, indent=2)
    return json.dumps(docs[0] if docs else {}, indent=2)
