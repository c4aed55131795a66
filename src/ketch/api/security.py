"""Istio security kinds (security.istio.io/v1, v1beta1 accepted): AuthorizationPolicy,
PeerAuthentication, RequestAuthentication — the full Istio field sets, with Istio's own
validation rules. What Ketch enforces where (node proxy at L4, waypoint at L7) is decided
by the consumers; `ketch.api.semantics` warns about fields a given placement cannot honour.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PlainValidator, model_validator

from ketch.api import wellknown
from ketch.api.base import (
    Duration,
    IPOrCIDR,
    KetchModel,
    Labels,
    Resource,
    describe,
    fail,
)
from ketch.util.strconv import parse_bool

SECURITY_GROUP = "security.istio.io"
SecurityApiVersion = Literal["security.istio.io/v1", "security.istio.io/v1beta1"]


class WorkloadSelector(KetchModel):
    match_labels: Labels | None = Field(default=None, alias="matchLabels")


class PolicyTargetReference(KetchModel):
    """A Gateway API style reference (Service, Gateway, ServiceEntry, GatewayClass)."""

    group: str = ""
    kind: str
    name: str
    namespace: str | None = None


def _check_port_string(value: Any) -> str:
    # Istio's API types ports in AuthorizationPolicy operations as strings.
    if isinstance(value, str) and value.isdigit() and 1 <= int(value) <= 65535:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise fail(f'expected a port number as a string (quote it: "{value}"), got {value}')
    raise fail(f'expected a port number 1-65535 as a string like "8080", got {describe(value)}')


PortString = Annotated[str, PlainValidator(_check_port_string)]


class Source(KetchModel):
    principals: list[str] | None = None
    not_principals: list[str] | None = Field(default=None, alias="notPrincipals")
    request_principals: list[str] | None = Field(default=None, alias="requestPrincipals")
    not_request_principals: list[str] | None = Field(default=None, alias="notRequestPrincipals")
    namespaces: list[str] | None = None
    not_namespaces: list[str] | None = Field(default=None, alias="notNamespaces")
    service_accounts: list[str] | None = Field(default=None, alias="serviceAccounts")
    not_service_accounts: list[str] | None = Field(default=None, alias="notServiceAccounts")
    ip_blocks: list[IPOrCIDR] | None = Field(default=None, alias="ipBlocks")
    not_ip_blocks: list[IPOrCIDR] | None = Field(default=None, alias="notIpBlocks")
    remote_ip_blocks: list[IPOrCIDR] | None = Field(default=None, alias="remoteIpBlocks")
    not_remote_ip_blocks: list[IPOrCIDR] | None = Field(default=None, alias="notRemoteIpBlocks")

    @model_validator(mode="after")
    def _check(self) -> Source:
        if not self.model_fields_set:
            raise fail("source has no fields set; give at least one, or remove the `from` entry")
        sa = bool(self.service_accounts or self.not_service_accounts)
        if sa and (self.principals or self.not_principals):
            raise fail(
                "serviceAccounts/notServiceAccounts cannot be combined with principals/"
                "notPrincipals (Istio rule)",
                "serviceAccounts" if self.service_accounts else "notServiceAccounts",
            )
        return self


class Operation(KetchModel):
    hosts: list[str] | None = None
    not_hosts: list[str] | None = Field(default=None, alias="notHosts")
    ports: list[PortString] | None = None
    not_ports: list[PortString] | None = Field(default=None, alias="notPorts")
    methods: list[str] | None = None
    not_methods: list[str] | None = Field(default=None, alias="notMethods")
    paths: list[str] | None = None
    not_paths: list[str] | None = Field(default=None, alias="notPaths")

    @model_validator(mode="after")
    def _check(self) -> Operation:
        if not self.model_fields_set:
            raise fail("operation has no fields set; give at least one, or remove the `to` entry")
        return self


class RuleFrom(KetchModel):
    source: Source


class RuleTo(KetchModel):
    operation: Operation


class Condition(KetchModel):
    key: str
    values: list[str] | None = None
    not_values: list[str] | None = Field(default=None, alias="notValues")

    @model_validator(mode="after")
    def _check(self) -> Condition:
        if not self.key.strip():
            raise fail("condition key must not be empty", "key")
        if not self.values and not self.not_values:
            raise fail(f"condition {self.key!r} needs values or notValues")
        if self.key == "destination.port":
            for field, vals in (("values", self.values), ("notValues", self.not_values)):
                for i, v in enumerate(vals or []):
                    if not (v.isdigit() and 1 <= int(v) <= 65535):
                        raise fail(
                            f"expected a port number 1-65535, got {describe(v)}", f"{field}[{i}]"
                        )
        return self


class Rule(KetchModel):
    from_: list[RuleFrom] | None = Field(default=None, alias="from")
    to: list[RuleTo] | None = None
    when: list[Condition] | None = None


class ExtensionProvider(KetchModel):
    name: str


def _check_targets(
    selector: WorkloadSelector | None,
    target_ref: PolicyTargetReference | None,
    target_refs: list[PolicyTargetReference] | None,
) -> None:
    if target_ref is not None and target_refs:
        raise fail("targetRef and targetRefs are mutually exclusive; use targetRefs", "targetRefs")
    if selector is not None and (target_ref is not None or target_refs):
        raise fail(
            "selector and targetRef(s) are mutually exclusive: selector picks workloads for "
            "the node proxy, targetRefs attach the policy to a waypoint/Service",
            "targetRefs" if target_refs else "targetRef",
        )


Action = Literal["ALLOW", "DENY", "AUDIT", "CUSTOM"]


class AuthorizationPolicySpec(KetchModel):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = Field(default=None, alias="targetRef")
    target_refs: list[PolicyTargetReference] | None = Field(default=None, alias="targetRefs")
    action: Action = "ALLOW"
    provider: ExtensionProvider | None = None
    rules: list[Rule] | None = None

    @model_validator(mode="after")
    def _check(self) -> AuthorizationPolicySpec:
        _check_targets(self.selector, self.target_ref, self.target_refs)
        if self.action == "CUSTOM" and self.provider is None:
            raise fail("action CUSTOM requires provider {name: <extension provider>}", "provider")
        if self.provider is not None and self.action != "CUSTOM":
            raise fail(
                f"provider is only allowed with action CUSTOM, not {self.action}", "provider"
            )
        return self

    def all_target_refs(self) -> list[PolicyTargetReference]:
        refs = list(self.target_refs or [])
        if self.target_ref is not None:
            refs.insert(0, self.target_ref)
        return refs


class AuthorizationPolicy(Resource):
    """security.istio.io/v1 AuthorizationPolicy. Dry run: annotation istio.io/dry-run."""

    api_version: SecurityApiVersion = Field(default="security.istio.io/v1", alias="apiVersion")
    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec = Field(default_factory=AuthorizationPolicySpec)
    status: dict[str, Any] | None = None


def is_dry_run(policy: Resource) -> bool:
    """Istio's dry-run annotation `istio.io/dry-run`, read as istiod does (Go's ParseBool:
    "true", "1", "t", ...): evaluate and log only, never enforce."""
    value = (policy.metadata.annotations or {}).get(wellknown.DRY_RUN, "")
    return parse_bool(value) is True


# --- PeerAuthentication ----------------------------------------------------------------------

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


class MutualTLS(KetchModel):
    mode: MtlsMode = "UNSET"


def _port_level_keys(value: Any) -> Any:
    # YAML writes `8080:` (int) but JSON round-trips make it "8080": accept both.
    if not isinstance(value, dict):
        raise fail(f"expected a mapping of port numbers to {{mode: ...}}, got {describe(value)}")
    out: dict[int, Any] = {}
    for key, item in value.items():
        port: int | None = None
        if isinstance(key, int) and not isinstance(key, bool):
            port = key
        elif isinstance(key, str) and key.isdigit():
            port = int(key)
        if port is None or not 1 <= port <= 65535:
            raise fail(f"expected a port number 1-65535 as key, got {describe(key)}")
        out[port] = item
    return out


class PeerAuthenticationSpec(KetchModel):
    selector: WorkloadSelector | None = None
    mtls: MutualTLS | None = None
    port_level_mtls: Annotated[dict[int, MutualTLS], BeforeValidator(_port_level_keys)] | None = (
        Field(default=None, alias="portLevelMtls")
    )

    @model_validator(mode="after")
    def _check(self) -> PeerAuthenticationSpec:
        if self.port_level_mtls and (self.selector is None or not self.selector.match_labels):
            raise fail(
                "portLevelMtls requires a selector with matchLabels (Istio rule: port-level "
                "settings apply to selected workloads only)",
                "portLevelMtls",
            )
        return self

    def mode_for_port(self, port: int) -> MtlsMode:
        """The mode at `port`: port-level if set, else the policy's; UNSET means inherit."""
        if self.port_level_mtls and port in self.port_level_mtls:
            mode = self.port_level_mtls[port].mode
            if mode != "UNSET":
                return mode
        return self.mtls.mode if self.mtls else "UNSET"


