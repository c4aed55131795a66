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


def pod_status_text(m: Manifest) -> str:
    """kubectl's STATUS of a pod: the phase (or `status.reason`), overridden by a
    container's waiting or terminated reason (CrashLoopBackOff, ContainerCreating, Error,
    ...), `Terminating` while being deleted."""
    status = _status(m)
    reason = str(status.get("reason") or status.get("phase") or "Pending")
    running = False
    for cs in reversed(status.get("containerStatuses") or []):
        state = cs.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if isinstance(waiting, dict) and waiting.get("reason"):
            reason = str(waiting["reason"])
        elif isinstance(terminated, dict) and terminated.get("reason"):
            reason = str(terminated["reason"])
        elif isinstance(terminated, dict):
            sig = terminated.get("signal")
            reason = f"Signal:{sig}" if sig else f"ExitCode:{terminated.get('exitCode', 0)}"
        elif "running" in state and cs.get("ready"):
            running = True
    if reason == "Completed" and running:
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        reason = "Running" if ready else "NotReady"
    if (m.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


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
            ("STATUS", pod_status_text),
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
    "HorizontalPodAutoscaler": (
        [
            (
                "REFERENCE",
                lambda m: "{kind}/{name}".format(**(_spec(m).get("scaleTargetRef") or {})),
            ),
            ("MINPODS", lambda m: str(_spec(m).get("minReplicas", 1))),
            ("MAXPODS", lambda m: str(_spec(m).get("maxReplicas", ""))),
            _AGE,
        ],
        [],
    ),
    "HTTPRoute": (
        [("HOSTNAMES", lambda m: _join(_spec(m).get("hostnames") or [])), _AGE],
        [("PARENTS", _parents)],
    ),
}


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, no_headers: bool = False
) -> str:
    """kubectl's plain table: columns padded to their widest cell plus 3 spaces, never cut
    (a pipe gets the same content as a terminal), no trailing spaces."""
    lines = [] if no_headers else [list(headers)]
    lines += [[str(c) for c in row] for row in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line)]
        out.append("   ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def table_columns(
    kind: str,
    *,
    wide: bool = False,
    with_namespace: bool = False,
    show_labels: bool = False,
    prefix: str = "",
    extra: Sequence[Column] = (),
    wide_extra: Sequence[Column] = (),
) -> list[Column]:
    """The columns `ketch get` shows for `kind`: [NAMESPACE,] NAME, the kind's own,
    `extra` (e.g. ACCEPTED, computed by the caller), the wide ones, [LABELS]."""
    base, wide_cols = COLUMNS.get(kind, ([_AGE], []))
    columns: list[Column] = []
    if with_namespace:
        columns.append(("NAMESPACE", lambda m: m.get("metadata", {}).get("namespace", "")))
    columns.append(("NAME", lambda m: prefix + str(m.get("metadata", {}).get("name", ""))))
    if extra:  # before AGE, which kubectl keeps last among the default columns
        age_at = next((i for i, c in enumerate(base) if c[0] == "AGE"), len(base))
        columns += base[:age_at] + list(extra) + base[age_at:]
    else:
        columns += base
    columns += [*wide_cols, *wide_extra] if wide else []
    if show_labels:
        columns.append(
            ("LABELS", lambda m: _join([f"{k}={v}" for k, v in sorted(_labels(m).items())]))
        )
    return columns


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
    extra: Sequence[Column] = (),
    no_headers: bool = False,
    wide_extra: Sequence[Column] = (),
) -> None:
    columns = table_columns(
        kind,
        wide=wide,
        with_namespace=with_namespace,
        show_labels=show_labels,
        prefix=f"{plural}/" if with_kind_prefix else "",
        extra=extra,
        wide_extra=wide_extra,
    )
    text = format_table(
        [title for title, _ in columns],
        [[fn(m) for _, fn in columns] for m in items],
        no_headers=no_headers,
    )
    console.file.write(text)


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


def as_document(items: Sequence[Manifest], *, as_list: bool, revision: int | None = None) -> Any:
    """What -o yaml/json/jsonpath print: the object itself for one named object, else a
    `List` (kubectl: a list request or several names), with the list's revision."""
    docs = [clean_for_output(m) for m in items]
    if not as_list and len(docs) == 1:
        return docs[0]
    listing: dict[str, Any] = {"apiVersion": "v1", "kind": "List", "items": docs}
    listing["metadata"] = {"resourceVersion": str(revision)} if revision is not None else {}
    return listing


def to_yaml(
    items: Sequence[Manifest], *, as_list: bool = False, revision: int | None = None
) -> str:
    return yaml.safe_dump(
        as_document(items, as_list=as_list, revision=revision),
        sort_keys=False,
        default_flow_style=False,
    )


def to_json(items: Sequence[Manifest], *, as_list: bool, revision: int | None = None) -> str:
    return json.dumps(as_document(items, as_list=as_list, revision=revision), indent=2)
