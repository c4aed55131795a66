"""Building blocks shared by every kind: the pydantic base, the metadata envelope, validated
scalar types (names, labels, ports, IPs, durations) and the `Resource` base class.

Validators raise `fail(...)`, a pydantic custom error whose message is already written for
the user ("expected integer 1-65535, got 'http'") and which may carry a sub-path relative to
the object being validated; `ketch.api.loader` turns these into `Problem`s with full paths.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

KETCH_ERROR = "ketch"


def fail(message: str, subpath: str = "") -> PydanticCustomError:
    """An error for the loader: `message` verbatim, at `subpath` below the current location
    (dotted, with [i] for list items, YAML names). Use as `raise fail(...)`."""
    return PydanticCustomError(KETCH_ERROR, "{detail}", {"detail": message, "subpath": subpath})


def describe(value: Any) -> str:
    """How a bad input is shown after "got": YAML spelling for scalars, a word for the rest."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:77] + "...")
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


class KetchModel(BaseModel):
    """Strict like the Kubernetes API server: no coercion of "80" to 80 or of 1 to "1"."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        strict=True,
        frozen=False,
        validate_default=False,
    )


# --- names -------------------------------------------------------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

NameRule = Literal["label", "subdomain", "dns1035"]


def name_problem(value: str, rule: NameRule) -> str | None:
    """Kubernetes' name rules (apimachinery validation): None if valid, else the reason."""
    if rule == "label":
        if len(value) > 63:
            return f"must be at most 63 characters (DNS-1123 label), got {len(value)}"
        if not _DNS1123_LABEL.match(value):
            return (
                "must be a DNS-1123 label: lowercase letters, digits and '-', starting and "
                f"ending with a letter or digit, got {describe(value)}"
            )
    elif rule == "dns1035":
        if len(value) > 63:
            return f"must be at most 63 characters (DNS-1035 label), got {len(value)}"
        if not _DNS1035_LABEL.match(value):
            return (
                "must be a DNS-1035 label: lowercase letters, digits and '-', starting with a "
                f"letter and ending with a letter or digit, got {describe(value)}"
            )
    else:
        if len(value) > 253:
            return f"must be at most 253 characters (DNS-1123 subdomain), got {len(value)}"
        if not _DNS1123_SUBDOMAIN.match(value):
            return (
                "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
                f"starting and ending with a letter or digit, got {describe(value)}"
            )
    return None


def _name_validator(rule: NameRule) -> PlainValidator:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise fail(f"expected string, got {describe(value)}")
        problem = name_problem(value, rule)
        if problem:
            raise fail(problem)
        return value

    return PlainValidator(check)


DNS1123Label = Annotated[str, _name_validator("label")]
DNS1123Subdomain = Annotated[str, _name_validator("subdomain")]


def port_name_problem(value: str) -> str | None:
    """IANA_SVC_NAME, Kubernetes' rule for named ports."""
    if len(value) > 15:
        return f"port name must be at most 15 characters, got {describe(value)}"
    if not _IANA_SVC_NAME.match(value) or "--" in value:
        return (
            "port name must be lowercase letters, digits and single '-' (IANA service name), "
            f"got {describe(value)}"
        )
    if not any(c.isalpha() for c in value):
        return f"port name must contain at least one letter, got {describe(value)}"
    return None


def _check_port_name(value: Any) -> str:
    if not isinstance(value, str):
        raise fail(f"expected string, got {describe(value)}")
    problem = port_name_problem(value)
    if problem:
        raise fail(problem)
    return value


PortName = Annotated[str, PlainValidator(_check_port_name)]


def _check_port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise fail(f"expected integer 1-65535, got {describe(value)}")
    return value


PortNumber = Annotated[int, PlainValidator(_check_port)]


def _check_int_or_port_name(value: Any) -> int | str:
    """A port given by number or by name (Kubernetes IntOrString), e.g. targetPort."""
    if isinstance(value, str):
        problem = port_name_problem(value)
        if problem:
            raise fail(f"expected integer 1-65535 or a port name: {problem}")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise fail(f"expected integer 1-65535 or a port name, got {describe(value)}")
    return value


