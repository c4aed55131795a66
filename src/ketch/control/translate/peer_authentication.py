"""PeerAuthentication -> L4 `Authorization` policies, as istiod sends them to ztunnel.

ztunnel has no PeerAuthentication resource: istiod expresses "STRICT" as a DENY policy that
matches connections without a peer identity (`notPrincipals: [presence]`; with no identity a
`not_` field does not exclude, so the match holds only for plaintext) and attaches it to each
workload by name (`Workload.authorization_policies`). Two kinds of policy are produced
(istio `pilot/pkg/serviceregistry/ambient/policies.go`, `authorization.go`):

- `istio_converted_static_strict` in the root namespace, scope WORKLOAD_SELECTOR (so it
  applies only where a workload names it), sent as soon as any PeerAuthentication exists;
- `converted_peer_authentication_<name>` in the policy's namespace, for a PeerAuthentication
  with a selector and `portLevelMtls` outside the root namespace, when its ports change the
  effective mode: a DENY with one rule "no identity AND port not in the exempt ports"
  (PERMISSIVE/DISABLE ports under a STRICT mode), and/or one rule per STRICT port under a
  non-strict mode. Rules are OR'd, the clauses of a rule AND'd.

Which of them a workload names (`workload_policy_names`) follows istiod's
`convertedSelectorPeerAuthentications`: the oldest mesh-wide (root namespace, no selector),
namespace-wide and selecting (workload's namespace only; selecting policies in the root
namespace are ignored) policy each win their level; UNSET inherits; the workload level
decides between the static policy and its own converted policy.

Known istiod behaviours reproduced on purpose (the node proxy's native evaluation,
`ProxyState.mtls_mode`, differs; tests/unit/control/test_translate_peer_authentication.py
lists them):

- workload mode UNSET under an effective STRICT parent with a port set to DISABLE (not
  PERMISSIVE): istiod attaches the static STRICT policy only, so the DISABLE port stays
  STRICT;
- workload mode PERMISSIVE/DISABLE with a STRICT port, when the namespace has no mode and
  the mesh is STRICT: the STRICT port rule is skipped (the parent is STRICT) but the
  workload's PERMISSIVE wins, so the port is not enforced;
- mesh STRICT, a namespace-wide policy with mode UNSET, workload mode UNSET with a
  PERMISSIVE port: istiod counts the UNSET namespace policy as "not STRICT" when converting,
  so the converted policy is empty (not sent) while the workload names it instead of the
  static policy: no port is enforced.

Pure functions over the mesh model's `PeerAuthentication` (from
`ketch.control.translate.policy.translate_peer_authentication`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    Action,
    Authorization,
    Clause,
    Match,
    MatchKind,
    MtlsMode,
    PeerAuthentication,
    Rule,
    Scope,
    StringMatch,
    selector_matches,
)

#: istiod's names; `_` cannot occur in Kubernetes names, so they never clash with a user's.
STATIC_STRICT_POLICY_NAME = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"

_NO_IDENTITY = Match(not_principals=(StringMatch(MatchKind.PRESENCE),))


def converted_name(pa_name: str) -> str:
    """The name of the Authorization converted from PeerAuthentication `pa_name`."""
    return CONVERTED_PREFIX + pa_name


def static_strict_policy(root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> Authorization:
    """`<root>/istio_converted_static_strict`: deny connections without a peer identity.
    Scope WORKLOAD_SELECTOR with no selector: it applies only to workloads that name it."""
    return Authorization(
        name=STATIC_STRICT_POLICY_NAME,
        namespace=root_namespace,
        scope=Scope.WORKLOAD_SELECTOR,
        action=Action.DENY,
        rules=(Rule((Clause((_NO_IDENTITY,)),)),),
    )


def _is(mode: MtlsMode, *modes: MtlsMode) -> bool:
    return mode in modes


_NOT_STRICT = (MtlsMode.PERMISSIVE, MtlsMode.DISABLE)


def _oldest(candidates: Iterable[PeerAuthentication]) -> PeerAuthentication | None:
    """Of conflicting policies at one level the oldest wins (istiod `getOldestPeerAuthn`);
    without creation times (Ketch's files) the first by namespace/name, for determinism."""
    ordered = sorted(
        candidates,
        key=lambda p: (p.created is None, p.created.timestamp() if p.created else 0.0, p.key),
    )
    return ordered[0] if ordered else None


def _namespace_wide(pas: Iterable[PeerAuthentication], namespace: str) -> PeerAuthentication | None:
    return _oldest(p for p in pas if p.namespace == namespace and not p.selector)


def convert_peer_authentication(
    pa: PeerAuthentication,
    *,
    namespace_policy: PeerAuthentication | None,
    root_policy: PeerAuthentication | None,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Authorization | None:
    """istiod's `convertPeerAuthentication`: the converted policy of one selecting
    PeerAuthentication with port-level mTLS, given the effective namespace-wide and mesh-wide
    policies; None when there is nothing to send (not a selecting port-level policy, in the
    root namespace, or its ports change nothing)."""
    if pa.namespace == root_namespace or not pa.selector or not pa.port_modes:
        return None
    mode = pa.mode
    ns_mode = namespace_policy.mode if namespace_policy is not None else None
    root_mode = root_policy.mode if root_policy is not None else None
    strict_clauses: list[Clause] = []  # the rule "no identity AND not an exempt port"
    port_rules: list[Rule] = []  # one rule per STRICT port under a non-strict mode
    if mode is MtlsMode.STRICT:
        strict_clauses.append(Clause((_NO_IDENTITY,)))
    found_non_strict = False
    for port in sorted(pa.port_modes):
        port_mode = pa.port_modes[port]
        if port_mode is MtlsMode.STRICT:
            # Enforced by the parent already. istiod's condition, operator precedence kept:
            # the last alternative (namespace unset, mesh STRICT) holds whatever `mode` is.
            if (
                mode is MtlsMode.STRICT
                or (mode is MtlsMode.UNSET and ns_mode is MtlsMode.STRICT)
                or ((ns_mode is None or ns_mode is MtlsMode.UNSET) and root_mode is MtlsMode.STRICT)
            ):
                continue
            port_rules.append(
                Rule(
                    (
                        Clause(
                            (
                                Match(
                                    not_principals=_NO_IDENTITY.not_principals,
                                    destination_ports=(port,),
                                ),
                            )
                        ),
                    )
                )
            )
        elif _is(port_mode, *_NOT_STRICT):
            if _is(mode, *_NOT_STRICT):
                continue
            if mode is MtlsMode.UNSET and (
                (ns_mode is not None and ns_mode is not MtlsMode.STRICT)
                or (ns_mode is None and root_mode is not None and root_mode is not MtlsMode.STRICT)
                or (ns_mode is None and root_mode is None)
            ):
                continue
            found_non_strict = True
            strict_clauses.append(Clause((Match(not_destination_ports=(port,)),)))
    if mode is MtlsMode.STRICT and not found_non_strict:
        return None  # plain STRICT: the static policy covers it
    if not strict_clauses and not port_rules:
        return None
    merge_strict = (
        root_mode is MtlsMode.STRICT
        and (ns_mode is None or ns_mode in (MtlsMode.UNSET, MtlsMode.STRICT))
    ) or ns_mode is MtlsMode.STRICT
    if merge_strict and found_non_strict:
        strict_clauses.append(Clause((_NO_IDENTITY,)))
    rules = list(port_rules)
    if strict_clauses:
        rules.append(Rule(tuple(strict_clauses)))
    return Authorization(
        name=converted_name(pa.name),
        namespace=pa.namespace,
        scope=Scope.WORKLOAD_SELECTOR,
        action=Action.DENY,
        rules=tuple(rules),
    )


def converted_policies(
    pas: Sequence[PeerAuthentication], *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> tuple[Authorization, ...]:
    """Every Authorization istiod derives from `pas`: the static STRICT policy (whenever any
    PeerAuthentication exists) and the converted port-level policies, sorted by key."""
    if not pas:
        return ()
    root_policy = _namespace_wide(pas, root_namespace)
    out = [static_strict_policy(root_namespace)]
    for pa in pas:
        converted = convert_peer_authentication(
            pa,
            namespace_policy=_namespace_wide(pas, pa.namespace),
            root_policy=root_policy,
            root_namespace=root_namespace,
        )
        if converted is not None:
            out.append(converted)
    return tuple(sorted(out, key=lambda a: a.key))


@dataclass(frozen=True)
class EffectivePeerAuthentication:
    """The policies that decide a workload's mode, one per level (None: no policy)."""

    mesh: PeerAuthentication | None
    namespace: PeerAuthentication | None
    workload: PeerAuthentication | None


def effective_peer_authentication(
    pas: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> EffectivePeerAuthentication:
    """The oldest policy at each level for a workload in `namespace` with `labels`. Selecting
    policies in the root namespace are ignored, as istiod does."""
    mesh: list[PeerAuthentication] = []
    ns: list[PeerAuthentication] = []
    workload: list[PeerAuthentication] = []
    for pa in pas:
        if pa.namespace not in (namespace, root_namespace):
            continue
        if not pa.selector:
            (mesh if pa.namespace == root_namespace else ns).append(pa)
        elif pa.namespace != root_namespace and selector_matches(pa.selector, labels):
            workload.append(pa)
    return EffectivePeerAuthentication(_oldest(mesh), _oldest(ns), _oldest(workload))


def workload_policy_names(
    pas: Iterable[PeerAuthentication],
    namespace: str,
    labels: Mapping[str, str],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> tuple[str, ...]:
    """istiod's `convertedSelectorPeerAuthentications`: the `ns/name` keys (sorted) of the
    PeerAuthentication-derived policies a workload names: the static STRICT policy when its
    effective mode is STRICT, and/or its selecting policy's converted form when port-level
    settings make an exception."""
    eff = effective_peer_authentication(pas, namespace, labels, root_namespace=root_namespace)
    strict = False
    if eff.mesh is not None:
        strict = eff.mesh.mode is MtlsMode.STRICT
    if eff.namespace is not None and eff.namespace.mode is not MtlsMode.UNSET:
        strict = eff.namespace.mode is MtlsMode.STRICT
    port_key = ""
    w = eff.workload
    if w is not None:
        if w.mode is MtlsMode.STRICT:
            strict = True
        if _is(w.mode, *_NOT_STRICT):
            strict = False
        if w.port_modes:
            modes = list(w.port_modes.values())
            own_key = f"{w.namespace}/{converted_name(w.name)}"
            if w.mode is MtlsMode.STRICT:
                if any(_is(m, *_NOT_STRICT) for m in modes):
                    port_key, strict = own_key, False
            elif _is(w.mode, *_NOT_STRICT):
                if MtlsMode.STRICT in modes:
                    port_key = own_key
            elif strict:
                # istiod checks PERMISSIVE only here (not DISABLE): see the module docstring
                if MtlsMode.PERMISSIVE in modes:
                    port_key, strict = own_key, False
            elif MtlsMode.STRICT in modes:
                port_key = own_key
    names = set()
    if strict:
        names.add(f"{root_namespace}/{STATIC_STRICT_POLICY_NAME}")
    if port_key:
        names.add(port_key)
    return tuple(sorted(names))


def mtls_weakening_quirks(
    pas: Sequence[PeerAuthentication], *, root_namespace: str = DEFAULT_ROOT_NAMESPACE
) -> list[tuple[PeerAuthentication, str, str]]:
    """The selecting PeerAuthentications among `pas` that hit one of the two istiod quirks
    (module docstring) which enforce *less* mTLS than the policies say, as (policy, field
    path, message saying what happens and how to write it so it does not). Ketch keeps
    istiod's behaviour on the wire (a stock ztunnel must read the same policies); `ketch
    apply` prints these. Both need a mesh-wide STRICT policy; both are fixed by an explicit
    namespace-wide `mode: STRICT`, which is the namespace's effective mode already."""
    root = _namespace_wide(pas, root_namespace)
    if root is None or root.mode is not MtlsMode.STRICT:
        return []
    out = []
    for pa in pas:
        if pa.namespace == root_namespace or not pa.selector or not pa.port_modes:
            continue
        ns_policy = _namespace_wide(pas, pa.namespace)
        ns_mode = ns_policy.mode if ns_policy is not None else None
        fix = (
            f"set `mode: STRICT` on the namespace-wide PeerAuthentication {ns_policy.key}"
            if ns_policy is not None
            else f"add a PeerAuthentication without selector in namespace {pa.namespace} with "
            "`mode: STRICT`"
        ) + f" (the namespace's effective mode already, from {root.key})"
        strict_ports = sorted(p for p, m in pa.port_modes.items() if m is MtlsMode.STRICT)
        if _is(pa.mode, *_NOT_STRICT) and strict_ports and ns_mode in (None, MtlsMode.UNSET):
            ports = ", ".join(str(p) for p in strict_ports)
            out.append(
                (
                    pa,
                    "spec.portLevelMtls",
                    f"port(s) {ports} set to STRICT under mode {pa.mode.value} are not enforced: "
                    f"with the mesh-wide STRICT policy {root.key} and no namespace-wide mode, "
                    "istiod's conversion (kept by Ketch for ztunnel compatibility) skips them, "
                    f"so they accept plaintext; to enforce them, {fix}",
                )
            )
        elif (
            pa.mode is MtlsMode.UNSET
            and ns_mode is MtlsMode.UNSET
            and MtlsMode.PERMISSIVE in pa.port_modes.values()
        ):
            assert ns_policy is not None
            out.append(
                (
                    pa,
                    "spec.portLevelMtls",
                    "mTLS is enforced on no port of the selected workloads, not only the "
                    f"PERMISSIVE ones: with the namespace-wide policy {ns_policy.key} of mode "
                    f"UNSET under the mesh-wide STRICT policy {root.key}, istiod's conversion "
                    "(kept by Ketch for ztunnel compatibility) sends no policy for this one; "
                    f"to keep the other ports STRICT, {fix}",
                )
            )
    return out
