"""Istio AuthorizationPolicy / PeerAuthentication -> the mesh model's L4 `Authorization` and
`PeerAuthentication`, as istiod does for ztunnel (`pilot/pkg/serviceregistry/ambient/
authorization.go`). This module is the one place that decides which policy fields the node
proxy can enforce (L4) and which need a waypoint (L7); `ketch apply`'s warnings
(`policy_warnings`) and the translation (`translate_policies`) both read the tables below.

Translation, rule by rule (ISTIO-PARITY.md section 3):

- `from` becomes one clause with a match per source, `to` one clause with a match per
  operation, and each `when` condition a clause of its own. Clauses are AND'd, the matches
  of a clause OR'd.
- An ALLOW rule that uses any L7 attribute is dropped: it can never match at L4 (so an ALLOW
  policy whose rules are all dropped allows nothing).
- In a DENY rule, a `from`/`to` entry with only L7 fields, and every L7 `when` condition,
  becomes an empty match, which matches nothing (`ketch.ztunnel.rbac`). A rule whose clause
  holds only such matches can never match: the DENY is a no-op at L4, as in Istio. Entries
  that mix L4 and L7 fields keep their L4 part.
- `when` keys other than the five L4 ones (`source.ip`, `source.namespace`,
  `source.principal`, `destination.ip`, `destination.port`) count as L7, known or not.
- `serviceAccounts: [sa]` without a namespace means the policy's namespace.
- Scope: a selector -> WORKLOAD_SELECTOR, no selector in the root namespace -> GLOBAL, else
  NAMESPACE. `targetRef(s)`, AUDIT and CUSTOM policies are not sent to the node proxy.

Input is the user's objects validated by `ketch.api` (or plain manifests, validated here with
the same messages as `ketch apply`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_network
from typing import Any

from ketch.api import (
    AuthorizationPolicy,
    PeerAuthentication,
    Problem,
    ResourceError,
    apply_namespace_default,
    from_manifest,
    is_dry_run,
)
from ketch.api.security import Condition, Operation, Rule, Source
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    Action,
    Authorization,
    Clause,
    IpNet,
    Match,
    MeshError,
    MtlsMode,
    Scope,
    ServiceAccountMatch,
    StringMatch,
)
from ketch.mesh import PeerAuthentication as MeshPeerAuthentication
from ketch.mesh import Rule as MeshRule

# ----------------------------------------------------------------------- the L4/L7 tables

#: Source fields (python attribute -> YAML name) the node proxy cannot see: request
#: principals come from JWTs, remote IPs from X-Forwarded-For/PROXY headers.
SOURCE_L7_FIELDS: Mapping[str, str] = {
    "request_principals": "requestPrincipals",
    "not_request_principals": "notRequestPrincipals",
    "remote_ip_blocks": "remoteIpBlocks",
    "not_remote_ip_blocks": "notRemoteIpBlocks",
}
#: Operation fields that need HTTP (all but ports/notPorts).
OPERATION_L7_FIELDS: Mapping[str, str] = {
    "hosts": "hosts",
    "not_hosts": "notHosts",
    "methods": "methods",
    "not_methods": "notMethods",
    "paths": "paths",
    "not_paths": "notPaths",
}
#: The only `when` keys the node proxy evaluates; every other key is L7.
L4_CONDITION_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
#: Keys Istio documents for `when` beyond the L4 ones (bracketed keys take a name).
KNOWN_L7_CONDITION_PREFIXES = (
    "request.headers[",
    "request.auth.",
    "remote.ip",
    "connection.sni",
    "experimental.envoy.filters.",
)


def source_l7_fields(source: Source) -> list[str]:
    return [alias for attr, alias in SOURCE_L7_FIELDS.items() if getattr(source, attr)]


def operation_l7_fields(operation: Operation) -> list[str]:
    return [alias for attr, alias in OPERATION_L7_FIELDS.items() if getattr(operation, attr)]


def is_l4_condition(condition: Condition) -> bool:
    return condition.key in L4_CONDITION_KEYS


def rule_l7_fields(rule: Rule) -> list[str]:
    """The L7 attributes a rule uses (YAML names, `when <key>` for conditions), first-seen
    order, no duplicates."""
    found: list[str] = []
    for rf in rule.from_ or []:
        found += source_l7_fields(rf.source)
    for rt in rule.to or []:
        found += operation_l7_fields(rt.operation)
    found += [f"when {c.key}" for c in rule.when or [] if not is_l4_condition(c)]
    return list(dict.fromkeys(found))


def _deny_rule_inert(rule: Rule) -> bool:
    """A DENY rule that can never match at L4: some clause is made of L7-only parts."""
    froms = rule.from_ or []
    tos = rule.to or []
    if froms and all(_source_l4_empty(rf.source) for rf in froms):
        return True
    if tos and all(_operation_l4_empty(rt.operation) for rt in tos):
        return True
    return any(not is_l4_condition(c) for c in rule.when or [])


_SOURCE_L4 = (
    "principals",
    "not_principals",
    "namespaces",
    "not_namespaces",
    "service_accounts",
    "not_service_accounts",
    "ip_blocks",
    "not_ip_blocks",
)


def _source_l4_empty(source: Source) -> bool:
    return not any(getattr(source, f) for f in _SOURCE_L4)


def _operation_l4_empty(operation: Operation) -> bool:
    return not (operation.ports or operation.not_ports)


# ----------------------------------------------------------------------- warnings


def policy_warnings(resource: object) -> list[tuple[str, str]]:
    """(field path, message) pairs for a valid AuthorizationPolicy or PeerAuthentication whose
    meaning at the node proxy is probably not what its author expects. `ketch apply` and the
    standalone config print them."""
    if isinstance(resource, AuthorizationPolicy):
        return _authorization_warnings(resource)
    if isinstance(resource, PeerAuthentication):
        pa = resource.spec
        modes = [pa.mtls.mode if pa.mtls else "UNSET"]
        modes += [m.mode for m in (pa.port_level_mtls or {}).values()]
        if "DISABLE" in modes:
            return [
                (
                    "spec.mtls.mode" if modes[0] == "DISABLE" else "spec.portLevelMtls",
                    "DISABLE does not turn off mTLS between mesh workloads in ambient mode; it "
                    "only lets non-mesh clients connect in plaintext, like PERMISSIVE",
                )
            ]
    return []


def _authorization_warnings(policy: AuthorizationPolicy) -> list[tuple[str, str]]:
    spec = policy.spec
    out: list[tuple[str, str]] = []
    if spec.target_refs or spec.target_ref is not None:
        return out  # attached to a waypoint, which enforces L7
    if spec.action in ("AUDIT", "CUSTOM"):
        out.append(
            (
                "spec.action",
                f"action {spec.action} is enforced only by a waypoint: the node proxy ignores "
                "this policy (use targetRefs to attach it to a waypoint)",
            )
        )
        return out
    for i, rule in enumerate(spec.rules or []):
        path = f"spec.rules[{i}]"
        for j, cond in enumerate(rule.when or []):
            if not is_l4_condition(cond) and not cond.key.startswith(KNOWN_L7_CONDITION_PREFIXES):
                out.append(
                    (
                        f"{path}.when[{j}].key",
                        f"unknown condition key {cond.key!r}: counted as an L7 attribute, which "
                        f"the node proxy cannot evaluate (L4 keys: "
                        f"{', '.join(sorted(L4_CONDITION_KEYS))})",
                    )
                )
        for j, rf in enumerate(rule.from_ or []):
            schemed = [
                p
                for p in (*(rf.source.principals or []), *(rf.source.not_principals or []))
                if p.startswith("spiffe://")
            ]
            if schemed:
                out.append(
                    (
                        f"{path}.from[{j}].source",
                        f"principal {schemed[0]!r}: Istio principals are written without "
                        "'spiffe://' (<trust-domain>/ns/<ns>/sa/<sa>) and Istio never matches "
                        "this value; Ketch compares it without the prefix",
                    )
                )
        fields = rule_l7_fields(rule)
        if not fields:
            continue
        listed = ", ".join(fields)
        if spec.action == "ALLOW":
            consequence = "at L4 this ALLOW rule never matches"
        elif _deny_rule_inert(rule):
            consequence = (
                "at L4 this DENY rule can never match, so it denies nothing (as in Istio "
                "ambient); attach the policy to a waypoint with targetRefs to enforce it"
            )
        else:
            consequence = (
                "at L4 the HTTP parts are ignored and the rest of this DENY rule applies, "
                "which denies more broadly"
            )
        out.append((path, f"L7 fields ({listed}) are enforced only by a waypoint: {consequence}"))
    return out


# ----------------------------------------------------------------------- translation


class PolicyError(ValueError):
    """Policy documents that cannot be translated; `problems` lists every reason, each with
    the document and the field path, in `ketch apply`'s wording."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class TranslatedPolicies:
    """What the node proxy enforces, the warnings for the user, and the policies not sent
    to the node proxy ("Kind ns/name": waypoint-bound, AUDIT, CUSTOM)."""

    authorizations: tuple[Authorization, ...] = ()
    peer_authentications: tuple[MeshPeerAuthentication, ...] = ()
    warnings: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()