IntOrPortName = Annotated[int | str, PlainValidator(_check_int_or_port_name)]


def _non_negative(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(f"expected integer >= 0, got {describe(value)}")
    return value


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(f"expected integer >= 1, got {describe(value)}")
    return value


NonNegativeInt = Annotated[int, PlainValidator(_non_negative)]
PositiveInt = Annotated[int, PlainValidator(_positive)]


def _check_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise fail(f"expected an IP address, got {describe(value)}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise fail(f"expected an IP address, got {describe(value)}") from None
    return value


IPAddress = Annotated[str, PlainValidator(_check_ip)]


def _check_ip_or_cidr(value: Any) -> str:
    if not isinstance(value, str):
        raise fail(f"expected an IP address or CIDR, got {describe(value)}")
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        raise fail(
            f"expected an IP address or CIDR (e.g. 10.0.0.1 or 10.0.0.0/16), got {describe(value)}"
        ) from None
    return value


IPOrCIDR = Annotated[str, PlainValidator(_check_ip_or_cidr)]


def _check_cidr(value: Any) -> str:
    if not isinstance(value, str) or "/" not in value:
        raise fail(f"expected a CIDR (e.g. 10.244.1.0/24), got {describe(value)}")
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise fail(f"expected a CIDR (e.g. 10.244.1.0/24), got {describe(value)}: {exc}") from None
    return value


CIDR = Annotated[str, PlainValidator(_check_cidr)]

# Gateway API duration (GEP-2257): 1-4 groups of number+unit, e.g. "1h30m", "500ms", "0s".
_GW_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
# Protobuf duration as Istio accepts it in YAML, e.g. "5s", "0.5s", "1m".
_PB_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|ns))+$")


def _check_gw_duration(value: Any) -> str:
    if not isinstance(value, str) or not _GW_DURATION.match(value):
        raise fail(f"expected a duration like '10s', '500ms' or '1h30m', got {describe(value)}")
    return value


def _check_pb_duration(value: Any) -> str:
    if not isinstance(value, str) or not _PB_DURATION.match(value):
        raise fail(f"expected a duration like '5s' or '1.5s', got {describe(value)}")
    return value


GatewayDuration = Annotated[str, PlainValidator(_check_gw_duration)]
Duration = Annotated[str, PlainValidator(_check_pb_duration)]


def _check_timestamp(value: Any) -> str | None:
    # YAML parses unquoted timestamps into datetimes; keep the RFC 3339 text form.
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        stamp: dt.datetime = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str):
        return value
    raise fail(f"expected an RFC 3339 timestamp, got {describe(value)}")


Timestamp = Annotated[str | None, PlainValidator(_check_timestamp)]


# --- labels ------------------------------------------------------------------------------

_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")


