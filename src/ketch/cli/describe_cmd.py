"""`ketch describe`: one object in detail, with what relates to it.

Besides the object's metadata, spec and status: related objects (a Service's endpoints from
its EndpointSlices and the pods it selects; a Deployment's ReplicaSets and pods; a
ReplicaSet's pods; a Pod's owner), its conditions (the stored ones plus the `Accepted`
condition computed from the store, see `ketch.control.acceptance`), and recent events.
Ketch has no Event objects: the events shown are the store's change history for the object
(ADDED/MODIFIED/DELETED with revision and generation), the last 10 still retained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
import yaml

from ketch.api import wellknown
from ketch.api.discovery import SERVICE_NAME_LABEL
from ketch.cli import output
from ketch.cli.common import fail, open_store, out
from ketch.cli.get_cmd import NsOpt, context, kind_of, namespace_for, one_target
from ketch.control import acceptance
from ketch.labels import from_match_labels
from ketch.store import Manifest, NotFoundError, RevisionTooOldError, Store

EVENTS_SHOWN = 10


def _pairs(rows: Sequence[tuple[str, Any]]) -> list[str]:
    width = max(len(k) for k, _ in rows) + 2
    return [f"{k + ':':<{width}}{v}" for k, v in rows]


def _labels_text(values: dict[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((values or {}).items())) or "<none>"


def _owned_by(items: Sequence[Manifest], owner: Manifest) -> list[Manifest]:
    uid = owner.get("metadata", {}).get("uid")
    name = owner.get("metadata", {}).get("name")
    kind = owner.get("kind")
    out_: list[Manifest] = []
    for m in items:
        for ref in m.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("kind") == kind and (ref.get("uid") == uid or ref.get("name") == name):
                out_.append(m)
                break
    return out_


def _pod_line(p: Manifest) -> str:
    status = p.get("status") or {}
    return (
        f"{p['metadata']['name']} ({status.get('phase', 'Pending')}"
        + (f", {status['podIP']}" if status.get("podIP") else "")
        + ")"
    )


def related(store: Store, m: Manifest) -> list[tuple[str, list[str]]]:
    """(heading, lines) sections of objects related to `m`."""
    kind = m.get("kind")
    meta = m.get("metadata") or {}
    ns = meta.get("namespace") or ""
    spec = m.get("spec") or {}
    sections: list[tuple[str, list[str]]] = []
    if kind == "Service":
        slices = store.list("EndpointSlice", ns, f"{SERVICE_NAME_LABEL}={meta['name']}").items
        lines = []
        for s in slices:
            ports = ",".join(
                f"{p.get('name') or ''}{':' if p.get('name') else ''}{p.get('port')}"
                for p in s.get("ports") or []
            )
            for ep in s.get("endpoints") or []:
                ready = (ep.get("conditions") or {}).get("ready", True) is not False
                who = (ep.get("targetRef") or {}).get("name")
                for addr in ep.get("addresses") or []:
                    lines.append(
                        f"{addr}{' ports ' + ports if ports else ''}"
                        f" ({'ready' if ready else 'not ready'}{', ' + who if who else ''})"
                    )
        sections.append(("Endpoints", lines or ["<none>"]))
        selector = spec.get("selector")
        if selector:
            sel = from_match_labels(selector)
            pods = [
                p for p in store.list("Pod", ns).items if sel.matches(p["metadata"].get("labels"))
            ]
            sections.append(("Selected pods", [_pod_line(p) for p in pods] or ["<none>"]))
    elif kind == "Deployment":
        sets = _owned_by(store.list("ReplicaSet", ns).items, m)
        sections.append(
            (
                "ReplicaSets",
                [
                    f"{r['metadata']['name']} ({(r.get('status') or {}).get('readyReplicas', 0)}/"
                    f"{(r.get('spec') or {}).get('replicas', 1)} ready)"
                    for r in sets
                ]
                or ["<none>"],
            )
        )
        pods_all = store.list("Pod", ns).items
        pods = [p for r in sets for p in _owned_by(pods_all, r)]
        sections.append(("Pods", [_pod_line(p) for p in pods] or ["<none>"]))
    elif kind == "ReplicaSet":
        pods = _owned_by(store.list("Pod", ns).items, m)
        sections.append(("Pods", [_pod_line(p) for p in pods] or ["<none>"]))
    elif kind == "Gateway" and spec.get("gatewayClassName") == wellknown.WAYPOINT_GATEWAY_CLASS:
        users = []
        for obj_kind in ("Namespace", "Service"):
            for o in store.list(obj_kind).items:
                o_meta = o.get("metadata") or {}
                labels = o_meta.get("labels") or {}
                o_ns = o_meta.get("name") if obj_kind == "Namespace" else o_meta.get("namespace")
                target_ns = labels.get(wellknown.USE_WAYPOINT_NAMESPACE) or o_ns
                if labels.get(wellknown.USE_WAYPOINT) == meta["name"] and target_ns == ns:
                    where = (
                        o_meta["name"] if obj_kind == "Namespace" else f"{o_ns}/{o_meta['name']}"
                    )
                    users.append(f"{obj_kind} {where}")
        sections.append(("Used by", users or ["<none>"]))
    elif kind == "Pod":
        owners = [
            f"{r.get('kind')}/{r.get('name')}"
            for r in meta.get("ownerReferences") or []
            if r.get("controller")
        ]
        sections.append(("Controlled By", owners or ["<none>"]))
    return sections


def conditions(m: Manifest, extra: acceptance.Acceptance | None) -> list[list[str]]:
    rows = []
    for c in (m.get("status") or {}).get("conditions") or []:
        rows.append(
            [
                str(c.get("type")),
                str(c.get("status")),
                str(c.get("reason") or ""),
                str(c.get("message") or ""),
            ]
        )
    if extra is not None:
        rows.append(["Accepted", extra.status, extra.reason, extra.message])
    return rows


def history(store: Store, m: Manifest) -> tuple[list[list[str]], str]:
    meta = m.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name"))
    note = ""
    try:
        events = store.events(0, m.get("kind"), meta.get("namespace") or "")
    except RevisionTooOldError as e:
        events = store.events(e.oldest - 1, m.get("kind"), meta.get("namespace") or "")
        note = f"(history before revision {e.oldest} is compacted)"
    mine = [
        ev
        for ev in events
        if (
            (ev.object.get("metadata") or {}).get("namespace") or "",
            (ev.object.get("metadata") or {}).get("name"),
        )
        == key
    ]
    rows = [
        [
            str(ev.revision),
            ev.type.value,
            str((ev.object.get("metadata") or {}).get("generation", "")),
        ]
        for ev in mine[-EVENTS_SHOWN:]
    ]
    return rows, note


def describe(
    kind: Annotated[str, typer.Argument(help="Kind (or plural/short name), or TYPE/NAME.")],
    name: Annotated[str | None, typer.Argument(help="Object name.")] = None,
    namespace: NsOpt = None,
) -> None:
    """Show one object in detail: fields, related objects, conditions, events."""
    kind, name = one_target(kind, name, "describe")
    info = kind_of(kind)
    with open_store() as store:
        try:
            m = store.get(info.kind, namespace_for(info, namespace), name)
        except NotFoundError:
            fail(f'{info.plural} "{name}" not found')
        sections = related(store, m)
        accepted = acceptance.accepted(m, context(store))
        events, note = history(store, m)
    meta = m.get("metadata", {})
    lines = _pairs(
        [
            ("Name", meta.get("name")),
            ("Namespace", meta.get("namespace") or "<cluster>"),
            ("Kind", f"{m.get('kind')} ({m.get('apiVersion')})"),
            ("Labels", _labels_text(meta.get("labels"))),
            ("Annotations", _labels_text(meta.get("annotations"))),
            ("UID", meta.get("uid")),
            ("Resource Version", meta.get("resourceVersion")),
            ("Generation", meta.get("generation")),
            ("Created", f"{meta.get('creationTimestamp')} ({output.age(m)} ago)"),
        ]
    )
    for section in ("spec", "status"):
        body = output.clean_for_output({section: m.get(section)}) if m.get(section) else {}
        if body:
            lines.append(f"{section.capitalize()}:")
            text = yaml.safe_dump(body[section], sort_keys=False, default_flow_style=False)
            lines += [f"  {line}" for line in text.splitlines()]
    for heading, items in sections:
        lines.append(f"{heading}:")
        lines += [f"  {item}" for item in items]
    conds = conditions(m, accepted)
    lines.append("Conditions:")
    if conds:
        table = output.format_table(["TYPE", "STATUS", "REASON", "MESSAGE"], conds)
        lines += [f"  {row}" for row in table.splitlines()]
    else:
        lines.append("  <none>")
    lines.append("Events (the store's change history):" + (f" {note}" if note else ""))
    if events:
        table = output.format_table(["REVISION", "TYPE", "GENERATION"], events)
        lines += [f"  {row}" for row in table.splitlines()]
    else:
        lines.append("  <none>")
    out.file.write("\n".join(lines) + "\n")
