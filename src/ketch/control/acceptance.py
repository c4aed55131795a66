"""Whether a stored object does anything: the `Accepted` condition, computed at read time.

Istio and the Gateway API report this as status conditions written by a controller
(`Accepted`, `ResolvedRefs`, `Programmed`). Ketch computes the same answer from the store
on demand, so `ketch apply` can warn about an object nothing acts on and `ketch get`/
`ketch describe` can show why, without a controller writing status:

- an HTTPRoute needs each parent to be a waypoint that exists: a Service parent is routed
  by the waypoint it uses (label `istio.io/use-waypoint` on the Service or its namespace),
  a Gateway parent must be a waypoint Gateway (class `istio-waypoint`);
- an AuthorizationPolicy or RequestAuthentication with `targetRefs` needs the same of each
  target; a RequestAuthentication without targetRefs does nothing in ambient mode;
- a HorizontalPodAutoscaler is never acted on.

Pure functions of manifests (the store's wire form); `index(manifests)` reads the few kinds
the answers depend on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ketch.api import wellknown

_GATEWAY_GROUP = wellknown.GATEWAY_API_GROUP
KINDS_WITH_ACCEPTANCE = (
    "HTTPRoute",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "HorizontalPodAutoscaler",
)
"""Kinds `accepted` answers for (others: None)."""
CONTEXT_KINDS = ("Namespace", "Service", "Gateway")
"""Kinds whose objects the answers depend on."""


@dataclass(frozen=True)
class Acceptance:
    """The `Accepted` condition: status True/False, a CamelCase reason, a sentence."""

    accepted: bool
    reason: str
    message: str

    @property
    def status(self) -> str:
        return "True" if self.accepted else "False"

    def condition(self) -> dict[str, str]:
        return {
            "type": "Accepted",
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass
class Context:
    """What acceptance depends on: namespaces' labels, services' labels, waypoints."""

    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    service_labels: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    # Gateways -> the traffic a waypoint takes (istio.io/waypoint-for), None if not a waypoint
    gateways: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def add(self, m: Mapping[str, Any]) -> None:
        meta = m.get("metadata") or {}
        kind, name = m.get("kind"), str(meta.get("name", ""))
        ns = str(meta.get("namespace") or "default")
        labels = dict(meta.get("labels") or {})
        if kind == "Namespace":
            self.namespace_labels[name] = labels
        elif kind == "Service":
            self.service_labels[(ns, name)] = labels
        elif kind == "Gateway":
            spec = m.get("spec") or {}
            waypoint = spec.get("gatewayClassName") == wellknown.WAYPOINT_GATEWAY_CLASS
            self.gateways[(ns, name)] = (
                labels.get(wellknown.WAYPOINT_FOR, wellknown.WAYPOINT_FOR_DEFAULT)
                if waypoint
                else None
            )


def index(manifests: Iterable[Mapping[str, Any]]) -> Context:
    ctx = Context()
    for m in manifests:
        ctx.add(m)
    return ctx


def _ok(message: str) -> Acceptance:
    return Acceptance(True, "Accepted", message)


def _waypoint_problem(ctx: Context, ns: str, name: str, *, for_service: bool) -> str | None:
    if (ns, name) not in ctx.gateways:
        return f"waypoint Gateway {ns}/{name} does not exist"
    takes = ctx.gateways[(ns, name)]
    if takes is None:
        return (
            f"Gateway {ns}/{name} is not a waypoint (gatewayClassName "
            f"{wellknown.WAYPOINT_GATEWAY_CLASS}); Ketch programs waypoints only"
        )
    if for_service and takes not in ("service", "all"):
        return (
            f"waypoint {ns}/{name} takes no service traffic ({wellknown.WAYPOINT_FOR}: "
            f"{takes}; use service or all)"
        )
    return None


def _service_waypoint(ctx: Context, ns: str, name: str) -> tuple[str, str] | str:
    """(namespace, gateway) of the waypoint a Service uses, or why it has none."""
    if (ns, name) not in ctx.service_labels:
        return f"Service {ns}/{name} does not exist"
    for labels in (ctx.service_labels[(ns, name)], ctx.namespace_labels.get(ns, {})):
        gw = labels.get(wellknown.USE_WAYPOINT)
        if gw is None:
            continue
        if gw == "none":
            break
        return labels.get(wellknown.USE_WAYPOINT_NAMESPACE) or ns, gw
    return (
        f"Service {ns}/{name} uses no waypoint (label it, or its namespace, "
        f"{wellknown.USE_WAYPOINT}=<waypoint>)"
    )


def _target(ctx: Context, ref: Mapping[str, Any], own_ns: str) -> str | None:
    """Why a target/parent reference is not served by a waypoint, or None when it is."""
    kind = ref.get("kind") or "Gateway"
    group = ref.get("group")
    ns = str(ref.get("namespace") or own_ns)
    name = str(ref.get("name", ""))
    if kind == "Service" and (group or "") in ("", "core"):
        found = _service_waypoint(ctx, ns, name)
        if isinstance(found, str):
            return found
        return _waypoint_problem(ctx, *found, for_service=True)
    if kind == "Gateway" and (group is None or group in ("", _GATEWAY_GROUP)):
        return _waypoint_problem(ctx, ns, name, for_service=False)
    return f"{kind} {name} is not a target Ketch implements (a Service or a waypoint Gateway)"


def _refs(spec: Mapping[str, Any], *keys: str) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for key in keys:
        value = spec.get(key)
        if isinstance(value, list):
            out += [r for r in value if isinstance(r, Mapping)]
        elif isinstance(value, Mapping):
            out.append(value)
    return out


def accepted(m: Mapping[str, Any], ctx: Context) -> Acceptance | None:
    """The Accepted condition of one object, or None for kinds it does not apply to."""
    kind = m.get("kind")
    if kind not in KINDS_WITH_ACCEPTANCE:
        return None
    spec = m.get("spec") or {}
    own_ns = str((m.get("metadata") or {}).get("namespace") or "default")
    if kind == "HorizontalPodAutoscaler":
        return Acceptance(
            False,
            "NotImplemented",
            "nothing acts on a HorizontalPodAutoscaler in Ketch (no metrics pipeline); "
            "set the Deployment's replicas instead",
        )
    if kind == "HTTPRoute":
        parents = _refs(spec, "parentRefs")
        if not parents:
            return Acceptance(False, "NoParents", "the route has no parentRefs; nothing uses it")
        problems = [p for p in (_target(ctx, r, own_ns) for r in parents) if p]
        if problems:
            return Acceptance(
                False, "NoWaypoint", "; ".join(problems) + ": no waypoint programs this route"
            )
        return _ok("programmed into the parents' waypoints")
    targets = _refs(spec, "targetRef", "targetRefs")
    if not targets:
        if kind == "RequestAuthentication":
            return Acceptance(
                False,
                "NoWaypoint",
                "only a waypoint checks JWTs: without targetRefs this has no effect in "
                "ambient mode",
            )
        return _ok("enforced by the node proxies (L4)")
    problems = [p for p in (_target(ctx, r, own_ns) for r in targets) if p]
    if problems:
        return Acceptance(
            False, "NoWaypoint", "; ".join(problems) + ": no waypoint enforces this policy"
        )
    return _ok("enforced by the targets' waypoints")


__all__ = [
    "CONTEXT_KINDS",
    "KINDS_WITH_ACCEPTANCE",
    "Acceptance",
    "Context",
    "accepted",
    "index",
]
