"""The endpoint controller's decision, pure: Service + Pods -> the EndpointSlices it should have.

`desired_slices(service, pods)`: the pods in the Service's namespace that its selector
matches, that have an IP and are not in a terminal phase, become endpoints:
`addresses` = the pod's IP of the slice's family, `conditions.ready` = the pod's Ready
condition (`serving` the same, `terminating` false: a deleted pod is gone from the store at
once), `nodeName`, `targetRef` to the pod. Not-ready pods are listed with `ready: false`, as in
Kubernetes; the service proxy and DNS use only ready ones.

Ports are resolved per pod: a numeric `targetPort` as is; a named one through the pod's
container ports (same protocol). A pod that lacks a named port is left out of that port, so
pods are grouped by their resolved port set, one slice per (address family, port set), as
Kubernetes' reconciler does. A pod that resolves none of a Service's ports is left out
entirely (a slice with no ports would mean "all ports" to a consumer).

Slices are named `<service>-<hash of family and ports>` (stable: an update rewrites the same
slice), labelled `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
endpointslice-controller.ketch.dev` (plus the Service's own labels, and
`service.kubernetes.io/headless` for headless Services), and controlled by the Service, so
they go when it goes. A Service with no endpoints keeps one empty slice (Kubernetes'
placeholder). A Service without a selector (or with an empty one) gets no managed slices: its
owner writes them. The family of a ClusterIP Service is its clusterIP's; a headless Service
gets a slice per family its pods have.

`diff_slices(desired, existing)` says what to create, update and delete: only slices managed
by this controller are ever touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ketch.api.core import Pod, Service, ServicePort
from ketch.api.discovery import MANAGED_BY_LABEL, SERVICE_NAME_LABEL, EndpointSlice
from ketch.cluster.controllers.meta import TERMINAL_PHASES, owner_reference, short_hash

MANAGED_BY = "endpointslice-controller.ketch.dev"
HEADLESS_LABEL = "service.kubernetes.io/headless"

Port = tuple[str | None, int, str, str | None]  # name, port, protocol, appProtocol


def _family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def pod_ips(pod: Pod) -> list[str]:
    status = pod.status
    if status is None:
        return []
    ips = [p.ip for p in status.pod_ips or []]
    if status.pod_ip and status.pod_ip not in ips:
        ips.insert(0, status.pod_ip)
    return ips


def resolve_port(pod: Pod, port: ServicePort) -> int | None:
    """The pod's port for a Service port (Kubernetes' FindPort), or None."""
    target = port.effective_target_port()
    if isinstance(target, int):
        return target
    for container in pod.spec.containers:
        for cport in container.ports or []:
            if cport.name == target and cport.protocol == port.protocol:
                return cport.container_port
    return None


def selects(service: Service, pod: Pod) -> bool:
    selector = service.spec.selector or {}
    return (
        bool(selector)
        and pod.namespace == service.namespace
        and all(pod.labels.get(k) == v for k, v in selector.items())
    )


def _families(service: Service, pods: Sequence[Pod]) -> list[str]:
    ip = service.spec.cluster_ip
    if ip and ip != "None":
        return [_family(ip)]
    found = sorted({_family(ip) for pod in pods for ip in pod_ips(pod)})
    return found or ["IPv4"]


def _slice(
    service: Service, family: str, ports: tuple[Port, ...], endpoints: list[dict[str, Any]]
) -> dict[str, Any]:
    labels = {
        **service.labels,
        SERVICE_NAME_LABEL: service.name,
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    if service.spec.headless:
        labels[HEADLESS_LABEL] = ""
    port_list = []
    for name, number, protocol, app_protocol in ports:
        entry: dict[str, Any] = {"name": name or "", "port": number, "protocol": protocol}
        if app_protocol:
            entry["appProtocol"] = app_protocol
        port_list.append(entry)
    suffix = short_hash([family, [list(p) for p in ports]], 8)
    manifest: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service.name}-{suffix}",
            "namespace": service.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(service)],
        },
        "addressType": family,
        "endpoints": endpoints,
    }
    if port_list:
        manifest["ports"] = port_list
    return manifest


def desired_slices(service: Service, pods: Sequence[Pod]) -> list[dict[str, Any]]:
    """The EndpointSlice manifests `service` should have (none if it has no selector)."""
    if not service.spec.selector:
        return []
    members = [
        p
        for p in pods
        if selects(service, p)
        and pod_ips(p)
        and not (p.status is not None and p.status.phase in TERMINAL_PHASES)
    ]
    members.sort(key=lambda p: p.name)
    families = _families(service, members)
    service_ports = service.spec.ports or []
    groups: dict[tuple[str, tuple[Port, ...]], list[dict[str, Any]]] = {}
    for pod in members:
        ports: list[Port] = []
        for sp in service_ports:
            number = resolve_port(pod, sp)
            if number is not None:
                ports.append((sp.name, number, sp.protocol, sp.app_protocol))
        if service_ports and not ports:
            continue
        ready = pod.is_ready()
        for family in families:
            ip = next((ip for ip in pod_ips(pod) if _family(ip) == family), None)
            if ip is None:
                continue
            endpoint: dict[str, Any] = {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "targetRef": {
                    "kind": "Pod",
                    "namespace": pod.namespace,
                    "name": pod.name,
                    "uid": pod.metadata.uid or "",
                },
            }
            if pod.spec.node_name:
                endpoint["nodeName"] = pod.spec.node_name
            groups.setdefault((family, tuple(ports)), []).append(endpoint)
    if not groups:
        return [_slice(service, families[0], (), [])]
    return [
        _slice(service, fam, ports, eps)
        for (fam, ports), eps in sorted(groups.items(), key=lambda kv: str(kv[0]))
    ]


def is_managed(slice_: EndpointSlice) -> bool:
    return slice_.labels.get(MANAGED_BY_LABEL) == MANAGED_BY


@dataclass
class SliceDiff:
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)  # with resourceVersion set
    delete: list[EndpointSlice] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def _content(m: dict[str, Any]) -> Any:
    meta = m.get("metadata") or {}
    return (
        m.get("addressType"),
        m.get("endpoints") or [],
        m.get("ports") or [],
        meta.get("labels") or {},
        meta.get("ownerReferences") or [],
    )


def diff_slices(desired: Sequence[dict[str, Any]], existing: Sequence[EndpointSlice]) -> SliceDiff:
    """Turn `existing` (this Service's slices) into `desired`; unmanaged slices are left alone."""
    diff = SliceDiff()
    mine = {s.name: s for s in existing if is_managed(s)}
    foreign = {s.name for s in existing if not is_managed(s)}
    for want in desired:
        name = want["metadata"]["name"]
        if name in foreign:
            continue  # a user's slice holds the name; never overwrite it
        have = mine.pop(name, None)
        if have is None:
            diff.create.append(want)
        elif _content(have.to_manifest()) != _content(want):
            update = {
                **want,
                "metadata": {**want["metadata"], "resourceVersion": have.metadata.resource_version},
            }
            diff.update.append(update)
    diff.delete = sorted(mine.values(), key=lambda s: s.name)
    return diff