class PeerAuthentication(Resource):
    api_version: SecurityApiVersion = Field(default="security.istio.io/v1", alias="apiVersion")
    kind: Literal["PeerAuthentication"] = "PeerAuthentication"
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)
    status: dict[str, Any] | None = None


# --- RequestAuthentication -------------------------------------------------------------------


class JWTHeader(KetchModel):
    name: str
    prefix: str | None = None


class ClaimToHeader(KetchModel):
    header: str
    claim: str


class JWTRule(KetchModel):
    issuer: str
    audiences: list[str] | None = None
    jwks_uri: str | None = Field(default=None, alias="jwksUri")
    jwks: str | None = None
    from_headers: list[JWTHeader] | None = Field(default=None, alias="fromHeaders")
    from_params: list[str] | None = Field(default=None, alias="fromParams")
    from_cookies: list[str] | None = Field(default=None, alias="fromCookies")
    output_payload_to_header: str | None = Field(default=None, alias="outputPayloadToHeader")
    forward_original_token: bool | None = Field(default=None, alias="forwardOriginalToken")
    output_claim_to_headers: list[ClaimToHeader] | None = Field(
        default=None, alias="outputClaimToHeaders"
    )
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> JWTRule:
        if not self.issuer:
            raise fail("issuer must not be empty", "issuer")
        if self.jwks_uri and self.jwks:
            raise fail("jwksUri and jwks are mutually exclusive", "jwks")
        if self.jwks_uri and not self.jwks_uri.startswith(("http://", "https://")):
            raise fail(f"expected an http(s) URL, got {describe(self.jwks_uri)}", "jwksUri")
        return self


class RequestAuthenticationSpec(KetchModel):
    selector: WorkloadSelector | None = None
    target_ref: PolicyTargetReference | None = Field(default=None, alias="targetRef")
    target_refs: list[PolicyTargetReference] | None = Field(default=None, alias="targetRefs")
    jwt_rules: list[JWTRule] | None = Field(default=None, alias="jwtRules")

    @model_validator(mode="after")
    def _check(self) -> RequestAuthenticationSpec:
        _check_targets(self.selector, self.target_ref, self.target_refs)
        return self


class RequestAuthentication(Resource):
    """JWT validation; enforced only at L7 (a waypoint)."""

    api_version: SecurityApiVersion = Field(default="security.istio.io/v1", alias="apiVersion")
    kind: Literal["RequestAuthentication"] = "RequestAuthentication"
    spec: RequestAuthenticationSpec = Field(default_factory=RequestAuthenticationSpec)
    status: dict[str, Any] | None = None
