"""L4 authorization at the node proxy: Istio's AuthorizationPolicy and PeerAuthentication
semantics, as pure functions.

Data path: the inbound listeners (15008 HBONE, 15006 plaintext) build a `ConnInfo` for every
accepted connection and call `authorize(state, conn)` before opening the upstream; a denied
HBONE stream answers 401, a denied plaintext connection is closed. When the policy snapshot
changes, `recheck(state, open_conns)` names the open connections that are now denied.

Evaluation (see docs/ztunnel-policy.md for the full statement):

1. PeerAuthentication STRICT on the destination workload/port and no peer identity -> deny.
2. Applicable policies = global (root namespace) + the workload's namespace + selector matches.
   Dry-run policies are evaluated on the side and reported, never enforced.
3. Any matching DENY -> deny; no ALLOW policy -> allow; any matching ALLOW -> allow; else deny.

A policy matches if any rule matches; a rule matches if all its clauses do; a clause matches
if any of its matches does; a match holds if each non-empty field has a value that matches
and no `not_` value matches. This is ztunnel's `rbac.rs` model, into which the YAML converter
(`convert_policies`) compiles `from` (one clause, a match per source), `to` (one clause, a
match per operation) and each `when` condition (one clause each).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any, Protocol, TypeVar

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    Action,
    Authorization,
    Clause,
    IpAddr,
    IpNet,
    Match,
    MeshError,
    MtlsMode,
    PeerAuthentication,
    Rule,
    Scope,
    ServiceAccountMatch,
    StringMatch,
    Workload,
)
from ketch.ztunnel import ZtunnelError
from ketch.ztunnel.state import ProxyState

K = TypeVar("K", bound=Hashable)

DRY_RUN_ANNOTATION = "istio.io/dry-run"

# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class ConnInfo:
    """What the node proxy knows about an inbound connection when it authorizes it.
    `src_identity` is the peer's verified SPIFFE ID (None for plaintext on 15006)."""

    src_ip: IpAddr
    src_port: int
    src_identity: SpiffeId | None
    dst_workload: Workload
    dst_ip: IpAddr
    dst_port: int


@dataclass(frozen=True)
class DryRunResult:
    """A dry-run policy's would-be outcome: did it match this connection."""

    policy: str  # "namespace/name"
    action: Action
    matched: bool


@dataclass(frozen=True)
class Decision:
    """`policy` is the `ns/name` of the policy that decided (None when no policy did:
    default allow). `dry_run_allowed` is what the decision would be if the dry-run policies
    were enforced too (None when no dry-run policy applies)."""

    allowed: bool
    policy: str | None
    reason: str
    dry_run_results: tuple[DryRunResult, ...] = ()
    dry_run_allowed: bool | None = None

    def __bool__(self) -> bool:
        return self.allowed


def _field_matches(
    positive: Sequence[Any], negative: Sequence[Any], test: Any
) -> bool:  # test: Callable[[element], bool]
    if positive and not any(test(p) for p in positive):
        return False
    return not any(test(n) for n in negative)


def match_holds(m: Match, conn: ConnInfo) -> bool:
    """One `Match` against a connection. With no peer identity, identity-based values never
    match: a positive field fails, a `not_` field does not exclude."""
    ident = conn.src_identity
    ns = ident.namespace if ident else None
    principal = ident.principal if ident else None
    return (
        _field_matches(m.namespaces, m.not_namespaces, lambda s: s.matches(ns))
        and _field_matches(m.principals, m.not_principals, lambda s: s.matches(principal))
        and _field_matches(m.service_accounts, m.not_service_accounts, lambda s: s.matches(ident))
        and _field_matches(m.source_ips, m.not_source_ips, lambda n: conn.src_ip in n)
        and _field_matches(m.destination_ips, m.not_destination_ips, lambda n: conn.dst_ip in n)
        and _field_matches(
            m.destination_ports, m.not_destination_ports, lambda p: conn.dst_port == p
        )
    )


def rule_matches(rule: Rule, conn: ConnInfo) -> bool:
    return all(any(match_holds(m, conn) for m in c.matches) for c in rule.clauses)


def policy_matches(policy: Authorization, conn: ConnInfo) -> bool:
    return any(rule_matches(r, conn) for r in policy.rules)


