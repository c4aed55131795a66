"""Small builders for Service and EndpointSlice objects (validated through the api models)."""

from __future__ import annotations

from typing import Any

from ketch.api.core import Service
from ketch.api.discovery import EndpointSlice


def service(
    name: str,
    ns: str = "shop",
    ip: str | None = "10.96.0.20",
    ports: list[dict[str, Any]] | None = None,
) -> Service:
    spec: dict[str, Any] = {
        "ports": ports if ports is not None else [{"name": "http", "port": 80}],
    }
    if ip is not None:
        spec["clusterIP"] = ip
    return Service.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
    )


def endpoint(ip: str, *, ready: bool | None = True, hostname: str | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    if hostname is not None:
        ep["hostname"] = hostname
    return ep


def eps(
    svc: str,
    endpoints: list[dict[str, Any]],
    ports: list[dict[str, Any]] | None = None,
    *,
    ns: str = "shop",
    name: str | None = None,
    family: str = "IPv4",
) -> EndpointSlice:
    return EndpointSlice.model_validate(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name or f"{svc}-abcde",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": svc},
            },
            "addressType": family,
            "endpoints": endpoints,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080}],
        }
    )
