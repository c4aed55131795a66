"""Warnings: objects that are valid but will not do what their author probably expects in
Ketch (features Ketch ignores, L7-only objects without a waypoint). Pure functions of one
resource. Policy warnings (which AuthorizationPolicy fields the node proxy cannot enforce)
come from the policy translation itself, `ketch.control.translate.policy.policy_warnings`.
"""

from __future__ import annotations

from ketch.api.base import Resource
from ketch.api.core import NO_IMAGES, Deployment, Pod, PodSpec
from ketch.api.security import RequestAuthentication

Warning_ = tuple[str, str]  # (field path, message)


def warnings_for(resource: Resource) -> list[Warning_]:
    """(path, message) pairs for one valid resource; paths use the YAML field names."""
    if isinstance(resource, Pod):
        return _pod_spec(resource.spec, "spec")
    if isinstance(resource, Deployment):
        return _pod_spec(resource.spec.template.spec, "spec.template.spec")
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
