"""L4 authorization at the node proxy: Istio's AuthorizationPolicy and PeerAuthentication
semantics, as pure functions.

Data path: the inbound listeners (15008 HBONE, 15006 plaintext) build a `Connection` for every
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
and no `not_` value matches. An all-empty match matches nothing. This
is ztunnel's `rbac.rs` model; `ketch.control.translate.policy` compiles Istio's YAML into it
as istiod does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    Action,
    Authorization,
    IpAddr,
    Match,
    MtlsMode,
    Rule,
    Workload,
)
from ketch.ztunnel.state import ProxyState

K = TypeVar("K", bound=Hashable)

# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Connection:
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


def match_holds(m: Match, conn: Connection) -> bool:
    """One `Match` against a connection. An all-empty match matches nothing (ztunnel's
    `rbac.rs` skips it; istiod emits one for the L7-only parts of a DENY rule). With no peer
    identity, identity-based values never match: a positive field fails, a `not_` field
    does not exclude."""
    if m.is_empty():
        return False
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


def rule_matches(rule: Rule, conn: Connection) -> bool:
    return all(any(match_holds(m, conn) for m in c.matches) for c in rule.clauses)


def policy_matches(policy: Authorization, conn: Connection) -> bool:
    return any(rule_matches(r, conn) for r in policy.rules)


def _evaluate(policies: Sequence[Authorization], conn: Connection) -> tuple[bool, str | None, str]:
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


def authorize(state: ProxyState, conn: Connection) -> Decision:
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


def recheck(state: ProxyState, open_conns: Mapping[K, Connection]) -> list[K]:
    """After a policy change: the ids of open connections that `state` now denies.
    The destination workload is looked up again by uid (its labels may have changed);
    if it is gone, the connection's own copy is used."""
    close: list[K] = []
    for cid, conn in open_conns.items():
        current = state.workload_by_uid(conn.dst_workload.uid)
        if current is not None and current is not conn.dst_workload:
            conn = Connection(
                conn.src_ip, conn.src_port, conn.src_identity, current, conn.dst_ip, conn.dst_port
            )
        if not authorize(state, conn).allowed:
            close.append(cid)
    return close
