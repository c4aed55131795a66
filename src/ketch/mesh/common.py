"""Shared pieces of the mesh model: address types, defaults, validation helpers and the
model's exception."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import MappingProxyType
from typing import TypeAlias

IpAddr: TypeAlias = IPv4Address | IPv6Address
IpNet: TypeAlias = IPv4Network | IPv6Network

DEFAULT_ROOT_NAMESPACE = "istio-system"
DEFAULT_TRUST_DOMAIN = "cluster.local"


class MeshError(ValueError):
    """A workload, service or policy is invalid (the object cannot be built)."""


def frozen_map(m: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(m))


def check_port(what: str, port: int, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise MeshError(f"{what}: port {port!r} is not in {low}..65535")


def require(what: str, value: str) -> None:
    if not value:
        raise MeshError(f"{what} must not be empty")


def format_authority(ip: IpAddr, port: int) -> str:
    """HBONE `:authority` form: `ip:port`, IPv6 as `[addr]:port`."""
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
