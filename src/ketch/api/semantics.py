"""Warnings: objects that are valid but will not do what their author probably expects in
Ketch (Istio ambient semantics, features Ketch ignores). Pure functions of one resource.
"""

from __future__ import annotations

from ketch.api.base import Resource
from ketch.api.core import NO_IMAGES, Deployment, Pod, PodSpec
from ketch.api.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Rule,
    is_l4_condition_key,
)

Warning_ = tuple[str, str]  # (field path, message)


def warnings_for(resource: Resource) -> list[Warning_]:
    """(path, message) pairs for one valid resource; paths use the YAML field names."""
    if isinstance(resource, Pod):
        return _pod_spec(resource.spec, "spec")
    if isinstance(resource, Deployment):
        return _pod_spec(resource.spec.template.spec, "spec.template.spec")
    if isinstance(resource, AuthorizationPolicy):
        return _authorization_policy(resource)
    if isinstance(resource, RequestAuthentication):
        ra = resource.spec
        if not ra.target_refs and ra.target_ref is None and ra.jwt_rules:
            return [
                (
                    "spec",
                    "RequestAuthentication is enforced only by a waypoint: without targetRefs "
                    "it has no effect in ambient mode (use targetRefs to a Service or Gateway)",
                )
            ]
    if isinstance(resource, PeerAuthentication):
        pa = resource.spec
        if pa.mtls is not None and pa.mtls.mode == "DISABLE":
            return [
                (
                    "spec.mtls.mode",
                    "DISABLE does not turn off mTLS between mesh workloads in ambient mode; it "
                    "only lets non-mesh clients connect in plaintext, like PERMISSIVE",
                )
            ]
    return []


def _pod_spec(spec: PodSpec, path: str) -> list[Warning_]:
    out: list[Warning_] = []
    for i, container in enumerate(spec.containers):
        if container.image and container.command:
            out.append(
                (
                    f"{path}.containers[{i}].image",
                    f"image {container.image!r} is ignored: {NO_IMAGES}",
                )
            )
    return out


# Operation fields that need HTTP (all of Operation except ports/notPorts).
_L7_OPERATION = {
    "hosts": "hosts",
    "not_hosts": "notHosts",
    "methods": "methods",
    "not_methods": "notMethods",
    "paths": "paths",
    "not_paths": "notPaths",
}
_L7_SOURCE = {
    "request_principals": "requestPrincipals",
    "not_request_principals": "notRequestPrincipals",
}


def l7_fields(rule: Rule) -> list[str]:
    """The HTTP-only fields a rule uses (YAML names), in first-seen order."""
    found: list[str] = []

    def add(name: str) -> None:
        if name not in found:
            found.append(name)

    for rf in rule.from_ or []:
        for attr, alias in _L7_SOURCE.items():
            if getattr(rf.source, attr):
                add(alias)
    for rt in rule.to or []:
        for attr, alias in _L7_OPERATION.items():
            if getattr(rt.operation, attr):
                add(alias)
    for cond in rule.when or []:
        if not is_l4_condition_key(cond.key):
            add(f"when {cond.key}")
    return found


def _authorization_policy(policy: AuthorizationPolicy) -> list[Warning_]:
    spec = policy.spec
    if spec.target_refs or spec.target_ref is not None:
        return []  # attached to a waypoint, which enforces L7
    out: list[Warning_] = []
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
        fields = l7_fields(rule)
        if not fields:
            continue
        listed = ", ".join(fields)
        if spec.action == "ALLOW":
            consequence = "at L4 this ALLOW rule never matches"
        else:
            consequence = (
                "at L4 this DENY rule is kept without its HTTP parts and matches more broadly"
            )
        out.append(
            (
                f"spec.rules[{i}]",
                f"L7 fields ({listed}) are enforced only by a waypoint: {consequence}",
            )
        )
    return out
