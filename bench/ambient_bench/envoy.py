"""Envoy bootstraps for the two Envoy legs, rendered from the YAML templates in `envoy/`.

Each template is a complete Envoy bootstrap except for the per-port parts (listeners,
clusters, virtual hosts), which come from small per-port templates and are appended once
per benchmarked port. Values are substituted with `string.Template` (`${name}`), so the
templates stay plain Envoy YAML; the result is checked to be YAML and written as JSON
(Envoy reads both).
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).with_name("envoy")

#: envoy-mtls: the server-side Envoy terminates TLS for app port P on P + this offset
#: (there is no transparent capture in the Envoy legs, so each port needs its own listener).
MTLS_INBOUND_OFFSET = 10000


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one workload identity, as Envoy reads them."""

    chain: Path
    key: Path
    roots: Path


def _load(name: str, values: Mapping[str, object]) -> Any:
    text = (TEMPLATES / f"{name}.yaml").read_text()
    return yaml.safe_load(string.Template(text).substitute({k: str(v) for k, v in values.items()}))


def _per_port(name: str, ports: Iterable[int], values: Mapping[str, object]) -> list[Any]:
    return [
        _load(name, {**values, "port": p, "inbound_port": p + MTLS_INBOUND_OFFSET}) for p in ports
    ]


def _tls_values(tls: TlsFiles) -> dict[str, object]:
    return {"chain": tls.chain, "key": tls.key, "roots": tls.roots}


def hbone_client(ports: Iterable[int], server_ip: str, server_id: str, tls: TlsFiles) -> Any:
    values = {"server_ip": server_ip, "server_id": server_id, **_tls_values(tls)}
    doc = _load("hbone-client", values)
    doc["static_resources"]["listeners"] = _per_port("hbone-client-listener", ports, values)
    return doc


def hbone_server(ports: Iterable[int], server_ip: str, trust_domain: str, tls: TlsFiles) -> Any:
    ports = list(ports)
    values = {"server_ip": server_ip, "trust_domain": trust_domain, **_tls_values(tls)}
    doc = _load("hbone-server", values)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["route_config"]["virtual_hosts"] = _per_port(
        "hbone-server-vhost", ports, values
    )
    doc["static_resources"]["clusters"] = _per_port("app-cluster", ports, values)
    return doc


def mtls_client(ports: Iterable[int], server_ip: str, server_id: str, tls: TlsFiles) -> Any:
    ports = list(ports)
    values = {"server_ip": server_ip, "server_id": server_id, **_tls_values(tls)}
    doc = _load("mtls-client", values)
    doc["static_resources"]["listeners"] = _per_port("mtls-client-listener", ports, values)
    doc["static_resources"]["clusters"] = _per_port("mtls-client-cluster", ports, values)
    return doc


def mtls_server(ports: Iterable[int], server_ip: str, trust_domain: str, tls: TlsFiles) -> Any:
    ports = list(ports)
    values = {"server_ip": server_ip, "trust_domain": trust_domain, **_tls_values(tls)}
    doc = _load("mtls-server", values)
    doc["static_resources"]["listeners"] = _per_port("mtls-server-listener", ports, values)
    doc["static_resources"]["clusters"] = _per_port("app-cluster", ports, values)
    return doc


def write(doc: Any, path: Path) -> Path:
    path.write_text(json.dumps(doc, indent=1))
    return path
