"""Warnings about Istio ambient semantics."""

from __future__ import annotations

import pytest
import yaml

from ketch.api import from_manifest, warnings_for


def ap(spec: str) -> list[tuple[str, str]]:
    manifest = yaml.safe_load(
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
    )
    return warnings_for(from_manifest(manifest))


def test_l7_allow_rule_never_matches_at_l4() -> None:
    assert ap(
        "{rules: [{to: [{operation: {ports: ['80']}}]}, {to: [{operation: {methods: [GET], paths: [/x]}}]}]}"
    ) == [
        (
            "spec.rules[1]",
            "L7 fields (methods, paths) are enforced only by a waypoint: at L4 this ALLOW rule "
            "never matches",
        )
    ]


def test_l7_deny_rule_matches_more_broadly() -> None:
    assert ap(
        "{action: DENY, rules: [{from: [{source: {requestPrincipals: ['*']}}], "
        "when: [{key: 'request.headers[x]', values: [a]}, {key: source.ip, values: [10.0.0.1]}]}]}"
    ) == [
        (
            "spec.rules[0]",
            "L7 fields (requestPrincipals, when request.headers[x]) are enforced only by a "
            "waypoint: at L4 this DENY rule is kept without its HTTP parts and matches more "
            "broadly",
        )
    ]


@pytest.mark.parametrize(
    "spec",
    [
        "{rules: [{from: [{source: {principals: [a]}}], to: [{operation: {ports: ['80']}}], "
        "when: [{key: destination.port, values: ['80']}, {key: connection.sni, values: [x]}]}]}",
        "{targetRefs: [{kind: Service, group: '', name: s}], rules: [{to: [{operation: {methods: [GET]}}]}]}",
        "{}",
    ],
)
def test_no_warning_for_l4_or_waypoint_policies(spec: str) -> None:
    assert ap(spec) == []


def test_custom_without_target_refs() -> None:
    assert ap("{action: CUSTOM, provider: {name: x}}") == [
        (
            "spec.action",
            "action CUSTOM is enforced only by a waypoint: the node proxy ignores this policy "
            "(use targetRefs to attach it to a waypoint)",
        )
    ]


def test_request_authentication_with_selector() -> None:
    manifest = yaml.safe_load(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\n"
        "spec: {selector: {matchLabels: {app: a}}, jwtRules: [{issuer: x}]}\n"
    )
    [(path, message)] = warnings_for(from_manifest(manifest))
    assert path == "spec"
    assert message.startswith("RequestAuthentication is enforced only by a waypoint")


def test_deployment_image_is_ignored() -> None:
    manifest = yaml.safe_load(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, "
        "spec: {containers: [{name: c, command: [x]}, {name: e, image: i, command: [y]}]}}}\n"
    )
    assert warnings_for(from_manifest(manifest)) == [
        (
            "spec.template.spec.containers[1].image",
            "image 'i' is ignored: Ketch runs `command`/`args` as a process in the pod's network "
            "namespace and cannot pull images",
        )
    ]