def label_key_problem(key: str) -> str | None:
    """Kubernetes qualified-name rule for label and annotation keys: [prefix/]name."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"key {key!r}: prefix before '/' must not be empty"
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            return f"key {key!r}: prefix {prefix!r} must be a DNS-1123 subdomain"
    if not name:
        return f"key {key!r}: name part must not be empty"
    if len(name) > 63:
        return f"key {key!r}: name part must be at most 63 characters"
    if not _LABEL_NAME.match(name):
        return (
            f"key {key!r}: name part must be letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63:
        return f"must be at most 63 characters, got {len(value)}"
    if value and not _LABEL_NAME.match(value):
        return (
            "must be empty or letters, digits, '-', '_' or '.', starting and ending with a "
            f"letter or digit, got {describe(value)}"
        )
    return None


def _string_map(value: Any, *, labels: bool) -> dict[str, str]:
    what = "label" if labels else "annotation"
    if not isinstance(value, Mapping):
        raise fail(f"expected a mapping of {what}s, got {describe(value)}")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str):
            raise fail(f"{what} key must be a string, got {describe(key)}")
        problem = label_key_problem(key)
        if problem:
            raise fail(f"invalid {what} {problem}")
        if not isinstance(val, str):
            raise fail(
                f"{what} {key!r}: value must be a string (quote it in YAML), got {describe(val)}"
            )
        if labels:
            vproblem = label_value_problem(val)
            if vproblem:
                raise fail(f"invalid label {key!r}: value {vproblem}")
        out[key] = val
    return out


Labels = Annotated[dict[str, str], PlainValidator(lambda v: _string_map(v, labels=True))]
Annotations = Annotated[dict[str, str], PlainValidator(lambda v: _string_map(v, labels=False))]


# --- selectors ---------------------------------------------------------------------------


class LabelSelectorRequirement(KetchModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> LabelSelectorRequirement:
        problem = label_key_problem(self.key)
        if problem:
            raise fail(f"invalid label {problem}", "key")
        if self.operator in ("In", "NotIn") and not self.values:
            raise fail(f"operator {self.operator} needs a non-empty list of values", "values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise fail(f"operator {self.operator} takes no values", "values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        present = self.key in labels and labels[self.key] in (self.values or [])
        return present if self.operator == "In" else not present


class LabelSelector(KetchModel):
    """metav1.LabelSelector. An empty selector matches everything (as in Kubernetes)."""

    match_labels: Labels | None = Field(default=None, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, alias="matchExpressions"
    )

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in (self.match_labels or {}).items():
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.match_expressions or [])


# --- metadata and the resource envelope ---------------------------------------------------


class OwnerReference(KetchModel):
    api_version: str = Field(alias="apiVersion")
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = Field(default=None, alias="blockOwnerDeletion")


class ObjectMeta(KetchModel):
    """metav1.ObjectMeta, the subset Ketch uses. The store sets uid, resourceVersion,
    generation and creationTimestamp; users normally write only name/namespace/labels/
    annotations."""

    name: DNS1123Subdomain  # kinds with stricter rules check again (Resource.name_rule)
    namespace: DNS1123Label | None = None
    labels: Labels | None = None
    annotations: Annotations | None = None
    uid: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    generation: NonNegativeInt | None = None
    creation_timestamp: Timestamp = Field(default=None, alias="creationTimestamp")
    owner_references: list[OwnerReference] | None = Field(default=None, alias="ownerReferences")


class Condition(KetchModel):
    """A status condition (core/v1 style and metav1.Condition style both fit)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: Timestamp = Field(default=None, alias="lastTransitionTime")
    last_probe_time: Timestamp = Field(default=None, alias="lastProbeTime")
    last_update_time: Timestamp = Field(default=None, alias="lastUpdateTime")
    last_heartbeat_time: Timestamp = Field(default=None, alias="lastHeartbeatTime")
    observed_generation: NonNegativeInt | None = Field(default=None, alias="observedGeneration")


class Resource(KetchModel):
    """Every Ketch object: apiVersion, kind, metadata, spec, status.

    Subclasses narrow `kind`, `api_version`, `spec` and `status` and set `name_rule`
    (the Kubernetes rule for metadata.name of that kind).
    """

    name_rule: ClassVar[NameRule] = "subdomain"

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: Any = None
    status: Any = None

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        # A field validator (not a model one) so a bad name is reported even when other
        # fields of the object are invalid too.
        problem = name_problem(metadata.name, cls.name_rule)
        if problem:
            raise fail(problem, "name")
        return metadata

    def to_manifest(self) -> dict[str, Any]:
        """The wire form: YAML/JSON names, only fields that were set and not None (so what a
        user wrote comes back unchanged); apiVersion and kind always present, first."""
        body = self.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
        out: dict[str, Any] = {"apiVersion": self.api_version, "kind": self.kind}
        out.update((k, v) for k, v in body.items() if k not in out)
        return out

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        """The namespace, "" when unset or for cluster-scoped kinds."""
        return self.metadata.namespace or ""

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.metadata.labels or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.metadata.annotations or {})