def _string_matches(
    values: list[str] | None, *, principal: bool = False
) -> tuple[StringMatch, ...]:
    out = []
    for v in values or []:
        if principal:
            v = v.removeprefix("spiffe://")  # warned about by policy_warnings
        out.append(StringMatch.parse(v))
    return tuple(out)


def _nets(values: Iterable[Any] | None) -> tuple[IpNet, ...]:
    return tuple(ip_network(str(v), strict=False) for v in values or [])


def _ports(values: Iterable[str | int] | None) -> tuple[int, ...]:
    return tuple(int(v) for v in values or [])


def _service_accounts(values: list[str] | None, namespace: str) -> tuple[ServiceAccountMatch, ...]:
    out = []
    for v in values or []:
        ns, sep, sa = v.partition("/")
        out.append(ServiceAccountMatch(ns, sa) if sep else ServiceAccountMatch(namespace, v))
    return tuple(out)


def _source_match(source: Source, namespace: str) -> Match:
    return Match(
        principals=_string_matches(source.principals, principal=True),
        not_principals=_string_matches(source.not_principals, principal=True),
        namespaces=_string_matches(source.namespaces),
        not_namespaces=_string_matches(source.not_namespaces),
        source_ips=_nets(source.ip_blocks),
        not_source_ips=_nets(source.not_ip_blocks),
        service_accounts=_service_accounts(source.service_accounts, namespace),
        not_service_accounts=_service_accounts(source.not_service_accounts, namespace),
    )


