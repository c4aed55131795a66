from __future__ import annotations

import pytest

from ketch.api import KINDS, AuthorizationPolicy, Pod, ResourceError, resolve_kind


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("pod", "Pod"),
        ("Pods", "Pod"),
        ("po", "Pod"),
        ("ns", "Namespace"),
        ("svc", "Service"),
        ("sa", "ServiceAccount"),
        ("deploy", "Deployment"),
        ("no", "Node"),
        ("ap", "AuthorizationPolicy"),
        ("AuthorizationPolicies", "AuthorizationPolicy"),
        ("pa", "PeerAuthentication"),
        ("ra", "RequestAuthentication"),
        ("gtw", "Gateway"),
        ("gateways.gateway.networking.k8s.io", "Gateway"),
        ("httproute", "HTTPRoute"),
        ("HTTPRoutes", "HTTPRoute"),
    ],
)
def test_resolve_kind(word: str, kind: str) -> None:
    assert resolve_kind(word).kind == kind


def test_unknown_word_lists_known_kinds() -> None:
    with pytest.raises(ResourceError) as info:
        resolve_kind("virtualservice")
    message = str(info.value)
    assert message.startswith(
        "unknown resource type 'virtualservice'; known: Namespace (namespaces, ns), "
    )
    assert "AuthorizationPolicy (authorizationpolicies, ap)" in message


def test_kind_info() -> None:
    ap = KINDS["AuthorizationPolicy"]
    assert ap.api_version == "security.istio.io/v1"
    assert ap.accepts("security.istio.io/v1beta1")
    assert not ap.accepts("v1")
    assert ap.model is AuthorizationPolicy
    assert ap.namespaced
    assert KINDS["Pod"].model is Pod
    assert KINDS["Pod"].api_versions == ("v1",)
    assert KINDS["Deployment"].api_version == "apps/v1"
    assert not KINDS["Namespace"].namespaced
    assert not KINDS["Node"].namespaced
    # each model's default apiVersion is the preferred one
    for info in KINDS.values():
        assert info.model.model_fields["api_version"].default == info.api_version
        assert info.model.model_fields["kind"].default == info.kind


def test_words_are_unambiguous() -> None:
    seen: dict[str, str] = {}
    for info in KINDS.values():
        for word in info.names():
            assert seen.setdefault(word, info.kind) == info.kind
