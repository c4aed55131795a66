"""discovery.k8s.io/v1 EndpointSlice: the ready (and not ready) addresses behind a Service.

Written by the local cluster's endpoint controller from Services and Pods, read by the
service proxy (VIP rules) and cluster DNS. Users rarely write one, but may (a Service without
a selector gets its endpoints from slices its owner writes, as in Kubernetes).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ketch.api.base import IPAddress, KetchModel, PortName, PortNumber, Resource

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
"""The label tying a slice to its Service (same namespace)."""
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"


class EndpointConditions(KetchModel):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ObjectReference(KetchModel):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Endpoint(KetchModel):
    addresses: list[IPAddress]
    conditions: EndpointConditions | None = None
    hostname: str | None = None
    node_name: str | None = Field(default=None, alias="nodeName")
    target_ref: ObjectReference | None = Field(default=None, alias="targetRef")

    def is_ready(self) -> bool:
        """Kubernetes treats an unset `ready` as ready."""
        return self.conditions is None or self.conditions.ready is not False


class EndpointPort(KetchModel):
    name: PortName | Literal[""] | None = None
    port: PortNumber | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    app_protocol: str | None = Field(default=None, alias="appProtocol")


class EndpointSlice(Resource):
    api_version: Literal["discovery.k8s.io/v1"] = Field(
        default="discovery.k8s.io/v1", alias="apiVersion"
    )
    kind: Literal["EndpointSlice"] = "EndpointSlice"
    address_type: Literal["IPv4", "IPv6", "FQDN"] = Field(alias="addressType")
    endpoints: list[Endpoint] = Field(default_factory=list)
    ports: list[EndpointPort] | None = None

    @property
    def service_name(self) -> str | None:
        return self.labels.get(SERVICE_NAME_LABEL)


__all__ = [
    "MANAGED_BY_LABEL",
    "SERVICE_NAME_LABEL",
    "Endpoint",
    "EndpointConditions",
    "EndpointPort",
    "EndpointSlice",
    "ObjectReference",
]