def _condition_match(c: Condition) -> Match:
    """An L4 condition as a match; an L7 one as the empty match (matches nothing)."""
    values, nots = c.values, c.not_values
    match c.key:
        case "source.ip":
            return Match(source_ips=_nets(values), not_source_ips=_nets(nots))
        case "destination.ip":
            return Match(destination_ips=_nets(values), not_destination_ips=_nets(nots))
        case "destination.port":
            return Match(destination_ports=_ports(values), not_destination_ports=_ports(nots))
        case "source.namespace":
            return Match(namespaces=_string_matches(values), not_namespaces=_string_matches(nots))
        case "source.principal":
            return Match(
                principals=_string_matches(values, principal=True),
                not_principals=_string_matches(nots, principal=True),
            )
    return Match()


def translate_rule(rule: Rule, action: Action, namespace: str) -> MeshRule | None:
    """One Istio rule at L4, or None for an ALLOW rule with L7 parts (it never matches)."""
    if action is Action.ALLOW and rule_l7_fields(rule):
        return None
    clauses: list[Clause] = []
    if rule.from_:
        clauses.append(Clause(tuple(_source_match(rf.source, namespace) for rf in rule.from_)))
    if rule.to:
        clauses.append(
            Clause(
                tuple(
                    Match(
                        destination_ports=_ports(rt.operation.ports),
                        not_destination_ports=_ports(rt.operation.not_ports),
                    )
                    for rt in rule.to
                )
            )
        )
    clauses += [Clause((_condition_match(c),)) for c in rule.when or []]
    return MeshRule(tuple(clauses))


