"""Table tests of L4 authorization: YAML policies in, decisions out."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.control.translate.policy import translate_policies
from ketch.identity.spiffe import SpiffeId
from ketch.mesh import Action, Authorization, Clause, Match, Rule, Scope, Workload
from ketch.ztunnel.rbac import Connection, authorize, recheck
from ketch.ztunnel.state import ProxyState

SERVER = Workload(
    uid="srv",
    name="server-abc",
    namespace="app",
    addresses=(ip_address("10.0.0.2"),),
    service_account="server",
    labels={"app": "server", "tier": "backend"},
)
CLIENT_ID = SpiffeId("cluster.local", "client-ns", "client")
OTHER_ID = SpiffeId("cluster.local", "other", "robot")


def conn(
    identity: SpiffeId | None = CLIENT_ID,
    src_ip: str = "10.0.1.5",
    dst_port: int = 8080,
    dst_ip: str = "10.0.0.2",
    dst: Workload = SERVER,
) -> Connection:
    return Connection(ip_address(src_ip), 40000, identity, dst, ip_address(dst_ip), dst_port)


def ap(
    rules: list[dict[str, Any]] | None = None,
    *,
    name: str = "p",
    ns: str = "app",
    action: str | None = None,
    selector: dict[str, str] | None = None,
    dry_run: bool = False,
    extra_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if rules is not None:
        spec["rules"] = rules
    if action:
        spec["action"] = action
    if selector:
        spec["selector"] = {"matchLabels": selector}
    spec.update(extra_spec or {})
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if dry_run:
        meta["annotations"] = {"istio.io/dry-run": "true"}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta,
        "spec": spec,
    }


def pa(
    mode: str, *, ns: str = "app", name: str = "pa", created: str | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"mtls": {"mode": mode}, **spec}
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "PeerAuthentication",
        "metadata": meta,
        "spec": body,
    }


def src(**source: Any) -> dict[str, Any]:
    return {"from": [{"source": source}]}


def to(**operation: Any) -> dict[str, Any]:
    return {"to": [{"operation": operation}]}


def when(
    key: str, values: list[str] | None = None, not_values: list[str] | None = None
) -> dict[str, Any]:
    cond: dict[str, Any] = {"key": key}
    if values is not None:
        cond["values"] = values
    if not_values is not None:
        cond["notValues"] = not_values
    return {"when": [cond]}


def state(*docs: dict[str, Any], workloads: tuple[Workload, ...] = (SERVER,)) -> ProxyState:
    conv = translate_policies(docs)
    return ProxyState.build(workloads, (), conv.authorizations, conv.peer_authentications)


ALLOW_CLIENT = ap([src(principals=["cluster.local/ns/client-ns/sa/client"])])

CASES: list[tuple[str, list[dict[str, Any]], Connection, bool]] = [
    # --- defaults and overall evaluation order
    ("no policy allows", [], conn(), True),
    ("allow-nothing (empty spec) denies", [ap()], conn(), False),
    ("allow-all (one empty rule)", [ap([{}])], conn(), True),
    ("deny with no rules denies nothing", [ap(action="DENY")], conn(), True),
    ("deny with empty rule denies all", [ap([{}], action="DENY")], conn(), False),
    ("deny beats allow", [ap([{}]), ap([{}], name="d", action="DENY")], conn(), False),
    ("no matching allow denies", [ALLOW_CLIENT], conn(OTHER_ID), False),
    (
        "one of several allows matches",
        [ALLOW_CLIENT, ap([src(namespaces=["other"])], name="b")],
        conn(OTHER_ID),
        True,
    ),
    (
        "rules are ORed",
        [ap([src(namespaces=["x"]), src(namespaces=["other"])])],
        conn(OTHER_ID),
        True,
    ),
    # --- principals
    ("principal exact", [ALLOW_CLIENT], conn(), True),
    (
        "principal with spiffe:// prefix",
        [ap([src(principals=["spiffe://cluster.local/ns/client-ns/sa/client"])])],
        conn(),
        True,
    ),
    ("principal prefix", [ap([src(principals=["cluster.local/ns/client-ns/*"])])], conn(), True),
    ("principal suffix", [ap([src(principals=["*/sa/client"])])], conn(), True),
    ("principal suffix miss", [ap([src(principals=["*/sa/robot"])])], conn(), False),
    ("principal presence needs identity", [ap([src(principals=["*"])])], conn(None), False),
    ("principal presence with identity", [ap([src(principals=["*"])])], conn(), True),
    (
        "values in a field are ORed",
        [ap([src(principals=["a/ns/b/sa/c", "*/sa/client"])])],
        conn(),
        True,
    ),
    ("notPrincipals excludes", [ap([src(notPrincipals=["*/sa/client"])])], conn(), False),
    (
        "notPrincipals lets others in",
        [ap([src(notPrincipals=["*/sa/client"])])],
        conn(OTHER_ID),
        True,
    ),
    # Istio's "deny plaintext" idiom: no identity is not excluded by notPrincipals
    (
        "deny notPrincipals * denies plaintext",
        [ap([src(notPrincipals=["*"])], action="DENY")],
        conn(None),
        False,
    ),
    (
        "deny notPrincipals * denies nothing with identity",
        [ap([src(notPrincipals=["*"])], action="DENY")],
        conn(),
        True,
    ),
    # --- namespaces
    ("namespace exact", [ap([src(namespaces=["client-ns"])])], conn(), True),
    ("namespace prefix", [ap([src(namespaces=["client-*"])])], conn(), True),
    ("namespace needs identity", [ap([src(namespaces=["client-ns"])])], conn(None), False),
    ("notNamespaces excludes", [ap([src(notNamespaces=["client-ns"])])], conn(), False),
    (
        "deny notNamespaces denies plaintext",
        [ap([src(notNamespaces=["app"])], action="DENY")],
        conn(None),
        False,
    ),
    (
        "deny from other namespaces",
        [ap([src(notNamespaces=["app"])], action="DENY")],
        conn(),
        False,
    ),
    # --- service accounts
    ("serviceAccounts match", [ap([src(serviceAccounts=["client-ns/client"])])], conn(), True),
    (
        "serviceAccounts ignore trust domain",
        [ap([src(serviceAccounts=["client-ns/client"])])],
        conn(SpiffeId("td2", "client-ns", "client")),
        True,
    ),
    ("serviceAccounts miss", [ap([src(serviceAccounts=["client-ns/other"])])], conn(), False),
    (
        "notServiceAccounts excludes",
        [ap([src(notServiceAccounts=["client-ns/client"])])],
        conn(),
        False,
    ),
    (
        "notServiceAccounts others ok",
        [ap([src(notServiceAccounts=["client-ns/client"])])],
        conn(OTHER_ID),
        True,
    ),
    # --- source IPs
    ("ipBlocks CIDR", [ap([src(ipBlocks=["10.0.1.0/24"])])], conn(), True),
    ("ipBlocks single IP", [ap([src(ipBlocks=["10.0.1.5"])])], conn(), True),
    ("ipBlocks miss", [ap([src(ipBlocks=["10.9.0.0/16"])])], conn(), False),
    ("ipBlocks works without identity", [ap([src(ipBlocks=["10.0.1.0/24"])])], conn(None), True),
    ("notIpBlocks excludes", [ap([src(notIpBlocks=["10.0.1.0/24"])])], conn(), False),
    (
        "ipBlocks and notIpBlocks",
        [ap([src(ipBlocks=["10.0.0.0/8"], notIpBlocks=["10.0.1.5/32"])])],
        conn(),
        False,
    ),
    (
        "ipv6 block",
        [ap([src(ipBlocks=["fd00::/64"])])],
        conn(src_ip="fd00::5", dst_ip="10.0.0.2"),
        True,
    ),
    # --- destination ports / IPs
    ("ports match (strings)", [ap([to(ports=["8080"])])], conn(), True),
    ("ports miss", [ap([to(ports=["9090"])])], conn(), False),
    ("notPorts excludes", [ap([to(notPorts=["8080"])])], conn(), False),
    ("notPorts others ok", [ap([to(notPorts=["9090"])])], conn(), True),
    (
        "to entries are ORed",
        [ap([{"to": [{"operation": {"ports": ["1"]}}, {"operation": {"ports": ["8080"]}}]}])],
        conn(),
        True,
    ),
    (
        "from and to both hold",
        [ap([{**src(namespaces=["client-ns"]), **to(ports=["8080"])}])],
        conn(),
        True,
    ),
    (
        "from holds, to fails",
        [ap([{**src(namespaces=["client-ns"]), **to(ports=["9"])}])],
        conn(),
        False,
    ),
    # --- when conditions
    ("when source.ip", [ap([when("source.ip", ["10.0.1.0/24"])])], conn(), True),
    (
        "when source.ip notValues",
        [ap([when("source.ip", not_values=["10.0.1.0/24"])])],
        conn(),
        False,
    ),
    ("when destination.ip", [ap([when("destination.ip", ["10.0.0.2"])])], conn(), True),
    ("when destination.ip miss", [ap([when("destination.ip", ["10.0.0.3"])])], conn(), False),
    ("when destination.port", [ap([when("destination.port", ["8080"])])], conn(), True),
    (
        "when destination.port notValues",
        [ap([when("destination.port", not_values=["8080"])])],
        conn(),
        False,
    ),
    ("when source.namespace", [ap([when("source.namespace", ["client-*"])])], conn(), True),
    (
        "when source.principal",
        [ap([when("source.principal", ["spiffe://cluster.local/ns/other/sa/robot"])])],
        conn(OTHER_ID),
        True,
    ),
    ("when source.principal miss", [ap([when("source.principal", ["*/sa/robot"])])], conn(), False),
    (
        "from and when both hold",
        [ap([{**src(namespaces=["client-ns"]), **when("destination.port", ["1"])}])],
        conn(),
        False,
    ),
    # --- scopes
    (
        "root namespace policy is global",
        [ap([src(namespaces=["nobody"])], ns="istio-system")],
        conn(),
        False,
    ),
    (
        "other namespace policy ignored",
        [ap([src(namespaces=["nobody"])], ns="elsewhere")],
        conn(),
        True,
    ),
    (
        "selector matches",
        [ap([src(namespaces=["nobody"])], selector={"app": "server"})],
        conn(),
        False,
    ),
    (
        "selector does not match",
        [ap([src(namespaces=["nobody"])], selector={"app": "web"})],
        conn(),
        True,
    ),
    (
        "selector partial labels",
        [ap([src(namespaces=["nobody"])], selector={"app": "server", "tier": "front"})],
        conn(),
        True,
    ),
    (
        "root namespace selector applies everywhere",
        [ap([src(namespaces=["nobody"])], ns="istio-system", selector={"tier": "backend"})],
        conn(),
        False,
    ),
    (
        "global deny + local allow",
        [ap([{}], ns="istio-system", action="DENY"), ap([{}])],
        conn(),
        False,
    ),
    # --- dry run
    ("dry-run deny not enforced", [ap([{}], action="DENY", dry_run=True)], conn(), True),
    ("dry-run allow-nothing not enforced", [ap(dry_run=True)], conn(), True),
    (
        "dry-run allow does not count as ALLOW policy",
        [ap([src(namespaces=["x"])], dry_run=True)],
        conn(),
        True,
    ),
    # --- L7 at L4
    (
        "ALLOW rule with methods never matches",
        [ap([{**src(namespaces=["client-ns"]), **to(methods=["GET"])}])],
        conn(),
        False,
    ),
    (
        "ALLOW keeps other L4 rules",
        [ap([to(methods=["GET"]), src(namespaces=["client-ns"])])],
        conn(),
        True,
    ),
    (
        "ALLOW rule with requestPrincipals never matches",
        [ap([src(requestPrincipals=["*"])])],
        conn(),
        False,
    ),
    (
        "ALLOW rule with request.headers when never matches",
        [ap([when("request.headers[x]", ["y"])])],
        conn(),
        False,
    ),
    (
        "DENY with paths drops the path: denies all of port",
        [ap([to(paths=["/admin"], ports=["8080"])], action="DENY")],
        conn(),
        False,
    ),
    (
        "DENY with paths keeps the port",
        [ap([to(paths=["/admin"], ports=["9090"])], action="DENY")],
        conn(),
        True,
    ),
    # Istio ambient: the L7-only parts of a DENY become empty matches, which match nothing
    # (istiod authorization.go; ztunnel rbac.rs skips empty matches)
    (
        "DENY with only methods denies nothing",
        [ap([to(methods=["POST"])], action="DENY")],
        conn(),
        True,
    ),
    (
        "DENY with an L7 when denies nothing",
        [
            ap(
                [{**src(namespaces=["client-ns"]), **when("request.auth.claims[iss]", ["x"])}],
                action="DENY",
            )
        ],
        conn(),
        True,
    ),
    (
        "DENY with only requestPrincipals denies nothing",
        [ap([src(requestPrincipals=["*"])], action="DENY")],
        conn(),
        True,
    ),
    (
        "DENY with only remoteIpBlocks denies nothing",
        [ap([src(remoteIpBlocks=["10.0.0.0/8"])], action="DENY")],
        conn(),
        True,
    ),
    (
        "DENY source mixing L4 and L7 keeps its L4 part",
        [ap([src(namespaces=["client-ns"], requestPrincipals=["*"])], action="DENY")],
        conn(),
        False,
    ),
    (
        "DENY: an L7-only from entry does not hide an L4 one",
        [
            ap(
                [
                    {
                        "from": [
                            {"source": {"requestPrincipals": ["*"]}},
                            {"source": {"namespaces": ["client-ns"]}},
                        ]
                    }
                ],
                action="DENY",
            )
        ],
        conn(),
        False,
    ),
    (
        "DENY with an unknown when key denies nothing (counted as L7)",
        [ap([{**src(namespaces=["client-ns"]), **when("weird.key", ["x"])}], action="DENY")],
        conn(),
        True,
    ),
    (
        "ALLOW with an unknown when key never matches",
        [ap([when("weird.key", ["x"])])],
        conn(),
        False,
    ),
    (
        "ALLOW with remoteIpBlocks never matches",
        [ap([src(remoteIpBlocks=["10.0.0.0/8"])])],
        conn(),
        False,
    ),
    (
        "ALLOW connection.sni is L7 in ambient",
        [ap([when("connection.sni", ["x"])])],
        conn(),
        False,
    ),
    # a bare service account is in the policy's namespace (istiod)
    (
        "bare serviceAccounts means the policy namespace: other namespace",
        [ap([src(serviceAccounts=["client"])])],
        conn(),
        False,
    ),
    (
        "bare serviceAccounts means the policy namespace: same namespace",
        [ap([src(serviceAccounts=["client"])])],
        conn(SpiffeId("cluster.local", "app", "client")),
        True,
    ),
    (
        "targetRefs policy excluded",
        [ap([], extra_spec={"targetRefs": [{"kind": "Service", "group": "", "name": "s"}]})],
        conn(),
        True,
    ),
    (
        "CUSTOM excluded",
        [ap([{}], action="CUSTOM", extra_spec={"provider": {"name": "x"}})],
        conn(),
        True,
    ),
    # --- PeerAuthentication
    ("STRICT denies plaintext", [pa("STRICT")], conn(None), False),
    ("STRICT allows mTLS", [pa("STRICT")], conn(), True),
    ("PERMISSIVE allows plaintext", [pa("PERMISSIVE")], conn(None), True),
    ("DISABLE allows plaintext", [pa("DISABLE")], conn(None), True),
    ("mesh-wide STRICT", [pa("STRICT", ns="istio-system")], conn(None), False),
    (
        "namespace PERMISSIVE overrides mesh STRICT",
        [pa("STRICT", ns="istio-system"), pa("PERMISSIVE")],
        conn(None),
        True,
    ),
    (
        "port-level PERMISSIVE under STRICT",
        [
            pa(
                "STRICT",
                selector={"matchLabels": {"app": "server"}},
                portLevelMtls={8080: {"mode": "PERMISSIVE"}},
            )
        ],
        conn(None),
        True,
    ),
    (
        "port-level STRICT on this port",
        [
            pa(
                "PERMISSIVE",
                selector={"matchLabels": {"app": "server"}},
                portLevelMtls={"8080": {"mode": "STRICT"}},
            )
        ],
        conn(None),
        False,
    ),
    (
        "port-level STRICT other port",
        [
            pa(
                "PERMISSIVE",
                selector={"matchLabels": {"app": "server"}},
                portLevelMtls={9090: {"mode": "STRICT"}},
            )
        ],
        conn(None),
        True,
    ),
    (
        "conflicting namespace PeerAuthentications: the oldest wins",
        [
            pa("STRICT", name="a-new", created="2024-06-01T00:00:00Z"),
            pa("PERMISSIVE", name="z-old", created="2020-01-01T00:00:00Z"),
        ],
        conn(None),
        True,
    ),
    (
        "conflicting namespace PeerAuthentications: the oldest wins (STRICT)",
        [
            pa("STRICT", name="z-old", created="2020-01-01T00:00:00Z"),
            pa("PERMISSIVE", name="a-new", created="2024-06-01T00:00:00Z"),
        ],
        conn(None),
        False,
    ),
    ("STRICT then allow policy still applies", [pa("STRICT"), ALLOW_CLIENT], conn(OTHER_ID), False),
]


@pytest.mark.parametrize(
    ("policies", "connection", "allowed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_authorize_table(
    policies: list[dict[str, Any]], connection: Connection, allowed: bool
) -> None:
    decision = authorize(state(*policies), connection)
    assert decision.allowed is allowed, decision.reason


def test_decision_names_policy_and_reason() -> None:
    st = state(ALLOW_CLIENT, ap([src(namespaces=["other"])], name="deny-other", action="DENY"))
    d = authorize(st, conn())
    assert (d.allowed, d.policy) == (True, "app/p")
    d = authorize(st, conn(OTHER_ID))
    assert (d.allowed, d.policy) == (False, "app/deny-other")
    assert "DENY policy app/deny-other" in d.reason
    d = authorize(state(ALLOW_CLIENT), conn(OTHER_ID))
    assert d.policy is None
    assert "no ALLOW policy matched" in d.reason
    assert not d
    d = authorize(state(pa("STRICT")), conn(None))
    assert d.policy == "app/pa"
    assert "STRICT" in d.reason


def test_dry_run_results_reported() -> None:
    st = state(
        ap([src(namespaces=["client-ns"])], name="dry-deny", action="DENY", dry_run=True),
        ap([src(namespaces=["x"])], name="dry-allow", dry_run=True),
    )
    d = authorize(st, conn())
    assert d.allowed
    assert d.policy is None
    assert [(r.policy, r.action, r.matched) for r in d.dry_run_results] == [
        ("app/dry-allow", Action.ALLOW, False),
        ("app/dry-deny", Action.DENY, True),
    ]
    assert d.dry_run_allowed is False
    no_dry = authorize(state(ALLOW_CLIENT), conn())
    assert no_dry.dry_run_results == ()
    assert no_dry.dry_run_allowed is None


def test_typed_policy_attached_by_name() -> None:
    """xDS path: a WORKLOAD_SELECTOR policy without a selector, attached by the workload."""
    deny = Authorization(
        "d",
        "app",
        Scope.WORKLOAD_SELECTOR,
        Action.DENY,
        rules=(Rule((Clause((Match(destination_ports=(8080,)),)),)),),
    )
    plain = ProxyState.build([SERVER], policies=[deny])
    assert authorize(plain, conn()).allowed
    attached = replace(SERVER, authorization_policies=("app/d",))
    st = ProxyState.build([attached], policies=[deny])
    assert not authorize(st, conn(dst=attached)).allowed


def test_recheck_closes_newly_denied() -> None:
    before = state()
    open_conns = {1: conn(), 2: conn(OTHER_ID), 3: conn(None)}
    assert recheck(before, open_conns) == []
    after = state(ALLOW_CLIENT)
    assert recheck(after, open_conns) == [2, 3]


def test_recheck_uses_current_labels() -> None:
    policy = ap([src(namespaces=["nobody"])], selector={"tier": "frontend"})
    st = state(policy)
    open_conns = {"c": conn()}
    assert recheck(st, open_conns) == []
    relabelled = replace(SERVER, labels={"tier": "frontend"})
    st2 = st.with_changes(upsert_workloads=[relabelled])
    assert recheck(st2, open_conns) == ["c"]


# --- properties

_POLICY_POOL = [
    ap([src(namespaces=["client-ns"])], name="a"),
    ap([src(principals=["*/sa/robot"])], name="b", action="DENY"),
    ap([to(ports=["8080"])], name="c"),
    ap([src(ipBlocks=["10.0.1.0/24"])], name="d", action="DENY"),
    ap(name="e"),
    ap([{}], name="f"),
    ap([src(notNamespaces=["app"])], name="g", action="DENY", ns="istio-system"),
]
_CONNS = [conn(), conn(OTHER_ID), conn(None), conn(src_ip="10.9.9.9"), conn(dst_port=9090)]


@given(
    enforced=st.lists(st.sampled_from(range(len(_POLICY_POOL))), unique=True),
    shadow=st.lists(st.sampled_from(range(len(_POLICY_POOL))), unique=True),
)
def test_dry_run_never_changes_the_decision(enforced: list[int], shadow: list[int]) -> None:
    base = [_POLICY_POOL[i] for i in enforced]
    dry = [
        {
            **_POLICY_POOL[i],
            "metadata": {
                **_POLICY_POOL[i]["metadata"],
                "name": f"dry-{i}",
                "annotations": {"istio.io/dry-run": "true"},
            },
        }
        for i in shadow
    ]
    without, with_dry = state(*base), state(*base, *dry)
    for c in _CONNS:
        a, b = authorize(without, c), authorize(with_dry, c)
        assert (a.allowed, a.policy) == (b.allowed, b.policy)
        assert len(b.dry_run_results) == len(shadow)
        # the shadow outcome equals enforcing the dry-run policies for real
        if shadow:
            real = [{**d, "metadata": {**d["metadata"], "annotations": {}}} for d in dry]
            assert b.dry_run_allowed == authorize(state(*base, *real), c).allowed
