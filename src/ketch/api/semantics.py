"""Warnings: objects that are valid but will not do what their author probably expects in
Ketch (features Ketch ignores, L7-only objects without a waypoint). Pure functions of one
resource. Policy warnings (which AuthorizationPolicy fields the node proxy cannot enforce)
come from the policy translation itself, `ketch.control.translate.policy.policy_warnings`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ketch.api import wellknown
from ketch.api.autoscaling import HorizontalPodAutoscaler, PodDisruptionBudget
from ketch.api.base import Resource
from ketch.api.core import (
    NO_IMAGES,
    ConfigMap,
    Deployment,
    Pod,
    PodSpec,
    ReplicaSet,
    Secret,
    Service,
)
from ketch.api.security import RequestAuthentication

Warning_ = tuple[str, str]  # (field path, message)


def warnings_for(resource: Resource) -> list[Warning_]:
    """(path, message) pairs for one valid resource; paths use the YAML field names."""
    out: list[Warning_] = []
    labelled = [("metadata.labels", resource.labels)]
    if isinstance(resource, Deployment | ReplicaSet) and resource.spec.template.metadata:
        labelled.append(
            ("spec.template.metadata.labels", resource.spec.template.metadata.labels or {})
        )
    for at, labels in labelled:
        mode = labels.get(wellknown.DATAPLANE_MODE)
        if mode is not None and mode not in wellknown.DATAPLANE_MODES:
            out.append(
                (
                    f'{at}["{wellknown.DATAPLANE_MODE}"]',
                    f"{wellknown.DATAPLANE_MODE}: {mode!r} is stored but means nothing to "
                    "Ketch: the values are 'ambient' (join the mesh) and 'none' (opt out)",
                )
            )
    return out + _semantic(resource)


def duplicate_ports(spec: PodSpec, path: str) -> list[Warning_]:
    """Two `ports` entries of a pod's containers with the same containerPort and protocol.
    Kubernetes accepts them (rejecting would break existing manifests) and warns; the
    containers share one network namespace, so the second to bind that port fails."""
    seen: dict[tuple[int, str], str] = {}
    out: list[Warning_] = []
    for i, c in enumerate(spec.containers):
        for j, p in enumerate(c.ports or []):
            at = f"{path}.containers[{i}].ports[{j}]"
            key = (p.container_port, p.protocol)
            first = seen.setdefault(key, at)
            if first != at:
                out.append(
                    (
                        at,
                        f"duplicate port definition with {first} (containerPort "
                        f"{p.container_port}/{p.protocol}): the containers of a pod share "
                        "one network namespace, so only one of them can listen on it",
                    )
                )
    return out


def _semantic(resource: Resource) -> list[Warning_]:
    if isinstance(resource, Pod):
        return duplicate_ports(resource.spec, "spec")
    if isinstance(resource, Deployment | ReplicaSet):
        return duplicate_ports(resource.spec.template.spec, "spec.template.spec")
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


# --- fields stored but not honoured --------------------------------------------------------

RUNTIME = "Ketch's local runtime"

UNENFORCED: dict[str, str] = {
    # feature key -> the sentence `ketch apply` prints once per apply, with a count.
    "image": f"image and imagePullPolicy are ignored: {NO_IMAGES}",
    "resources": f"resources (cpu/memory requests and limits) are stored but not enforced by "
    f"{RUNTIME}",
    "securityContext": f"securityContext (users, groups, capabilities, seccomp, read-only root "
    f"filesystem) is stored but not applied by {RUNTIME}",
    "volumes": f"volumes and volumeMounts are stored but not mounted by {RUNTIME}",
    "startupProbe": f"startupProbe is stored but not run by {RUNTIME} (readinessProbe and "
    "livenessProbe are)",
    "lifecycle": f"lifecycle hooks (postStart, preStop) are stored but not run by {RUNTIME}",
    "initContainers": f"initContainers are stored but not run by {RUNTIME}",
    "envFrom": f"env valueFrom and envFrom are stored but not resolved by {RUNTIME} (those "
    "variables are not set)",
    "scheduling": "scheduling constraints (tolerations, affinity, topologySpreadConstraints, "
    "priority) are stored but not used: Ketch places pods by nodeName and nodeSelector only",
    "dns": f"dnsPolicy, dnsConfig, subdomain, setHostnameAsFQDN and hostAliases are stored but "
    f"not applied by {RUNTIME} (hostname is: it is the pod's hostname)",
    "hostNamespaces": f"hostPID, hostIPC and shareProcessNamespace are stored but not applied by "
    f"{RUNTIME}",
    "sessionAffinity": "Service sessionAffinity: ClientIP is stored but not applied: the node "
    "proxy balances each connection over all ready endpoints",
    "internalTrafficPolicy": "Service internalTrafficPolicy: Local is stored but not applied: "
    "the node proxy may pick endpoints on any node",
    "ipFamilies": "Service IPv6 and dual-stack settings (ipFamilies, ipFamilyPolicy) are stored "
    "but Ketch allocates IPv4 ClusterIPs only",
    "hpa": "HorizontalPodAutoscaler is stored but nothing acts on it: Ketch has no metrics "
    "pipeline or autoscaler; set the Deployment's replicas (ketch scale) instead",
    "pdb": "PodDisruptionBudget is stored but nothing acts on it: Ketch never evicts pods",
    "configData": f"ConfigMaps and Secrets are stored (Secrets unencrypted, in the config "
    f"store) but not mounted or injected by {RUNTIME}",
}


@dataclass(frozen=True)
class Unenforced:
    """One kind of field an object uses that Ketch stores but does not honour."""

    feature: str  # key of UNENFORCED
    path: str  # first place in the object it was seen (YAML names)

    @property
    def message(self) -> str:
        return UNENFORCED[self.feature]


def unenforced(resource: Resource) -> list[Unenforced]:
    """The kinds of fields in `resource` that Ketch keeps but does not act on, one entry per
    kind (the first path where it occurs), in UNENFORCED order."""
    found: dict[str, str] = {}
    if isinstance(resource, Pod):
        _pod_fields(resource.spec, "spec", found)
    elif isinstance(resource, Deployment | ReplicaSet):
        _pod_fields(resource.spec.template.spec, "spec.template.spec", found)
    elif isinstance(resource, Service):
        spec = resource.spec
        if spec.session_affinity == "ClientIP":
            found.setdefault("sessionAffinity", "spec.sessionAffinity")
        if spec.internal_traffic_policy == "Local":
            found.setdefault("internalTrafficPolicy", "spec.internalTrafficPolicy")
        if "IPv6" in (spec.ip_families or []) or spec.ip_family_policy in (
            "PreferDualStack",
            "RequireDualStack",
        ):
            found.setdefault("ipFamilies", "spec.ipFamilies")
    elif isinstance(resource, HorizontalPodAutoscaler):
        found["hpa"] = "spec"
    elif isinstance(resource, PodDisruptionBudget):
        found["pdb"] = "spec"
    elif isinstance(resource, ConfigMap | Secret):
        found["configData"] = "data"
    return [Unenforced(f, found[f]) for f in UNENFORCED if f in found]


def _pod_fields(spec: PodSpec, path: str, found: dict[str, str]) -> None:
    def note(feature: str, at: str) -> None:
        found.setdefault(feature, f"{path}.{at}")

    if spec.image_pull_secrets:
        note("image", "imagePullSecrets")
    for group, containers in (
        ("containers", spec.containers),
        ("initContainers", spec.init_containers or []),
    ):
        for i, c in enumerate(containers):
            at = f"{group}[{i}]"
            if c.image is not None:
                note("image", f"{at}.image")
            if c.image_pull_policy is not None:
                note("image", f"{at}.imagePullPolicy")
            if c.resources is not None and c.resources.model_fields_set:
                note("resources", f"{at}.resources")
            if c.security_context is not None:
                note("securityContext", f"{at}.securityContext")
            if c.volume_mounts:
                note("volumes", f"{at}.volumeMounts")
            if c.startup_probe is not None:
                note("startupProbe", f"{at}.startupProbe")
            if c.lifecycle:
                note("lifecycle", f"{at}.lifecycle")
            if c.env_from or any(e.value_from is not None for e in c.env or []):
                note("envFrom", f"{at}.env")
    if spec.init_containers:
        note("initContainers", "initContainers")
    if spec.security_context is not None:
        note("securityContext", "securityContext")
    if spec.volumes:
        note("volumes", "volumes")
    for name in ("tolerations", "affinity", "topology_spread_constraints", "priority_class_name"):
        if getattr(spec, name):
            note("scheduling", _alias(spec, name))
    if spec.dns_policy not in (None, "ClusterFirst") or spec.dns_config or spec.host_aliases:
        note("dns", "dnsPolicy" if spec.dns_policy else "dnsConfig")
    if spec.subdomain or spec.set_hostname_as_fqdn:
        note("dns", "subdomain" if spec.subdomain else "setHostnameAsFQDN")
    if spec.host_pid or spec.host_ipc or spec.share_process_namespace:
        note("hostNamespaces", "hostPID")


def _alias(model: PodSpec, name: str) -> str:
    return type(model).model_fields[name].alias or name


def summarize_unenforced(found: Iterable[tuple[str, Unenforced]]) -> list[str]:
    """One line per kind of field: `<message> (in N objects: a, b, c)`, given (object name,
    Unenforced) pairs; objects are named as the caller likes (e.g. `deployment/web`)."""
    by_feature: dict[str, list[str]] = {}
    for obj, item in found:
        names = by_feature.setdefault(item.feature, [])
        if obj not in names:
            names.append(obj)
    lines = []
    for feature in UNENFORCED:
        who = by_feature.get(feature)
        if not who:
            continue
        shown = ", ".join(who[:3]) + (", ..." if len(who) > 3 else "")
        count = f"{len(who)} object" + ("s" if len(who) != 1 else "")
        lines.append(f"{UNENFORCED[feature]} (in {count}: {shown})")
    return lines
