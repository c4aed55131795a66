"""PeerAuthentication -> istiod's converted Authorization policies and the names a workload
carries, then the same decisions as the node proxy's native PeerAuthentication evaluation.

Cases follow Istio's documented examples (architecture/ambient/peer-authentication.md and the
`peer-authn-*` test data of pilot/pkg/serviceregistry/ambient)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from ipaddress import ip_address

import pytest

from ketch.control.translate.peer_authentication import (
    STATIC_STRICT_POLICY_NAME,
    convert_peer_authentication,
    converted_policies,
    mtls_weakening_quirks,
    static_strict_policy,
    workload_policy_names,
)
from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
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
    Workload,
)
from ketch.ztunnel.rbac import Connection, authorize
from ketch.ztunnel.state import ProxyState

M = MtlsMode
ROOT = "istio-system"
STATIC = f"{ROOT}/{STATIC_STRICT_POLICY_NAME}"
NO_ID = Match(not_principals=(StringMatch(MatchKind.PRESENCE),))
LABELS = {"app": "a"}


def mesh(mode: MtlsMode, name: str = "default") -> PeerAuthentication:
    return PeerAuthentication(name, ROOT, mode)


def ns(
    mode: MtlsMode, name: str = "default", created: datetime | None = None
) -> PeerAuthentication:
    return PeerAuthentication(name, "app", mode, created=created)


def wl(
    mode: MtlsMode, ports: dict[int, MtlsMode] | None = None, name: str = "wl", **kw: object
) -> PeerAuthentication:
    return PeerAuthentication(name, "app", mode, selector=LABELS, port_modes=ports or {}, **kw)  # type: ignore[arg-type]


def deny(name: str, *rules: Rule) -> Authorization:
    return Authorization(name, "app", Scope.WORKLOAD_SELECTOR, Action.DENY, rules)


# --- the static policy


def test_static_strict_policy_is_attached_by_name_only() -> None:
    p = static_strict_policy(ROOT)
    assert p.key == STATIC
    assert p.scope is Scope.WORKLOAD_SELECTOR
    assert p.selector is None
    assert p.action is Action.DENY
    assert p.rules == (Rule((Clause((NO_ID,)),)),)


def test_static_policy_is_sent_once_any_peer_authentication_exists() -> None:
    assert converted_policies([]) == ()
    assert converted_policies([ns(M.PERMISSIVE)], root_namespace=ROOT) == (
        static_strict_policy(ROOT),
    )


# --- convert_peer_authentication (istiod convertPeerAuthentication)

CONVERT_CASES = [
    pytest.param(
        # the documented example: STRICT except port 9090
        wl(M.STRICT, {9090: M.PERMISSIVE}, name="strict-and-permissive-mtls"),
        None,
        None,
        deny(
            "converted_peer_authentication_strict-and-permissive-mtls",
            Rule((Clause((NO_ID,)), Clause((Match(not_destination_ports=(9090,)),)))),
        ),
        id="strict-and-permissive-port",
    ),
    pytest.param(
        wl(M.PERMISSIVE, {9090: M.STRICT}),
        None,
        None,
        deny(
            "converted_peer_authentication_wl",
            Rule(
                (Clause((Match(not_principals=NO_ID.not_principals, destination_ports=(9090,)),)),)
            ),
        ),
        id="permissive-port-strict",
    ),
    pytest.param(
        wl(M.UNSET, {9090: M.STRICT}),
        None,
        None,
        deny(
            "converted_peer_authentication_wl",
            Rule(
                (Clause((Match(not_principals=NO_ID.not_principals, destination_ports=(9090,)),)),)
            ),
        ),
        id="unset-port-strict",
    ),
    pytest.param(wl(M.STRICT, {9090: M.STRICT}), None, None, None, id="strict-and-strict-port"),
    pytest.param(wl(M.STRICT), None, None, None, id="strict-workload-no-ports"),
    pytest.param(
        wl(M.PERMISSIVE, {9090: M.DISABLE}), None, None, None, id="permissive-port-disable"
    ),
    pytest.param(
        # the parent (namespace) STRICT is merged in: one rule, no identity AND not 9090
        wl(M.UNSET, {9090: M.PERMISSIVE}),
        ns(M.STRICT),
        None,
        deny(
            "converted_peer_authentication_wl",
            Rule((Clause((Match(not_destination_ports=(9090,)),)), Clause((NO_ID,)))),
        ),
        id="ns-strict-unset-port-permissive",
    ),
    pytest.param(
        wl(M.UNSET, {9090: M.PERMISSIVE}),
        None,
        mesh(M.STRICT),
        deny(
            "converted_peer_authentication_wl",
            Rule((Clause((Match(not_destination_ports=(9090,)),)), Clause((NO_ID,)))),
        ),
        id="mesh-strict-unset-port-permissive",
    ),
    pytest.param(
        wl(M.UNSET, {9090: M.STRICT}), ns(M.STRICT), None, None, id="strict-port-under-strict-ns"
    ),
    pytest.param(
        PeerAuthentication("wl", ROOT, M.STRICT, selector=LABELS, port_modes={9090: M.PERMISSIVE}),
        None,
        None,
        None,
        id="root-namespace-selector-ignored",
    ),
]


@pytest.mark.parametrize(("pa", "ns_pa", "root_pa", "expected"), CONVERT_CASES)
def test_convert_peer_authentication(
    pa: PeerAuthentication,
    ns_pa: PeerAuthentication | None,
    root_pa: PeerAuthentication | None,
    expected: Authorization | None,
) -> None:
    got = convert_peer_authentication(
        pa, namespace_policy=ns_pa, root_policy=root_pa, root_namespace=ROOT
    )
    assert got == expected


# --- workload_policy_names (istiod convertedSelectorPeerAuthentications)

CONVERTED = "app/converted_peer_authentication_wl"

NAMES_CASES = [
    pytest.param([], (), id="none"),
    pytest.param([mesh(M.STRICT)], (STATIC,), id="mesh-strict"),
    pytest.param([mesh(M.STRICT), ns(M.PERMISSIVE)], (), id="ns-permissive-beats-mesh"),
    pytest.param([mesh(M.STRICT), ns(M.UNSET)], (STATIC,), id="ns-unset-inherits"),
    pytest.param([mesh(M.PERMISSIVE), ns(M.STRICT)], (STATIC,), id="ns-strict"),
    pytest.param([ns(M.STRICT), wl(M.PERMISSIVE)], (), id="workload-permissive-beats-ns"),
    pytest.param([ns(M.PERMISSIVE), wl(M.STRICT)], (STATIC,), id="workload-strict"),
    pytest.param([wl(M.STRICT, {9090: M.PERMISSIVE})], (CONVERTED,), id="strict-port-exception"),
    pytest.param([wl(M.STRICT, {9090: M.STRICT})], (STATIC,), id="strict-all-ports"),
    pytest.param([wl(M.PERMISSIVE, {9090: M.STRICT})], (CONVERTED,), id="permissive-strict-port"),
    pytest.param([ns(M.STRICT), wl(M.UNSET, {9090: M.PERMISSIVE})], (CONVERTED,), id="merged"),
    pytest.param([wl(M.UNSET, {9090: M.STRICT})], (CONVERTED,), id="unset-strict-port"),
    pytest.param(
        [PeerAuthentication("x", ROOT, M.STRICT, selector=LABELS)], (), id="root-selector-ignored"
    ),
    pytest.param([PeerAuthentication("x", "other", M.STRICT)], (), id="other-namespace-ignored"),
    pytest.param(
        [PeerAuthentication("x", "app", M.STRICT, selector={"app": "b"})], (), id="not-selected"
    ),
]


@pytest.mark.parametrize(("pas", "expected"), NAMES_CASES)
def test_workload_policy_names(pas: list[PeerAuthentication], expected: tuple[str, ...]) -> None:
    assert workload_policy_names(pas, "app", LABELS, root_namespace=ROOT) == expected


def test_oldest_wins_a_conflict_at_one_level() -> None:
    old = datetime(2024, 1, 1, tzinfo=UTC)
    new = datetime(2025, 1, 1, tzinfo=UTC)
    # "b-strict" is older, so it wins despite sorting after "a-permissive" by name
    pas = [ns(M.PERMISSIVE, "a-permissive", new), ns(M.STRICT, "b-strict", old)]
    assert workload_policy_names(pas, "app", LABELS, root_namespace=ROOT) == (STATIC,)
    pas = [ns(M.PERMISSIVE, "a-permissive", old), ns(M.STRICT, "b-strict", new)]
    assert workload_policy_names(pas, "app", LABELS, root_namespace=ROOT) == ()
    # selecting policies too: the older one's converted name is attached
    pas = [
        wl(M.STRICT, {9090: M.PERMISSIVE}, name="young", created=new),
        wl(M.STRICT, {8080: M.PERMISSIVE}, name="old", created=old),
    ]
    assert workload_policy_names(pas, "app", LABELS, root_namespace=ROOT) == (
        "app/converted_peer_authentication_old",
    )


# --- the converted policies decide as the native PeerAuthentication evaluation

ADDR = ip_address("10.0.0.1")
PEER = SpiffeId("cluster.local", "client", "sa")


def _states(pas: list[PeerAuthentication]) -> tuple[ProxyState, Workload, ProxyState, Workload]:
    native_w = Workload(uid="u", name="a", namespace="app", addresses=(ADDR,), labels=LABELS)
    names = workload_policy_names(pas, "app", LABELS, root_namespace=ROOT)
    conv_w = Workload(
        uid="u",
        name="a",
        namespace="app",
        addresses=(ADDR,),
        labels=LABELS,
        authorization_policies=names,
    )
    native = ProxyState.build([native_w], peer_authentications=pas, root_namespace=ROOT)
    conv = ProxyState.build(
        [conv_w], policies=converted_policies(pas, root_namespace=ROOT), root_namespace=ROOT
    )
    return native, native_w, conv, conv_w


def _decide(state: ProxyState, w: Workload, port: int, ident: SpiffeId | None) -> bool:
    return authorize(state, Connection(ip_address("10.0.0.2"), 40000, ident, w, ADDR, port)).allowed


_LEVEL = [None, M.UNSET, M.PERMISSIVE, M.DISABLE, M.STRICT]


def _configs() -> list[tuple[MtlsMode | None, ...]]:
    out = []
    for m, n, w, p in itertools.product(_LEVEL, _LEVEL, _LEVEL, _LEVEL):
        if w is None and p is not None:
            continue
        out.append((m, n, w, p))
    return out


def _pas(
    m: MtlsMode | None, n: MtlsMode | None, w: MtlsMode | None, p: MtlsMode | None
) -> list[PeerAuthentication]:
    pas = []
    if m is not None:
        pas.append(mesh(m))
    if n is not None:
        pas.append(ns(n))
    if w is not None:
        pas.append(wl(w, {9090: p} if p is not None else None))
    return pas


def _istio_quirk(
    m: MtlsMode | None, n: MtlsMode | None, w: MtlsMode | None, p: MtlsMode | None
) -> int | None:
    """The combinations where istiod's conversion decides differently from the native
    precedence (module docstring of ketch.control.translate.peer_authentication): the one
    port where plaintext is decided differently, else None."""
    parent_strict = n is M.STRICT or (n in (None, M.UNSET) and m is M.STRICT)
    # 1: workload UNSET, port DISABLE, effective parent STRICT: istiod keeps 9090 STRICT
    if w is M.UNSET and p is M.DISABLE and parent_strict:
        return 9090
    # 2: workload PERMISSIVE/DISABLE with a STRICT port, no namespace mode, mesh STRICT
    if w in (M.PERMISSIVE, M.DISABLE) and p is M.STRICT and n in (None, M.UNSET) and m is M.STRICT:
        return 9090
    # 3: mesh STRICT, namespace UNSET, workload UNSET with a PERMISSIVE port: istiod enforces
    # nothing, so the other ports (80 here) accept plaintext too
    if m is M.STRICT and n is M.UNSET and w is M.UNSET and p is M.PERMISSIVE:
        return 80
    return None


@pytest.mark.parametrize(
    "config", _configs(), ids=lambda c: "-".join(x.name if x else "none" for x in c)
)
def test_converted_policies_decide_like_native_peer_authentication(
    config: tuple[MtlsMode | None, MtlsMode | None, MtlsMode | None, MtlsMode | None],
) -> None:
    pas = _pas(*config)
    native, native_w, conv, conv_w = _states(pas)
    mismatches = [
        (port, ident is not None)
        for port in (80, 9090)
        for ident in (None, PEER)
        if _decide(native, native_w, port, ident) != _decide(conv, conv_w, port, ident)
    ]
    quirk_port = _istio_quirk(*config)
    # only plaintext differs, on exactly one port, and only in the listed cases
    assert mismatches == ([] if quirk_port is None else [(quirk_port, False)])


def test_documented_example_rejects_plaintext_except_on_9090() -> None:
    pas = [wl(M.STRICT, {9090: M.PERMISSIVE})]
    _, _, conv, w = _states(pas)
    assert not _decide(conv, w, 80, None)
    assert _decide(conv, w, 9090, None)
    assert _decide(conv, w, 80, PEER)
    assert _decide(conv, w, 9090, PEER)


# --- the mTLS-weakening quirks are warned about (ketch apply)


@pytest.mark.parametrize(
    "config", _configs(), ids=lambda c: "-".join(x.name if x else "none" for x in c)
)
def test_weakening_quirks_are_flagged_exactly_and_the_advice_fixes_them(
    config: tuple[MtlsMode | None, MtlsMode | None, MtlsMode | None, MtlsMode | None],
) -> None:
    """Flagged exactly where istiod's conversion accepts plaintext that the policies refuse
    (quirks 2 and 3; quirk 1 is stricter, not flagged), and the advice (an explicit
    namespace-wide STRICT) makes the converted policies decide as the native evaluation,
    with the same decisions as before for every port."""
    pas = _pas(*config)
    native, native_w, conv, conv_w = _states(pas)
    weaker = [
        port
        for port in (80, 9090)
        if _decide(conv, conv_w, port, None) and not _decide(native, native_w, port, None)
    ]
    flagged = mtls_weakening_quirks(pas, root_namespace=ROOT)
    assert bool(flagged) == bool(weaker)
    if not flagged:
        return
    m, _, w, p = config
    fixed = _pas(m, M.STRICT, w, p)
    fixed_native, fixed_nw, fixed_conv, fixed_cw = _states(fixed)
    assert mtls_weakening_quirks(fixed, root_namespace=ROOT) == []
    for port in (80, 9090):
        for ident in (None, PEER):
            want = _decide(native, native_w, port, ident)
            assert _decide(fixed_native, fixed_nw, port, ident) == want
            assert _decide(fixed_conv, fixed_cw, port, ident) == want
