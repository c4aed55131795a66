"""Gateway API kinds (gateway.networking.k8s.io): Gateway and HTTPRoute.

Ketch uses Gateways for waypoints: `gatewayClassName: istio-waypoint` with the HBONE
listener {name: mesh, port: 15008, protocol: HBONE}; label `istio.io/waypoint-for` says
which traffic it handles. HTTPRoutes attach to a Service (parentRefs kind Service, the
GAMMA pattern) or to a Gateway, and are programmed into the waypoint's Envoy.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, model_validator

from ketch.api import wellknown
from ketch.api.base import (
    Annotations,
    Condition,
    GatewayDuration,
    KetchModel,
    Labels,
    LabelSelector,
    NonNegativeInt,
    PortNumber,
    Resource,
    describe,
    fail,
)

GATEWAY_GROUP = wellknown.GATEWAY_API_GROUP
GatewayApiVersion = Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]

_SECTION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_section_name(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _SECTION_NAME.match(value):
        raise fail(
            "expected a section name (lowercase letters, digits, '-' and '.'), got "
            f"{describe(value)}"
        )
    return value


def _check_hostname(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _HOSTNAME.match(value):
        raise fail(
            f"expected a hostname like 'example.com' or '*.example.com', got {describe(value)}"
        )
    return value


SectionName = Annotated[str, PlainValidator(_check_section_name)]
Hostname = Annotated[str, PlainValidator(_check_hostname)]


# --- Gateway --------------------------------------------------------------------------------


class RouteNamespaces(KetchModel):
    from_: Literal["All", "Same", "Selector", "None"] = Field(default="Same", alias="from")
    selector: LabelSelector | None = None


class RouteGroupKind(KetchModel):
    group: str | None = None
    kind: str


class AllowedRoutes(KetchModel):
    namespaces: RouteNamespaces | None = None
    kinds: list[RouteGroupKind] | None = None


class SecretObjectReference(KetchModel):
    group: str | None = None
    kind: str | None = None
    name: str
    namespace: str | None = None


class GatewayTLSConfig(KetchModel):
    mode: Literal["Terminate", "Passthrough"] = "Terminate"
    certificate_refs: list[SecretObjectReference] | None = Field(
        default=None, alias="certificateRefs"
    )
    options: dict[str, str] | None = None


class Listener(KetchModel):
    name: SectionName
    hostname: Hostname | None = None
    port: PortNumber
    protocol: str
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes | None = Field(default=None, alias="allowedRoutes")


class GatewayAddress(KetchModel):
    type: str = "IPAddress"
    value: str


class ParametersReference(KetchModel):
    group: str
    kind: str
    name: str


class GatewayInfrastructure(KetchModel):
    labels: Labels | None = None
    annotations: Annotations | None = None
    parameters_ref: ParametersReference | None = Field(default=None, alias="parametersRef")


class GatewaySpec(KetchModel):
    gateway_class_name: str = Field(alias="gatewayClassName")
    listeners: list[Listener]
    addresses: list[GatewayAddress] | None = None
    infrastructure: GatewayInfrastructure | None = None

    @model_validator(mode="after")
    def _check(self) -> GatewaySpec:
        if not self.listeners:
            raise fail("expected at least one listener", "listeners")
        seen: set[str] = set()
        for i, listener in enumerate(self.listeners):
            if listener.name in seen:
                raise fail(f"duplicate listener name {listener.name!r}", f"listeners[{i}].name")
            seen.add(listener.name)
        return self


class ListenerStatus(KetchModel):
    name: str
    supported_kinds: list[RouteGroupKind] | None = Field(default=None, alias="supportedKinds")
    attached_routes: NonNegativeInt = Field(default=0, alias="attachedRoutes")
    conditions: list[Condition] | None = None


class GatewayStatus(KetchModel):
    addresses: list[GatewayAddress] | None = None
    conditions: list[Condition] | None = None
    listeners: list[ListenerStatus] | None = None


class Gateway(Resource):
    """gateway.networking.k8s.io/v1 Gateway; a waypoint when its class is istio-waypoint."""

    api_version: GatewayApiVersion = Field(
        default="gateway.networking.k8s.io/v1", alias="apiVersion"
    )
    kind: Literal["Gateway"] = "Gateway"
    spec: GatewaySpec
    status: GatewayStatus | None = None

    @model_validator(mode="after")
    def _check_waypoint(self) -> Gateway:
        if self.spec.gateway_class_name != wellknown.WAYPOINT_GATEWAY_CLASS:
            return self
        value = (self.metadata.labels or {}).get(wellknown.WAYPOINT_FOR)
        if value is not None and value not in wellknown.WAYPOINT_FOR_VALUES:
            raise fail(
                f"invalid label {wellknown.WAYPOINT_FOR!r}: expected one of "
                f"{', '.join(wellknown.WAYPOINT_FOR_VALUES)}, got {describe(value)}",
                "metadata.labels",
            )
        if waypoint_listener(self) is None:
            raise fail(
                "a waypoint (gatewayClassName istio-waypoint) needs a listener "
                "{name: mesh, port: 15008, protocol: HBONE}",
                "spec.listeners",
            )
        return self

    @property
    def is_waypoint(self) -> bool:
        return self.spec.gateway_class_name == wellknown.WAYPOINT_GATEWAY_CLASS

    @property
    def waypoint_for(self) -> wellknown.WaypointFor:
        """Which traffic this waypoint handles (label istio.io/waypoint-for, default service)."""
        value = (self.metadata.labels or {}).get(wellknown.WAYPOINT_FOR)
        for allowed in wellknown.WAYPOINT_FOR_VALUES:
            if value == allowed:
                return allowed
        return wellknown.WAYPOINT_FOR_DEFAULT


def waypoint_listener(gateway: Gateway) -> Listener | None:
    for listener in gateway.spec.listeners:
        if (
            listener.port == wellknown.WAYPOINT_LISTENER_PORT
            and listener.protocol == wellknown.WAYPOINT_LISTENER_PROTOCOL
        ):
            return listener
    return None


# --- HTTPRoute ------------------------------------------------------------------------------


class ParentReference(KetchModel):
    group: str | None = None  # default gateway.networking.k8s.io
    kind: str | None = None  # default Gateway
    namespace: str | None = None
    name: str
    section_name: SectionName | None = Field(default=None, alias="sectionName")
    port: PortNumber | None = None

    @property
    def effective_group(self) -> str:
        return GATEWAY_GROUP if self.group is None else self.group

    @property
    def effective_kind(self) -> str:
        return self.kind or "Gateway"

    @property
    def is_service(self) -> bool:
        """A GAMMA parent: core Service (group "" and kind Service)."""
        return self.effective_kind == "Service" and self.effective_group in ("", "core")


class HTTPPathMatch(KetchModel):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"

    @model_validator(mode="after")
    def _check(self) -> HTTPPathMatch:
        if self.type != "RegularExpression" and not self.value.startswith("/"):
            raise fail(f"path must start with '/', got {describe(self.value)}", "value")
        return self


class HTTPHeaderMatch(KetchModel):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str
    value: str


HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]


class HTTPRouteMatch(KetchModel):
    path: HTTPPathMatch | None = None
    headers: list[HTTPHeaderMatch] | None = None
    query_params: list[HTTPHeaderMatch] | None = Field(default=None, alias="queryParams")
    method: HTTPMethod | None = None


class HTTPHeader(KetchModel):
    name: str
    value: str


class HTTPHeaderFilter(KetchModel):
    set: list[HTTPHeader] | None = None
    add: list[HTTPHeader] | None = None
    remove: list[str] | None = None


class HTTPPathModifier(KetchModel):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = Field(default=None, alias="replaceFullPath")
    replace_prefix_match: str | None = Field(default=None, alias="replacePrefixMatch")

    @model_validator(mode="after")
    def _check(self) -> HTTPPathModifier:
        want = "replaceFullPath" if self.type == "ReplaceFullPath" else "replacePrefixMatch"
        value = (
            self.replace_full_path if self.type == "ReplaceFullPath" else self.replace_prefix_match
        )
        if value is None:
            raise fail(f"type {self.type} requires {want}", want)
        return self


class HTTPRequestRedirectFilter(KetchModel):
    scheme: Literal["http", "https"] | None = None
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None
    port: PortNumber | None = None
    status_code: Literal[301, 302, 303, 307, 308] = Field(default=302, alias="statusCode")


class HTTPURLRewriteFilter(KetchModel):
    hostname: Hostname | None = None
    path: HTTPPathModifier | None = None


class BackendObjectReference(KetchModel):
    group: str | None = None  # default "" (core)
    kind: str | None = None  # default Service
    name: str
    namespace: str | None = None
    port: PortNumber | None = None


class Fraction(KetchModel):
    numerator: NonNegativeInt
    denominator: NonNegativeInt = 100


class HTTPRequestMirrorFilter(KetchModel):
    backend_ref: BackendObjectReference = Field(alias="backendRef")
    percent: NonNegativeInt | None = None
    fraction: Fraction | None = None


class LocalObjectReference(KetchModel):
    group: str
    kind: str
    name: str


_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "ExtensionRef": "extensionRef",
}


class HTTPRouteFilter(KetchModel):
    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
        "RequestRedirect",
        "URLRewrite",
        "ExtensionRef",
    ]
    request_header_modifier: HTTPHeaderFilter | None = Field(
        default=None, alias="requestHeaderModifier"
    )
    response_header_modifier: HTTPHeaderFilter | None = Field(
        default=None, alias="responseHeaderModifier"
    )
    request_mirror: HTTPRequestMirrorFilter | None = Field(default=None, alias="requestMirror")
    request_redirect: HTTPRequestRedirectFilter | None = Field(
        default=None, alias="requestRedirect"
    )
    url_rewrite: HTTPURLRewriteFilter | None = Field(default=None, alias="urlRewrite")
    extension_ref: LocalObjectReference | None = Field(default=None, alias="extensionRef")

    @model_validator(mode="after")
    def _check(self) -> HTTPRouteFilter:
        want = _FILTER_FIELDS[self.type]
        by_alias = {
            "requestHeaderModifier": self.request_header_modifier,
            "responseHeaderModifier": self.response_header_modifier,
            "requestMirror": self.request_mirror,
            "requestRedirect": self.request_redirect,
            "urlRewrite": self.url_rewrite,
            "extensionRef": self.extension_ref,
        }
        if by_alias[want] is None:
            raise fail(f"filter type {self.type} requires {want}", want)
        extra = [alias for alias, val in by_alias.items() if val is not None and alias != want]
        if extra:
            raise fail(f"filter type {self.type} must not set {extra[0]}", extra[0])
        return self


class HTTPBackendRef(BackendObjectReference):
    weight: Annotated[int, PlainValidator(lambda v: _weight(v))] | None = None
    filters: list[HTTPRouteFilter] | None = None

    @model_validator(mode="after")
    def _check(self) -> HTTPBackendRef:
        if (self.kind or "Service") == "Service" and self.group in (None, "") and self.port is None:
            raise fail("port is required when the backend is a Service", "port")
        return self

    @property
    def effective_weight(self) -> int:
        return 1 if self.weight is None else self.weight


def _weight(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise fail(f"expected integer 0-1000000, got {describe(value)}")
    return value


class HTTPRouteTimeouts(KetchModel):
    request: GatewayDuration | None = None
    backend_request: GatewayDuration | None = Field(default=None, alias="backendRequest")


class HTTPRouteRetry(KetchModel):
    codes: list[Annotated[int, PlainValidator(lambda v: _status_code(v))]] | None = None
    attempts: NonNegativeInt | None = None
    backoff: GatewayDuration | None = None


def _status_code(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise fail(f"expected an HTTP status code 400-599, got {describe(value)}")
    return value


class HTTPRouteRule(KetchModel):
    name: SectionName | None = None
    matches: list[HTTPRouteMatch] | None = None
    filters: list[HTTPRouteFilter] | None = None
    backend_refs: list[HTTPBackendRef] | None = Field(default=None, alias="backendRefs")
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None

    def effective_matches(self) -> list[HTTPRouteMatch]:
        """No matches means one match on path prefix "/" (Gateway API default)."""
        return list(self.matches) if self.matches else [HTTPRouteMatch(path=HTTPPathMatch())]


class HTTPRouteSpec(KetchModel):
    parent_refs: list[ParentReference] | None = Field(default=None, alias="parentRefs")
    hostnames: list[Hostname] | None = None
    rules: list[HTTPRouteRule] | None = None


class RouteParentStatus(KetchModel):
    parent_ref: ParentReference = Field(alias="parentRef")
    controller_name: str = Field(alias="controllerName")
    conditions: list[Condition] | None = None


class HTTPRouteStatus(KetchModel):
    parents: list[RouteParentStatus] | None = None


class HTTPRoute(Resource):
    """gateway.networking.k8s.io/v1 HTTPRoute (v1beta1 accepted)."""

    api_version: GatewayApiVersion = Field(
        default="gateway.networking.k8s.io/v1", alias="apiVersion"
    )
    kind: Literal["HTTPRoute"] = "HTTPRoute"
    spec: HTTPRouteSpec = Field(default_factory=HTTPRouteSpec)
    status: HTTPRouteStatus | None = None