def _evaluate(policies: Sequence[Authorization], conn: ConnInfo) -> tuple[bool, str | None, str]:
    allows = []
    for p in policies:
        if p.action is Action.DENY and policy_matches(p, conn):
            return False, p.key, f"denied by DENY policy {p.key}"
        if p.action is Action.ALLOW:
            allows.append(p)
    if not allows:
        return True, None, "allowed: no ALLOW policy applies"
    for p in allows:
        if policy_matches(p, conn):
            return True, p.key, f"allowed by ALLOW policy {p.key}"
    names = ", ".join(p.key for p in allows)
    return False, None, f"denied: no ALLOW policy matched (applicable: {names})"


def authorize(state: ProxyState, conn: ConnInfo) -> Decision:
    """Decide whether `conn` may reach `conn.dst_workload` (see the module docstring)."""
    mode, pa = state.mtls_mode(conn.dst_workload, conn.dst_port)
    applicable = state.policies_for(conn.dst_workload)
    enforced = [p for p in applicable if not p.dry_run]
    dry = [p for p in applicable if p.dry_run]
    dry_results = tuple(DryRunResult(p.key, p.action, policy_matches(p, conn)) for p in dry)
    dry_allowed = _evaluate(applicable, conn)[0] if dry else None

    if mode is MtlsMode.STRICT and conn.src_identity is None:
        return Decision(
            False,
            pa,
            f"denied: PeerAuthentication {pa} requires mTLS (STRICT) on port "
            f"{conn.dst_port} and the connection has no peer identity (plaintext)",
            dry_results,
            False if dry else None,
        )
    allowed, policy, reason = _evaluate(enforced, conn)
    return Decision(allowed, policy, reason, dry_results, dry_allowed)


def recheck(state: ProxyState, open_conns: Mapping[K, ConnInfo]) -> list[K]:
    """After a policy change: the ids of open connections that `state` now denies.
    The destination workload is looked up again by uid (its labels may have changed);
    if it is gone, the connection's own copy is used."""
    close: list[K] = []
    for cid, conn in open_conns.items():
        current = state.workload_by_uid(conn.dst_workload.uid)
        if current is not None and current is not conn.dst_workload:
            conn = ConnInfo(
                conn.src_ip, conn.src_port, conn.src_identity, current, conn.dst_ip, conn.dst_port
            )
        if not authorize(state, conn).allowed:
            close.append(cid)
    return close


# --------------------------------------------------------------------------- YAML -> typed


