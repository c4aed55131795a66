"""L4 authorization policies (xDS `istio.security.Authorization`) and the PeerAuthentication
modes the node proxy enforces. Pure data: evaluation lives with the node proxy
(`ketch.ztunnel.rbac`), conversion from Istio YAML with the control plane
(`ketch.control.translate.policy`)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from ketch.identity.spiffe import SpiffeId
from ketch.mesh.common import IpNet, MeshError, check_port, frozen_map, require


class Scope(enum.Enum):
    GLOBAL = "GLOBAL"
    NAMESPACE = "NAMESPACE"
    WORKLOAD_SELECTOR = "WORKLOAD_SELECTOR"


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    PRESENCE = "presence"


@dataclass(frozen=True)
class StringMatch:
    kind: MatchKind
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind is MatchKind.PRESENCE and self.value:
            raise MeshError("a presence match has no value")

    @classmethod
    def parse(cls, pattern: str) -> StringMatch:
        """Istio's syntax: `*` presence, `*x` suffix, `x*` prefix, else exact."""
        if pattern == "*":
            return cls(MatchKind.PRESENCE)
        if pattern.startswith("*"):
            return cls(MatchKind.SUFFIX, pattern[1:])
        if pattern.endswith("*"):
            return cls(MatchKind.PREFIX, pattern[:-1])
        return cls(MatchKind.EXACT, pattern)

    def matches(self, value: str | None) -> bool:
        """Does `value` match? `None` (no such attribute, e.g. no peer identity) never does."""
        if value is None:
            return False
        match self.kind:
            case MatchKind.PRESENCE:
                return value != ""
            case MatchKind.EXACT:
                return value == self.value
            case MatchKind.PREFIX:
                return value.startswith(self.value)
            case MatchKind.SUFFIX:
                return value.endswith(self.value)

    def __str__(self) -> str:
        match self.kind:
            case MatchKind.PRESENCE:
                return "*"
            case MatchKind.PREFIX:
                return f"{self.value}*"
            case MatchKind.SUFFIX:
                return f"*{self.value}"
            case MatchKind.EXACT:
                return self.value


@dataclass(frozen=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        require("service account match namespace", self.namespace)
        require("service account match name", self.service_account)

    def matches(self, identity: SpiffeId | None) -> bool:
        return (
            identity is not None
            and identity.namespace == self.namespace
            and identity.service_account == self.service_account
        )


@dataclass(frozen=True)
class Match:
    """One xDS `Match`: every non-empty field must hold; values within a field are OR'd;
    a `not_` field excludes what it matches."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()
    source_ips: tuple[IpNet, ...] = ()
    not_source_ips: tuple[IpNet, ...] = ()
    destination_ips: tuple[IpNet, ...] = ()
    not_destination_ips: tuple[IpNet, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for p in (*self.destination_ports, *self.not_destination_ports):
            check_port("authorization match", p)

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class Clause:
    """The matches of a clause are OR'd."""

    matches: tuple[Match, ...]


@dataclass(frozen=True)
class Rule:
    """The clauses of a rule are AND'd; a rule with no clauses matches every connection."""

    clauses: tuple[Clause, ...] = ()


@dataclass(frozen=True)
class Authorization:
    """An L4 authorization policy (xDS `Authorization`). Rules are OR'd; a policy with no
    rules matches nothing. `selector` (when the policy came from YAML) selects workloads in
    the policy's namespace (or all namespaces for the root namespace); policies from xDS are
    attached to workloads by `Workload.authorization_policies` instead."""

    name: str
    namespace: str
    scope: Scope
    action: Action
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False
    selector: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        require("authorization name", self.name)
        require(f"authorization {self.name}: namespace", self.namespace)
        if self.selector is not None:
            if self.scope is not Scope.WORKLOAD_SELECTOR:
                raise MeshError(
                    f"authorization {self.key}: a selector needs scope WORKLOAD_SELECTOR"
                )
            object.__setattr__(self, "selector", frozen_map(self.selector))

    def __hash__(self) -> int:
        return hash(("authorization", self.namespace, self.name))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class MtlsMode(enum.Enum):
    UNSET = "UNSET"  # inherit from the parent level
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


@dataclass(frozen=True)
class PeerAuthentication:
    """PeerAuthentication reduced to what the node proxy enforces. `port_modes` is keyed by
    the workload's (target) port, as in Istio's `portLevelMtls`."""

    name: str
    namespace: str
    mode: MtlsMode = MtlsMode.UNSET
    selector: Mapping[str, str] | None = None
    port_modes: Mapping[int, MtlsMode] = field(default_factory=dict)
    #: creation time: of conflicting policies at one level the oldest wins (as istiod)
    created: datetime | None = None

    def __post_init__(self) -> None:
        require("peer authentication name", self.name)
        require(f"peer authentication {self.name}: namespace", self.namespace)
        if self.port_modes and self.selector is None:
            raise MeshError(
                f"peer authentication {self.key}: port-level mTLS needs a workload selector"
            )
        for p in self.port_modes:
            check_port(f"peer authentication {self.key}", p)
        if self.selector is not None:
            object.__setattr__(self, "selector", frozen_map(self.selector))
        object.__setattr__(self, "port_modes", MappingProxyType(dict(self.port_modes)))

    def __hash__(self) -> int:
        return hash(("peerauthentication", self.namespace, self.name))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Kubernetes matchLabels: every selector label present with the same value."""
    return all(labels.get(k) == v for k, v in selector.items())
