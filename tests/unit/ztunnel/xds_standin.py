"""STAND-IN, to be replaced when `ketch.xds` (branch `xds`) lands: a minimal
`ketch.xds.session.ClientStream` and `ketch.xds.convert` for the xDS client tests.

- `StandinSession`: versions held per type (sent as `initial_resource_versions` in each
  stream's first requests), ACK/NACK with `"<name>: <reason>; ..."`, `synced(type)` after the
  first response of a type.
- Resources are JSON in the `Any` (not istio.workload protos): `encode(obj)` /
  `decode_address` / `decode_authorization`; a decode error (e.g. a bad IP) raises
  `ValueError`, as `Rejected` would.

When `ketch.xds` lands: use `ClientStream` and `convert.address_from_proto` /
`authorization_from_proto` in the tests and delete this file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from ipaddress import ip_address
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from ketch.mesh import Action, Authorization, Rule, Scope, Service, ServicePort, Workload
from ketch.ztunnel.xds_state import ADDRESS_TYPE, AUTHORIZATION_TYPE, TYPES, ApplyFn


class StandinSession:
    def __init__(self, types: Sequence[str] = TYPES) -> None:
        self.types = tuple(types)
        self.versions: dict[str, dict[str, str]] = {t: {} for t in self.types}
        self._synced: set[str] = set()

    def initial_requests(self, node: Any) -> list[Any]:
        return [
            discovery_pb2.DeltaDiscoveryRequest(
                node=node, type_url=t, initial_resource_versions=self.versions[t]
            )
            for t in self.types
        ]

    def on_response(self, response: Any, apply: ApplyFn) -> Any:
        t = response.type_url
        rejected: Mapping[str, str] = apply(
            t, list(response.resources), list(response.removed_resources)
        )
        held = self.versions.setdefault(t, {})
        for name in response.removed_resources:
            held.pop(name, None)
        for r in response.resources:
            if r.name not in rejected:
                held[r.name] = r.version
        self._synced.add(t)
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=response.nonce)
        if rejected:
            req.error_detail.code = 3  # INVALID_ARGUMENT
            req.error_detail.message = "; ".join(f"{n}: {why}" for n, why in rejected.items())
        return req

    def synced(self, type_url: str) -> bool:
        return type_url in self._synced


def encode(obj: Workload | Service | Authorization | dict[str, Any]) -> any_pb2.Any:
    """A mesh object (or a raw dict, to make bad resources) as JSON in an `Any`."""
    if isinstance(obj, Workload):
        body: dict[str, Any] = {
            "workload": {
                "uid": obj.uid,
                "name": obj.name,
                "namespace": obj.namespace,
                "addresses": [str(a) for a in obj.addresses],
                "authorization_policies": list(obj.authorization_policies),
            }
        }
        t = ADDRESS_TYPE
    elif isinstance(obj, Service):
        body = {
            "service": {
                "name": obj.name,
                "namespace": obj.namespace,
                "hostname": obj.hostname,
                "vips": [str(v) for v in obj.vips],
                "ports": [[p.service_port, p.target_port] for p in obj.ports],
            }
        }
        t = ADDRESS_TYPE
    elif isinstance(obj, Authorization):
        body = {
            "name": obj.name,
            "namespace": obj.namespace,
            "scope": obj.scope.name,
            "action": obj.action.name,
            "match_all_rules": len(obj.rules),  # the stand-in carries only clause-less rules
        }
        t = AUTHORIZATION_TYPE
    else:
        body, t = obj, ADDRESS_TYPE
    return any_pb2.Any(type_url=t, value=json.dumps(body).encode())


def decode_address(a: any_pb2.Any) -> Workload | Service:
    body = json.loads(a.value)
    if "workload" in body:
        w = body["workload"]
        return Workload(
            uid=w["uid"],
            name=w["name"],
            namespace=w["namespace"],
            addresses=tuple(ip_address(x) for x in w["addresses"]),
            authorization_policies=tuple(w.get("authorization_policies", ())),
        )
    s = body["service"]
    return Service(
        name=s["name"],
        namespace=s["namespace"],
        hostname=s["hostname"],
        vips=tuple(ip_address(v) for v in s["vips"]),
        ports=tuple(ServicePort(p, t) for p, t in s["ports"]),
    )


def decode_authorization(a: any_pb2.Any) -> Authorization:
    body = json.loads(a.value)
    return Authorization(
        name=body["name"],
        namespace=body["namespace"],
        scope=Scope[body["scope"]],
        action=Action[body["action"]],
        rules=tuple(Rule() for _ in range(body.get("match_all_rules", 0))),
    )
