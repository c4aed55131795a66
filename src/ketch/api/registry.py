"""The kinds Ketch knows: apiVersions accepted (and the one written out), plural, singular
and short names as kubectl/istioctl spell them, scope, and model class.

`resolve_kind("po")`, `resolve_kind("AuthorizationPolicies")`, `resolve_kind("ap")` all
return the same `KindInfo`, case-insensitively, as `kubectl get <word>` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.api.autoscaling import HorizontalPodAutoscaler, PodDisruptionBudget
from ketch.api.base import Resource
from ketch.api.core import (
    ConfigMap,
    Deployment,
    Namespace,
    Node,
    Pod,
    ReplicaSet,
    Secret,
    Service,
    ServiceAccount,
)
from ketch.api.discovery import EndpointSlice
from ketch.api.errors import Problem, ResourceError
from ketch.api.gateway import Gateway, HTTPRoute
from ketch.api.security import AuthorizationPolicy, PeerAuthentication, RequestAuthentication


@dataclass(frozen=True)
class KindInfo:
    kind: str
    group: str  # "" for the core group
    versions: tuple[str, ...]  # accepted; the first is preferred and written out
    plural: str
    singular: str
    short_names: tuple[str, ...]
    namespaced: bool
    model: type[Resource]

    @property
    def api_versions(self) -> tuple[str, ...]:
        return tuple(f"{self.group}/{v}" if self.group else v for v in self.versions)

    @property
    def api_version(self) -> str:
        """The preferred apiVersion, used when Ketch writes this kind."""
        return self.api_versions[0]

    def accepts(self, api_version: str) -> bool:
        return api_version in self.api_versions

    def names(self) -> tuple[str, ...]:
        """Every word `resolve_kind` accepts for this kind (lowercase)."""
        return (self.kind.lower(), self.plural, self.singular, *self.short_names)


_ALL: tuple[KindInfo, ...] = (
    KindInfo("Namespace", "", ("v1",), "namespaces", "namespace", ("ns",), False, Namespace),
    KindInfo("Node", "", ("v1",), "nodes", "node", ("no",), False, Node),
    KindInfo(
        "ServiceAccount",
        "",
        ("v1",),
        "serviceaccounts",
        "serviceaccount",
        ("sa",),
        True,
        ServiceAccount,
    ),
    KindInfo("Pod", "", ("v1",), "pods", "pod", ("po",), True, Pod),
    KindInfo(
        "Deployment", "apps", ("v1",), "deployments", "deployment", ("deploy",), True, Deployment
    ),
    KindInfo("ReplicaSet", "apps", ("v1",), "replicasets", "replicaset", ("rs",), True, ReplicaSet),
    KindInfo("Service", "", ("v1",), "services", "service", ("svc",), True, Service),
    KindInfo(
        "EndpointSlice",
        "discovery.k8s.io",
        ("v1",),
        "endpointslices",
        "endpointslice",
        (),
        True,
        EndpointSlice,
    ),
    KindInfo(
        "AuthorizationPolicy",
        "security.istio.io",
        ("v1", "v1beta1"),
        "authorizationpolicies",
        "authorizationpolicy",
        ("ap",),
        True,
        AuthorizationPolicy,
    ),
    KindInfo(
        "PeerAuthentication",
        "security.istio.io",
        ("v1", "v1beta1"),
        "peerauthentications",
        "peerauthentication",
        ("pa",),
        True,
        PeerAuthentication,
    ),
    KindInfo(
        "RequestAuthentication",
        "security.istio.io",
        ("v1", "v1beta1"),
        "requestauthentications",
        "requestauthentication",
        ("ra",),
        True,
        RequestAuthentication,
    ),
    KindInfo(
        "Gateway",
        "gateway.networking.k8s.io",
        ("v1", "v1beta1"),
        "gateways",
        "gateway",
        ("gtw",),
        True,
        Gateway,
    ),
    KindInfo(
        "HTTPRoute",
        "gateway.networking.k8s.io",
        ("v1", "v1beta1"),
        "httproutes",
        "httproute",
        (),
        True,
        HTTPRoute,
    ),
)

_ALL = (
    *_ALL,
    KindInfo(
        "HorizontalPodAutoscaler",
        "autoscaling",
        ("v2",),
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        ("hpa",),
        True,
        HorizontalPodAutoscaler,
    ),
    KindInfo("ConfigMap", "", ("v1",), "configmaps", "configmap", ("cm",), True, ConfigMap),
    KindInfo("Secret", "", ("v1",), "secrets", "secret", (), True, Secret),
    KindInfo(
        "PodDisruptionBudget",
        "policy",
        ("v1",),
        "poddisruptionbudgets",
        "poddisruptionbudget",
        ("pdb",),
        True,
        PodDisruptionBudget,
    ),
)

# Kinds users paste from Istio setups that Ketch refuses, each with what to use instead.
# Keyed by (group, kind); `ketch.api.loader` reports the message for `kind:` of that group.
FOREIGN_KINDS: dict[tuple[str, str], str] = {
    ("networking.istio.io", "VirtualService"): (
        "Ketch does not implement Istio's VirtualService: route with a Gateway API HTTPRoute "
        "(parentRefs: the Service, as in Istio ambient) and a waypoint; see docs/resources.md"
    ),
    ("networking.istio.io", "DestinationRule"): (
        "Ketch does not implement Istio's DestinationRule: mesh traffic is always mutual TLS "
        "(HBONE), load balancing is round robin, and subsets become one Service per version "
        "used as HTTPRoute backendRefs with weights; remove it from the file"
    ),
    ("networking.istio.io", "ServiceEntry"): (
        "Ketch does not implement Istio's ServiceEntry: there is no egress or external-service "
        "registry; a Service without a selector plus an EndpointSlice names endpoints outside "
        "the mesh"
    ),
    ("networking.istio.io", "Sidecar"): (
        "Sidecar does not apply in ambient mode (there are no sidecars; Istio ignores it for "
        "ambient workloads too); remove it from the file"
    ),
    ("networking.istio.io", "Gateway"): (
        "Ketch does not implement Istio's networking.istio.io Gateway: use a Gateway API "
        "Gateway (apiVersion gateway.networking.k8s.io/v1) with HTTPRoutes"
    ),
    ("networking.istio.io", "EnvoyFilter"): (
        "Ketch does not implement EnvoyFilter (it would patch Envoy configuration Ketch "
        "generates); remove it from the file"
    ),
    ("networking.istio.io", "WorkloadEntry"): (
        "Ketch does not implement WorkloadEntry: a Service without a selector plus an "
        "EndpointSlice names endpoints outside the mesh"
    ),
    ("telemetry.istio.io", "Telemetry"): (
        "Ketch does not implement Istio's Telemetry API: the node proxy always exports "
        "Istio's standard metrics on :15020"
    ),
}


def foreign_kind_message(api_version: object, kind: str) -> str | None:
    """The message for a kind Ketch refuses on purpose (e.g. VirtualService), else None."""
    group = api_version.partition("/")[0] if isinstance(api_version, str) else ""
    message = FOREIGN_KINDS.get((group, kind))
    if message is None and not isinstance(api_version, str):
        candidates = [m for (_, k), m in FOREIGN_KINDS.items() if k == kind and k != "Gateway"]
        message = candidates[0] if candidates else None
    return message


KINDS: dict[str, KindInfo] = {info.kind: info for info in _ALL}
"""Every supported kind, keyed by its `kind` (e.g. "Pod")."""

_BY_WORD: dict[str, KindInfo] = {}
for _info in _ALL:
    for _word in _info.names():
        _BY_WORD[_word] = _info
    # kubectl also accepts "kind.group", e.g. "gateways.gateway.networking.k8s.io"
    if _info.group:
        _BY_WORD[f"{_info.plural}.{_info.group}"] = _info
        _BY_WORD[f"{_info.kind.lower()}.{_info.group}"] = _info


def known_kinds_text() -> str:
    return ", ".join(f"{i.kind} ({', '.join((i.plural, *i.short_names))})" for i in _ALL)


def lookup_kind(word: str) -> KindInfo | None:
    return _BY_WORD.get(word.strip().lower())


def resolve_kind(word: str) -> KindInfo:
    """The kind named by a user's word: kind, plural, singular or short name, any case.
    Raises ResourceError naming the known kinds."""
    info = lookup_kind(word)
    if info is None:
        raise ResourceError(
            [
                Problem(
                    "",
                    0,
                    "",
                    f"unknown resource type {word!r}; known: {known_kinds_text()}",
                )
            ]
        )
    return info


def kind_for_manifest(kind: str) -> KindInfo | None:
    """Exact `kind:` as written in a manifest (case-sensitive, as the API server)."""
    return KINDS.get(kind)