def translate_authorization_policy(
    policy: AuthorizationPolicy, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> Authorization | None:
    """The node proxy's view of one policy, or None when it is not enforced there
    (targetRef(s): a waypoint's; AUDIT, CUSTOM: not in ztunnel's API)."""
    spec = policy.spec
    if spec.target_refs or spec.target_ref is not None or spec.action in ("AUDIT", "CUSTOM"):
        return None
    meta = policy.metadata
    namespace = meta.namespace or "default"
    action = Action(spec.action)
    rules = [translate_rule(r, action, namespace) for r in spec.rules or []]
    labels = dict(spec.selector.match_labels or {}) if spec.selector else {}
    if labels:
        scope, selector = Scope.WORKLOAD_SELECTOR, labels
    else:
        scope = Scope.GLOBAL if namespace == root_namespace else Scope.NAMESPACE
        selector = None
    return Authorization(
        name=meta.name,
        namespace=namespace,
        scope=scope,
        action=action,
        rules=tuple(r for r in rules if r is not None),
        dry_run=is_dry_run(policy),
        selector=selector,
    )


def _created(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def translate_peer_authentication(pa: PeerAuthentication) -> MeshPeerAuthentication:
    spec = pa.spec
    labels = dict(spec.selector.match_labels or {}) if spec.selector else {}
    return MeshPeerAuthentication(
        name=pa.metadata.name,
        namespace=pa.metadata.namespace or "default",
        mode=MtlsMode(spec.mtls.mode if spec.mtls else "UNSET"),
        selector=labels or None,
        port_modes={p: MtlsMode(m.mode) for p, m in (spec.port_level_mtls or {}).items()},
        created=_created(pa.metadata.creation_timestamp),
    )


def _resource(doc: Any, source: str, index: int) -> AuthorizationPolicy | PeerAuthentication:
    """A validated policy object from a model or a manifest (ketch apply's messages)."""
    if isinstance(doc, Mapping):
        # a list of policies need not repeat the one apiVersion these kinds have
        manifest = {"apiVersion": "security.istio.io/v1", **doc}
        resource = from_manifest(manifest, source=source, doc=0, path=f"policies[{index}]")
    else:
        resource = doc
    if not isinstance(resource, AuthorizationPolicy | PeerAuthentication):
        kind = getattr(resource, "kind", type(resource).__name__)
        raise ResourceError(
            [
                Problem(
                    source,
                    0,
                    f"policies[{index}].kind",
                    f"{kind!r} is not AuthorizationPolicy or PeerAuthentication",
                )
            ]
        )
    out = apply_namespace_default(resource)
    assert isinstance(out, AuthorizationPolicy | PeerAuthentication)
    return out


def translate_policies(
    docs: Iterable[Any],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    source: str = "",
) -> TranslatedPolicies:
    """Translate AuthorizationPolicy and PeerAuthentication objects (`ketch.api` models or
    manifests) for the node proxy. Raises `PolicyError` with every problem found."""
    authz: list[Authorization] = []
    pas: list[MeshPeerAuthentication] = []
    warnings: list[str] = []
    excluded: list[str] = []
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, doc in enumerate(docs):
        try:
            resource = _resource(doc, source, i)
        except ResourceError as e:
            errors += [str(p) for p in e.problems]
            continue
        key = f"{resource.metadata.namespace}/{resource.metadata.name}"
        where = f"{source}: " if source else ""
        warnings += [
            f"{where}policies[{i}] {resource.kind} {key}: {path}: {msg}"
            for path, msg in policy_warnings(resource)
        ]
        if (resource.kind, key) in seen:
            errors.append(f"{where}policies[{i}]: {resource.kind} {key} is defined twice")
            continue
        seen.add((resource.kind, key))
        try:
            if isinstance(resource, AuthorizationPolicy):
                p = translate_authorization_policy(resource, root_namespace=root_namespace)
                if p is None:
                    excluded.append(f"AuthorizationPolicy {key}")
                else:
                    authz.append(p)
            else:
                pas.append(translate_peer_authentication(resource))
        except (MeshError, ValueError) as e:
            errors.append(f"{where}policies[{i}] {resource.kind} {key}: {e}")
    if errors:
        raise PolicyError(errors)
    return TranslatedPolicies(tuple(authz), tuple(pas), tuple(warnings), tuple(excluded))


def peer_authentication_warnings(
    applied: Iterable[Mapping[str, Any]],
    stored: Callable[[], Iterable[Mapping[str, Any]]],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> list[str]:
    """For `ketch apply`: the mTLS-weakening istiod quirks (`peer_authentication.
    mtls_weakening_quirks`) that PeerAuthentications hit once the `applied` manifests (any
    kinds, namespaces filled in) replace their stored versions among `stored()` (the store's
    PeerAuthentication manifests, read only when a PeerAuthentication is applied), one line each: `PeerAuthentication ns/name: path:
    message`. Only policies the apply can affect are reported: those in a namespace it writes
    a PeerAuthentication to (every namespace when it writes one to the root namespace)."""
    from ketch.control.translate.peer_authentication import mtls_weakening_quirks

    def typed(manifests: Iterable[Mapping[str, Any]]) -> list[PeerAuthentication]:
        out = []
        for m in manifests:
            if m.get("kind") != "PeerAuthentication":
                continue
            try:
                pa = from_manifest(m, source="apply")
            except ResourceError:
                continue  # refused by the apply itself, with its own message
            if isinstance(pa, PeerAuthentication):
                out.append(pa)
        return out

    new = typed(applied)
    if not new:
        return []
    by_key = {(p.metadata.namespace or "default", p.metadata.name): p for p in typed(stored())}
    by_key.update({(p.metadata.namespace or "default", p.metadata.name): p for p in new})
    touched = {p.metadata.namespace or "default" for p in new}
    mesh = [translate_peer_authentication(p) for _, p in sorted(by_key.items())]
    return [
        f"PeerAuthentication {q.key}: {path}: {message}"
        for q, path, message in mtls_weakening_quirks(mesh, root_namespace=root_namespace)
        if root_namespace in touched or q.namespace in touched
    ]