class PolicyError(ZtunnelError, ValueError):
    """Policy documents that cannot be converted; `problems` lists every reason, each with
    the document and the field path."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SupportsManifest(Protocol):
    def to_manifest(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class ConvertedPolicies:
    """Result of converting policy documents: what the node proxy enforces, and warnings
    (L7 parts dropped, waypoint-bound policies excluded, unsupported actions)."""

    authorizations: tuple[Authorization, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    warnings: tuple[str, ...] = ()
    excluded: tuple[str, ...] = field(default=())  # "Kind ns/name" not enforced here


_SOURCE_L4 = {
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "serviceAccounts",
    "notServiceAccounts",
}
# remoteIpBlocks come from X-Forwarded-For / PROXY: an HTTP notion the node proxy lacks.
_SOURCE_L7 = {"requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks"}
_OPERATION_L4 = {"ports", "notPorts"}
_OPERATION_L7 = {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}
_WHEN_L4 = {
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
}
_WHEN_L7_EXACT = {"remote.ip", "connection.sni"}
_WHEN_L7_PREFIXES = ("request.", "experimental.envoy.filters.")


def _is_l7_when(key: str) -> bool:
    return key in _WHEN_L7_EXACT or key.startswith(_WHEN_L7_PREFIXES)


def as_manifest(doc: Mapping[str, Any] | SupportsManifest | Any) -> dict[str, Any]:
    """A plain manifest dict from a dict, an object with `to_manifest()` (ketch.api models)
    or a pydantic model (dumped with YAML field names)."""
    if isinstance(doc, Mapping):
        return dict(doc)
    to_manifest = getattr(doc, "to_manifest", None)
    if callable(to_manifest):
        return dict(to_manifest())
    dump = getattr(doc, "model_dump", None)
    if callable(dump):
        return dict(dump(by_alias=True, exclude_none=True, mode="json"))
    raise PolicyError([f"cannot read a policy from {type(doc).__name__}: expected a mapping"])


class _Ctx:
    def __init__(self, where: str) -> None:
        self.where = where
        self.subject = ""
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{self.where}: {path}: {msg}")

    def warn(self, msg: str) -> None:
        self.warnings.append(f"{self.where}: {msg}")


def _mapping(ctx: _Ctx, path: str, v: Any) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        ctx.err(path, f"expected a mapping, got {type(v).__name__}")
        return {}
    return v


def _list(ctx: _Ctx, path: str, v: Any) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        ctx.err(path, f"expected a list, got {type(v).__name__}")
        return []
    return v


def _strings(ctx: _Ctx, path: str, v: Any) -> list[str]:
    out = []
    for i, s in enumerate(_list(ctx, path, v)):
        if not isinstance(s, str) or not s:
            ctx.err(f"{path}[{i}]", f"expected a non-empty string, got {s!r}")
        else:
            out.append(s)
    return out


def _labels(ctx: _Ctx, path: str, v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    sel = _mapping(ctx, path, v)
    unknown = set(sel) - {"matchLabels"}
    if unknown:
        ctx.err(path, f"unsupported selector field(s) {sorted(unknown)}; only matchLabels")
    ml = _mapping(ctx, f"{path}.matchLabels", sel.get("matchLabels"))
    out = {}
    for k, val in ml.items():
        if not isinstance(k, str) or not isinstance(val, str):
            ctx.err(f"{path}.matchLabels.{k}", f"label values must be strings, got {val!r}")
        else:
            out[k] = val
    return out


def _string_matches(
    ctx: _Ctx, path: str, v: Any, *, principal: bool = False
) -> tuple[StringMatch, ...]:
    out = []
    for s in _strings(ctx, path, v):
        if principal:
            # Istio compares principals without the scheme.
            s = s.removeprefix("spiffe://")
        out.append(StringMatch.parse(s))
    return tuple(out)


def _nets(ctx: _Ctx, path: str, v: Any) -> tuple[IpNet, ...]:
    out: list[IpNet] = []
    for i, s in enumerate(_strings(ctx, path, v)):
        try:
            out.append(ip_network(s, strict=False))
        except ValueError:
            ctx.err(f"{path}[{i}]", f"{s!r} is not an IP address or CIDR block")
    return tuple(out)


def _ports(ctx: _Ctx, path: str, v: Any) -> tuple[int, ...]:
    out = []
    for i, p in enumerate(_list(ctx, path, v)):
        n: int | None = None
        if isinstance(p, int) and not isinstance(p, bool):
            n = p
        elif isinstance(p, str) and p.isdigit():
            n = int(p)
        if n is None or not 1 <= n <= 65535:
            ctx.err(f"{path}[{i}]", f"{p!r} is not a port number (1..65535)")
        else:
            out.append(n)
    return tuple(out)


def _service_accounts(ctx: _Ctx, path: str, v: Any) -> tuple[ServiceAccountMatch, ...]:
    out = []
    for i, s in enumerate(_strings(ctx, path, v)):
        ns, sep, sa = s.partition("/")
        if not sep or not ns or not sa or "/" in sa or "*" in s:
            ctx.err(f"{path}[{i}]", f"{s!r} is not of the form <namespace>/<serviceaccount>")
        else:
            out.append(ServiceAccountMatch(ns, sa))
    return tuple(out)


def _source_match(ctx: _Ctx, path: str, src: Mapping[str, Any]) -> Match:
    if ("serviceAccounts" in src or "notServiceAccounts" in src) and (
        {"principals", "notPrincipals", "namespaces", "notNamespaces"} & set(src)
    ):
        ctx.err(path, "serviceAccounts cannot be combined with principals or namespaces")
    return Match(
        principals=_string_matches(
            ctx, f"{path}.principals", src.get("principals"), principal=True
        ),
        not_principals=_string_matches(
            ctx, f"{path}.notPrincipals", src.get("notPrincipals"), principal=True
        ),
        namespaces=_string_matches(ctx, f"{path}.namespaces", src.get("namespaces")),
        not_namespaces=_string_matches(ctx, f"{path}.notNamespaces", src.get("notNamespaces")),
        source_ips=_nets(ctx, f"{path}.ipBlocks", src.get("ipBlocks")),
        not_source_ips=_nets(ctx, f"{path}.notIpBlocks", src.get("notIpBlocks")),
        service_accounts=_service_accounts(
            ctx, f"{path}.serviceAccounts", src.get("serviceAccounts")
        ),
        not_service_accounts=_service_accounts(
            ctx, f"{path}.notServiceAccounts", src.get("notServiceAccounts")
        ),
    )


def _when_match(ctx: _Ctx, path: str, key: str, values: Any, not_values: Any) -> Match:
    vp, np = f"{path}.values", f"{path}.notValues"
    match key:
        case "source.ip":
            return Match(
                source_ips=_nets(ctx, vp, values), not_source_ips=_nets(ctx, np, not_values)
            )
        case "destination.ip":
            return Match(
                destination_ips=_nets(ctx, vp, values),
                not_destination_ips=_nets(ctx, np, not_values),
            )
        case "destination.port":
            return Match(
                destination_ports=_ports(ctx, vp, values),
                not_destination_ports=_ports(ctx, np, not_values),
            )
        case "source.namespace":
            return Match(
                namespaces=_string_matches(ctx, vp, values),
                not_namespaces=_string_matches(ctx, np, not_values),
            )
        case "source.principal":
            return Match(
                principals=_string_matches(ctx, vp, values, principal=True),
                not_principals=_string_matches(ctx, np, not_values, principal=True),
            )
    raise AssertionError(key)  # pragma: no cover - callers pass only _WHEN_L4 keys


def _convert_rule(ctx: _Ctx, path: str, raw: Any, action: Action) -> tuple[Rule | None, list[str]]:
    """One Istio rule -> Rule, or None when (ALLOW) it has L7 parts and so never matches.
    Also returns the L7 field paths found."""
    rule = _mapping(ctx, path, raw)
    unknown = set(rule) - {"from", "to", "when"}
    if unknown:
        ctx.err(path, f"unknown field(s) {sorted(unknown)}; a rule has from, to, when")
    l7: list[str] = []
    clauses: list[Clause] = []

    froms = _list(ctx, f"{path}.from", rule.get("from"))
    matches = []
    for i, f in enumerate(froms):
        fp = f"{path}.from[{i}]"
        src = _mapping(ctx, f"{fp}.source", _mapping(ctx, fp, f).get("source"))
        if not src:
            ctx.err(f"{fp}.source", "must not be empty")
            continue
        bad = set(src) - _SOURCE_L4 - _SOURCE_L7
        if bad:
            ctx.err(f"{fp}.source", f"unknown field(s) {sorted(bad)}")
        l7 += [f"{fp}.source.{k}" for k in sorted(set(src) & _SOURCE_L7)]
        matches.append(_source_match(ctx, f"{fp}.source", src))
    if matches:
        clauses.append(Clause(tuple(matches)))

    tos = _list(ctx, f"{path}.to", rule.get("to"))
    matches = []
    for i, t in enumerate(tos):
        tp = f"{path}.to[{i}]"
        op = _mapping(ctx, f"{tp}.operation", _mapping(ctx, tp, t).get("operation"))
        if not op:
            ctx.err(f"{tp}.operation", "must not be empty")
            continue
        bad = set(op) - _OPERATION_L4 - _OPERATION_L7
        if bad:
            ctx.err(f"{tp}.operation", f"unknown field(s) {sorted(bad)}")
        l7 += [f"{tp}.operation.{k}" for k in sorted(set(op) & _OPERATION_L7)]
        for k in sorted(set(op) & _OPERATION_L7):
            _strings(ctx, f"{tp}.operation.{k}", op[k])
        matches.append(
            Match(
                destination_ports=_ports(ctx, f"{tp}.operation.ports", op.get("ports")),
                not_destination_ports=_ports(ctx, f"{tp}.operation.notPorts", op.get("notPorts")),
            )
        )
    if matches:
        clauses.append(Clause(tuple(matches)))

    for i, w in enumerate(_list(ctx, f"{path}.when", rule.get("when"))):
        wp = f"{path}.when[{i}]"
        cond = _mapping(ctx, wp, w)
        key = cond.get("key")
        if not isinstance(key, str) or not key:
            ctx.err(f"{wp}.key", "is required")
            continue
        if cond.get("values") is None and cond.get("notValues") is None:
            ctx.err(wp, "one of values or notValues is required")
            continue
        if _is_l7_when(key):
            l7.append(f"{wp} (key {key})")
            continue
        if key not in _WHEN_L4:
            ctx.err(f"{wp}.key", f"unknown condition key {key!r}")
            continue
        clauses.append(
            Clause((_when_match(ctx, wp, key, cond.get("values"), cond.get("notValues")),))
        )

    if l7 and action is Action.ALLOW:
        return None, l7
    return Rule(tuple(clauses)), l7


def _meta(doc: Mapping[str, Any], ctx: _Ctx) -> tuple[str, str, Mapping[str, Any]]:
    meta = _mapping(ctx, "metadata", doc.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        ctx.err("metadata.name", "is required")
        name = "?"
    ns = meta.get("namespace", "default")
    if not isinstance(ns, str) or not ns:
        ctx.err("metadata.namespace", "must be a non-empty string")
        ns = "default"
    return name, ns, meta


def _convert_authz(
    doc: Mapping[str, Any], ctx: _Ctx, root_namespace: str
) -> tuple[Authorization | None, bool]:
    """Returns (policy or None if excluded, excluded?)."""
    name, ns, meta = _meta(doc, ctx)
    ctx.subject = f"AuthorizationPolicy {ns}/{name}"
    ctx.where = f"{ctx.where}{ctx.subject}"
    spec = _mapping(ctx, "spec", doc.get("spec"))
    known = {"selector", "targetRef", "targetRefs", "action", "provider", "rules"}
    if set(spec) - known:
        ctx.err("spec", f"unknown field(s) {sorted(set(spec) - known)}")
    if spec.get("targetRef") or spec.get("targetRefs"):
        if spec.get("selector"):
            ctx.err("spec", "selector and targetRef(s) cannot both be set")
        ctx.warn(
            "has targetRefs: it applies at the waypoint (L7), not at the node proxy; excluded here"
        )
        return None, True
    raw_action = spec.get("action", "ALLOW")
    if raw_action in ("AUDIT", "CUSTOM"):
        ctx.warn(
            f"action {raw_action} is not enforced by the node proxy (use a waypoint); excluded"
        )
        return None, True
    if raw_action not in ("ALLOW", "DENY"):
        ctx.err("spec.action", f"{raw_action!r} is not one of ALLOW, DENY, AUDIT, CUSTOM")
        return None, False
    action = Action(raw_action)
    selector = _labels(ctx, "spec.selector", spec.get("selector"))
    annotations = _mapping(ctx, "metadata.annotations", meta.get("annotations"))
    dry = annotations.get(DRY_RUN_ANNOTATION, "false")
    if dry not in ("true", "false", True, False):
        ctx.err(
            f"metadata.annotations.{DRY_RUN_ANNOTATION}", f"must be 'true' or 'false', got {dry!r}"
        )
    dry_run = dry in ("true", True)

    rules: list[Rule] = []
    raw_rules = spec.get("rules")
    dropped = 0
    for i, raw in enumerate(_list(ctx, "spec.rules", raw_rules)):
        rule, l7 = _convert_rule(ctx, f"spec.rules[{i}]", raw, action)
        if l7:
            what = ", ".join(l7)
            if rule is None:
                dropped += 1
                ctx.warn(
                    f"spec.rules[{i}] uses L7-only attributes ({what}); in an ALLOW policy "
                    "the node proxy can never match it, so the rule is ignored (use a waypoint "
                    "for L7 policy)"
                )
            else:
                ctx.warn(
                    f"spec.rules[{i}] uses L7-only attributes ({what}); in a DENY policy the "
                    "node proxy drops them and applies the rest of the rule, which denies "
                    "more broadly (use a waypoint for L7 policy)"
                )
        if rule is not None:
            rules.append(rule)
    if action is Action.ALLOW and raw_rules and not rules and dropped:
        ctx.warn(
            "no rule is left at L4: this ALLOW policy now denies every connection it applies to"
        )

    if selector:
        scope = Scope.WORKLOAD_SELECTOR
    elif ns == root_namespace:
        scope = Scope.GLOBAL
        selector = None
    else:
        scope = Scope.NAMESPACE
        selector = None
    if ctx.errors:
        return None, False
    try:
        return (
            Authorization(
                name=name,
                namespace=ns,
                scope=scope,
                action=action,
                rules=tuple(rules),
                dry_run=dry_run,
                selector=selector,
            ),
            False,
        )
    except MeshError as e:
        ctx.err("spec", str(e))
        return None, False


def _mode(ctx: _Ctx, path: str, v: Any) -> MtlsMode:
    mode = _mapping(ctx, path, v).get("mode", "UNSET")
    try:
        return MtlsMode(mode)
    except ValueError:
        ctx.err(f"{path}.mode", f"{mode!r} is not one of UNSET, DISABLE, PERMISSIVE, STRICT")
        return MtlsMode.UNSET


def _convert_peer_authn(doc: Mapping[str, Any], ctx: _Ctx) -> PeerAuthentication | None:
    name, ns, _ = _meta(doc, ctx)
    ctx.subject = f"PeerAuthentication {ns}/{name}"
    ctx.where = f"{ctx.where}{ctx.subject}"
    spec = _mapping(ctx, "spec", doc.get("spec"))
    known = {"selector", "mtls", "portLevelMtls"}
    if set(spec) - known:
        ctx.err("spec", f"unknown field(s) {sorted(set(spec) - known)}")
    selector = _labels(ctx, "spec.selector", spec.get("selector"))
    mode = _mode(ctx, "spec.mtls", spec.get("mtls"))
    ports: dict[int, MtlsMode] = {}
    for k, v in _mapping(ctx, "spec.portLevelMtls", spec.get("portLevelMtls")).items():
        p = _ports(ctx, f"spec.portLevelMtls.{k}", [k])
        m = _mode(ctx, f"spec.portLevelMtls.{k}", v)
        if p:
            ports[p[0]] = m
    if ports and not selector:
        ctx.err(
            "spec.portLevelMtls",
            "needs spec.selector (Istio allows port-level mTLS only for selected workloads)",
        )
    if mode is MtlsMode.DISABLE or MtlsMode.DISABLE in ports.values():
        ctx.warn(
            "mode DISABLE: the node proxy still uses HBONE between mesh workloads; it only "
            "stops requiring a peer identity (same as PERMISSIVE)"
        )
    if ctx.errors:
        return None
    try:
        return PeerAuthentication(name, ns, mode, selector, ports)
    except MeshError as e:
        ctx.err("spec", str(e))
        return None


def convert_policies(
    docs: Iterable[Mapping[str, Any] | SupportsManifest | Any],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    source: str = "",
) -> ConvertedPolicies:
    """Convert AuthorizationPolicy and PeerAuthentication documents (the YAML users write,
    as dicts, or ketch.api models) into the node proxy's types. Raises `PolicyError` with
    every problem found; otherwise returns the policies and the warnings."""
    authz: list[Authorization] = []
    pas: list[PeerAuthentication] = []
    warnings: list[str] = []
    excluded: list[str] = []
    errors: list[str] = []
    prefix = f"{source}: " if source else ""
    for i, raw in enumerate(docs):
        ctx = _Ctx(f"{prefix}policies[{i}] ")
        try:
            doc = as_manifest(raw)
        except PolicyError as e:
            errors += [f"{ctx.where}{p}" for p in e.problems]
            continue
        kind = doc.get("kind")
        api = str(doc.get("apiVersion", ""))
        if api and not api.startswith("security.istio.io/"):
            ctx.err("apiVersion", f"{api!r} is not security.istio.io/v1 or v1beta1")
        if kind == "AuthorizationPolicy":
            p, was_excluded = _convert_authz(doc, ctx, root_namespace)
            if p is not None:
                authz.append(p)
            if was_excluded:
                excluded.append(ctx.subject)
        elif kind == "PeerAuthentication":
            pa = _convert_peer_authn(doc, ctx)
            if pa is not None:
                pas.append(pa)
        else:
            ctx.err("kind", f"{kind!r} is not AuthorizationPolicy or PeerAuthentication")
        errors += ctx.errors
        warnings += ctx.warnings
    seen: set[tuple[str, str]] = set()
    for kind_name, key in [("AuthorizationPolicy", a.key) for a in authz] + [
        ("PeerAuthentication", p.key) for p in pas
    ]:
        if (kind_name, key) in seen:
            errors.append(f"{prefix}{kind_name} {key} is defined twice")
        seen.add((kind_name, key))
    if errors:
        raise PolicyError(errors)
    return ConvertedPolicies(tuple(authz), tuple(pas), tuple(warnings), tuple(excluded))
