"""Istio policies -> the mesh model, and the warnings `ketch apply` prints about them.

The decision tables (which connections a translated policy allows) are in
tests/unit/ztunnel/test_rbac.py; this file checks the translation's structure, its
warnings and its errors.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ketch.api import from_manifest
from ketch.api.security import AuthorizationPolicy, PeerAuthentication
from ketch.control.translate.policy import (
    PolicyError,
    policy_warnings,
    translate_authorization_policy,
    translate_policies,
)
from ketch.mesh import Action, Match, MtlsMode, Scope, ServiceAccountMatch


def ap_doc(spec: str, *, ns: str = "app", annotations: str = "") -> dict[str, Any]:
    meta = f"{{name: p, namespace: {ns}{', annotations: ' + annotations if annotations else ''}}}"
    doc = yaml.safe_load(
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {meta}\n"
        f"spec: {spec}\n"
    )
    assert isinstance(doc, dict)
    return doc


def warnings(spec: str) -> list[tuple[str, str]]:
    return policy_warnings(from_manifest(ap_doc(spec)))


def translate(spec: str, **kw: Any) -> Any:
    resource = from_manifest(ap_doc(spec, **kw))
    assert isinstance(resource, AuthorizationPolicy)
    return translate_authorization_policy(resource)


# --- warnings (what `ketch apply` says)


def test_l7_allow_rule_never_matches_at_l4() -> None:
    assert warnings(
        "{rules: [{to: [{operation: {ports: ['80']}}]}, {to: [{operation: {methods: [GET], paths: [/x]}}]}]}"
    ) == [
        (
            "spec.rules[1]",
            "L7 fields (methods, paths) are enforced only by a waypoint: at L4 this ALLOW rule "
            "never matches",
        )
    ]


def test_l7_only_deny_rule_denies_nothing() -> None:
    assert warnings(
        "{action: DENY, rules: [{from: [{source: {requestPrincipals: ['*']}}], "
        "when: [{key: 'request.headers[x]', values: [a]}, {key: source.ip, values: [10.0.0.1]}]}]}"
    ) == [
        (
            "spec.rules[0]",
            "L7 fields (requestPrincipals, when request.headers[x]) are enforced only by a "
            "waypoint: at L4 this DENY rule can never match, so it denies nothing (as in Istio "
            "ambient); attach the policy to a waypoint with targetRefs to enforce it",
        )
    ]


def test_mixed_deny_rule_matches_more_broadly() -> None:
    assert warnings(
        "{action: DENY, rules: [{to: [{operation: {ports: ['8080'], paths: [/admin]}}]}]}"
    ) == [
        (
            "spec.rules[0]",
            "L7 fields (paths) are enforced only by a waypoint: at L4 the HTTP parts are "
            "ignored and the rest of this DENY rule applies, which denies more broadly",
        )
    ]


def test_unknown_condition_key_is_l7_with_a_warning() -> None:
    found = warnings("{rules: [{when: [{key: source.port, values: ['1']}]}]}")
    assert found[0] == (
        "spec.rules[0].when[0].key",
        "unknown condition key 'source.port': counted as an L7 attribute, which the node proxy "
        "cannot evaluate (L4 keys: destination.ip, destination.port, source.ip, "
        "source.namespace, source.principal)",
    )
    assert found[1][1].endswith("at L4 this ALLOW rule never matches")


def test_remote_ip_and_sni_are_l7_in_ambient() -> None:
    [(_, msg)] = warnings(
        "{rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/8]}}], "
        "when: [{key: connection.sni, values: [x]}, {key: remote.ip, values: [10.0.0.1]}]}]}"
    )
    assert "L7 fields (remoteIpBlocks, when connection.sni, when remote.ip)" in msg


def test_spiffe_prefixed_principal_is_warned_about() -> None:
    [(path, msg)] = warnings("{rules: [{from: [{source: {principals: [spiffe://td/ns/a/sa/b]}}]}]}")
    assert path == "spec.rules[0].from[0].source"
    assert "without 'spiffe://'" in msg


@pytest.mark.parametrize(
    "spec",
    [
        "{rules: [{from: [{source: {principals: [a]}}], to: [{operation: {ports: ['80']}}], "
        "when: [{key: destination.port, values: ['80']}, {key: source.namespace, values: [x]}]}]}",
        "{targetRefs: [{kind: Service, group: '', name: s}], rules: [{to: [{operation: {methods: [GET]}}]}]}",
        "{}",
    ],
)
def test_no_warning_for_l4_or_waypoint_policies(spec: str) -> None:
    assert warnings(spec) == []


def test_custom_without_target_refs() -> None:
    assert warnings("{action: CUSTOM, provider: {name: x}}") == [
        (
            "spec.action",
            "action CUSTOM is enforced only by a waypoint: the node proxy ignores this policy "
            "(use targetRefs to attach it to a waypoint)",
        )
    ]


def test_peer_authentication_disable_warning() -> None:
    doc = yaml.safe_load(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
        "spec: {mtls: {mode: DISABLE}}\n"
    )
    [(path, msg)] = policy_warnings(from_manifest(doc))
    assert path == "spec.mtls.mode"
    assert msg.startswith("DISABLE does not turn off mTLS")


# --- translation structure


def test_rule_structure_and_scope() -> None:
    p = translate(
        "{rules: [{from: [{source: {principals: [spiffe://td/ns/a/sa/b]}}, "
        "{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ['80']}}], "
        "when: [{key: source.namespace, values: [a]}]}]}",
        ns="istio-system",
    )
    assert (p.scope, p.action) == (Scope.GLOBAL, Action.ALLOW)
    (rule,) = p.rules
    assert len(rule.clauses) == 3  # from, to, one per condition: ANDed
    assert len(rule.clauses[0].matches) == 2  # one match per `from` entry, ORed
    assert str(rule.clauses[0].matches[0].principals[0]) == "td/ns/a/sa/b"
    assert rule.clauses[1].matches[0].destination_ports == (80,)


@pytest.mark.parametrize(
    ("spec", "scope"),
    [
        ("{selector: {matchLabels: {app: x}}, rules: [{}]}", Scope.WORKLOAD_SELECTOR),
        ("{rules: [{}]}", Scope.NAMESPACE),
    ],
)
def test_scope(spec: str, scope: Scope) -> None:
    assert translate(spec).scope is scope


def test_deny_l7_parts_become_empty_matches() -> None:
    p = translate(
        "{action: DENY, rules: [{to: [{operation: {methods: [GET]}}], "
        "when: [{key: request.auth.principal, values: [x]}]}]}"
    )
    (rule,) = p.rules
    assert [c.matches for c in rule.clauses] == [(Match(),), (Match(),)]


def test_allow_rule_with_l7_is_dropped() -> None:
    p = translate("{rules: [{to: [{operation: {methods: [GET]}}]}, {}]}")
    assert len(p.rules) == 1
    assert p.rules[0].clauses == ()


def test_bare_service_account_takes_the_policy_namespace() -> None:
    p = translate("{rules: [{from: [{source: {serviceAccounts: [client, other/robot]}}]}]}")
    assert p.rules[0].clauses[0].matches[0].service_accounts == (
        ServiceAccountMatch("app", "client"),
        ServiceAccountMatch("other", "robot"),
    )


@pytest.mark.parametrize(
    ("value", "dry"),
    [
        ("'true'", True),
        ("'True'", True),
        ("'1'", True),
        ("'t'", True),
        ("'false'", False),
        ("'0'", False),
        ("'yes'", False),
    ],
)
def test_dry_run_annotation_is_parsed_as_go_parsebool(value: str, dry: bool) -> None:
    assert translate("{rules: [{}]}", annotations=f"{{istio.io/dry-run: {value}}}").dry_run is dry


def test_waypoint_audit_custom_are_excluded() -> None:
    conv = translate_policies(
        [
            ap_doc("{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: w}]}"),
            {
                **ap_doc("{action: AUDIT, rules: [{}]}"),
                "metadata": {"name": "a", "namespace": "app"},
            },
        ]
    )
    assert conv.authorizations == ()
    assert conv.excluded == ("AuthorizationPolicy app/p", "AuthorizationPolicy app/a")


def test_peer_authentication_translation_keeps_age() -> None:
    pa = from_manifest(
        yaml.safe_load(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: p, namespace: app, creationTimestamp: '2021-02-03T04:05:06Z'}\n"
            "spec: {selector: {matchLabels: {app: x}}, mtls: {mode: STRICT}, "
            "portLevelMtls: {9090: {mode: DISABLE}}}\n"
        )
    )
    assert isinstance(pa, PeerAuthentication)
    (peer,) = translate_policies([pa]).peer_authentications
    assert peer.mode is MtlsMode.STRICT
    assert dict(peer.port_modes) == {9090: MtlsMode.DISABLE}
    assert peer.created is not None
    assert peer.created.year == 2021


# --- errors: the same wording as `ketch apply`, prefixed with the file and list position


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            ap_doc("{rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}]}]}"),
            "mesh.yaml: policies[0].spec.rules[0].from[0].source.ipBlocks[0]: expected an IP "
            "address or CIDR (e.g. 10.0.0.1 or 10.0.0.0/16), got '10.0.0.300'",
        ),
        (
            ap_doc("{rules: [{to: [{operation: {ports: [8080]}}]}]}"),
            "mesh.yaml: policies[0].spec.rules[0].to[0].operation.ports[0]: expected a port "
            'number as a string (quote it: "8080")',
        ),
        (ap_doc("{action: MAYBE}"), "mesh.yaml: policies[0].spec.action: expected 'ALLOW'"),
        (
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}},
            "mesh.yaml: policies[0]",
        ),
    ],
)
def test_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        translate_policies([doc], source="mesh.yaml")
    assert exc.value.problems[0].startswith(message), exc.value.problems


def test_all_errors_and_duplicates_reported() -> None:
    with pytest.raises(PolicyError) as exc:
        translate_policies(
            [
                ap_doc("{rules: [{to: [{operation: {ports: [x]}}]}]}"),
                ap_doc("{rules: [{from: [{source: {ipBlocks: [nope]}}]}]}"),
            ]
        )
    assert len(exc.value.problems) == 2
    with pytest.raises(PolicyError, match="defined twice"):
        translate_policies([ap_doc("{}"), ap_doc("{}")])
