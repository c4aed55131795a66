"""Our .proto files carry Istio's package, message names and field numbers (XDS.md section
8): a wrong number would silently garble what a real istiod or ztunnel reads."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from ketch.proto.gen.istio.security import authorization_pb2 as sec
from ketch.proto.gen.istio.workload import workload_pb2 as wl

FIELDS: list[tuple[Descriptor, dict[str, int]]] = [
    (wl.Address.DESCRIPTOR, {"workload": 1, "service": 2}),
    (
        wl.Workload.DESCRIPTOR,
        {
            "uid": 20,
            "name": 1,
            "namespace": 2,
            "addresses": 3,
            "hostname": 21,
            "network": 4,
            "tunnel_protocol": 5,
            "trust_domain": 6,
            "service_account": 7,
            "waypoint": 8,
            "network_gateway": 19,
            "node": 9,
            "canonical_name": 10,
            "canonical_revision": 11,
            "workload_type": 12,
            "workload_name": 13,
            "native_tunnel": 14,
            "application_tunnel": 23,
            "services": 22,
            "authorization_policies": 16,
            "status": 17,
            "cluster_id": 18,
            "locality": 24,
            "network_mode": 25,
            "extensions": 26,
            "capacity": 27,
        },
    ),
    (
        wl.Service.DESCRIPTOR,
        {
            "name": 1,
            "namespace": 2,
            "hostname": 3,
            "addresses": 4,
            "ports": 5,
            "subject_alt_names": 6,
            "waypoint": 7,
            "load_balancing": 8,
            "ip_families": 9,
            "extensions": 10,
            "canonical": 11,
            "ingress_use_waypoint": 12,
            "weighted_waypoints": 13,
            "visibility": 14,
        },
    ),
    (wl.GatewayAddress.DESCRIPTOR, {"hostname": 1, "address": 2, "hbone_mtls_port": 3}),
    (wl.NamespacedHostname.DESCRIPTOR, {"namespace": 1, "hostname": 2}),
    (wl.NetworkAddress.DESCRIPTOR, {"network": 1, "address": 2, "length": 3}),
    (wl.PortList.DESCRIPTOR, {"ports": 1}),
    (wl.Port.DESCRIPTOR, {"service_port": 1, "target_port": 2, "app_protocol": 3}),
    (wl.LoadBalancing.DESCRIPTOR, {"routing_preference": 1, "mode": 2, "health_policy": 3}),
    (wl.Locality.DESCRIPTOR, {"region": 1, "zone": 2, "subzone": 3}),
    (wl.ApplicationTunnel.DESCRIPTOR, {"protocol": 1, "port": 2}),
    (wl.WeightedWaypoint.DESCRIPTOR, {"destination": 1, "weight": 2}),
    (wl.Extension.DESCRIPTOR, {"name": 1, "config": 2}),
    (
        sec.Authorization.DESCRIPTOR,
        {
            "name": 1,
            "namespace": 2,
            "scope": 3,
            "action": 4,
            "rules": 5,
            "dry_run": 6,
            "extensions": 7,
        },
    ),
    (sec.Rule.DESCRIPTOR, {"clauses": 1}),
    (sec.Clause.DESCRIPTOR, {"matches": 2}),
    (
        sec.Match.DESCRIPTOR,
        {
            "namespaces": 1,
            "not_namespaces": 2,
            "principals": 3,
            "not_principals": 4,
            "source_ips": 5,
            "not_source_ips": 6,
            "destination_ips": 7,
            "not_destination_ips": 8,
            "destination_ports": 9,
            "not_destination_ports": 10,
            "service_accounts": 11,
            "not_service_accounts": 12,
            "extensions": 13,
        },
    ),
    (sec.Address.DESCRIPTOR, {"address": 1, "length": 2}),
    (sec.ServiceAccountMatch.DESCRIPTOR, {"namespace": 1, "serviceAccount": 2}),
    (sec.StringMatch.DESCRIPTOR, {"exact": 1, "prefix": 2, "suffix": 3, "presence": 4}),
]

ENUMS: list[tuple[EnumDescriptor, dict[str, int]]] = [
    (wl.TunnelProtocol.DESCRIPTOR, {"NONE": 0, "HBONE": 1, "LEGACY_ISTIO_MTLS": 2}),
    (wl.WorkloadStatus.DESCRIPTOR, {"HEALTHY": 0, "UNHEALTHY": 1}),
    (wl.WorkloadType.DESCRIPTOR, {"DEPLOYMENT": 0, "CRONJOB": 1, "POD": 2, "JOB": 3}),
    (wl.NetworkMode.DESCRIPTOR, {"STANDARD": 0, "HOST_NETWORK": 1}),
    (wl.IPFamilies.DESCRIPTOR, {"AUTOMATIC": 0, "IPV4_ONLY": 1, "IPV6_ONLY": 2, "DUAL": 3}),
    (
        wl.AppProtocol.DESCRIPTOR,
        {"UNKNOWN": 0, "HTTP11": 1, "HTTP2": 2, "GRPC": 3, "TCP": 4, "TLS": 5},
    ),
    (wl.ServiceVisibility.DESCRIPTOR, {"PUBLIC": 0, "NAMESPACE": 1}),
    (
        wl.LoadBalancing.Scope.DESCRIPTOR,
        {
            "UNSPECIFIED_SCOPE": 0,
            "REGION": 1,
            "ZONE": 2,
            "SUBZONE": 3,
            "NODE": 4,
            "CLUSTER": 5,
            "NETWORK": 6,
        },
    ),
    (
        wl.LoadBalancing.Mode.DESCRIPTOR,
        {"UNSPECIFIED_MODE": 0, "STRICT": 1, "FAILOVER": 2, "PASSTHROUGH": 3},
    ),
    (wl.LoadBalancing.HealthPolicy.DESCRIPTOR, {"ONLY_HEALTHY": 0, "ALLOW_ALL": 1}),
    (wl.ApplicationTunnel.Protocol.DESCRIPTOR, {"NONE": 0, "PROXY": 1}),
    (sec.Scope.DESCRIPTOR, {"GLOBAL": 0, "NAMESPACE": 1, "WORKLOAD_SELECTOR": 2}),
    (sec.Action.DESCRIPTOR, {"ALLOW": 0, "DENY": 1}),
]


@pytest.mark.parametrize(("message", "numbers"), FIELDS, ids=[m.full_name for m, _ in FIELDS])
def test_field_numbers(message: Descriptor, numbers: dict[str, int]) -> None:
    assert {f.name: f.number for f in message.fields} == numbers


@pytest.mark.parametrize(("enum", "numbers"), ENUMS, ids=[e.full_name for e, _ in ENUMS])
def test_enum_numbers(enum: EnumDescriptor, numbers: dict[str, int]) -> None:
    assert {v.name: v.number for v in enum.values} == numbers


def test_packages_and_oneofs() -> None:
    assert wl.Address.DESCRIPTOR.full_name == "istio.workload.Address"
    assert sec.Authorization.DESCRIPTOR.full_name == "istio.security.Authorization"
    assert [f.name for f in wl.Address.DESCRIPTOR.oneofs_by_name["type"].fields] == [
        "workload",
        "service",
    ]
    assert [f.name for f in wl.GatewayAddress.DESCRIPTOR.oneofs_by_name["destination"].fields] == [
        "hostname",
        "address",
    ]
    assert [f.name for f in sec.StringMatch.DESCRIPTOR.oneofs_by_name["match_type"].fields] == [
        "exact",
        "prefix",
        "suffix",
        "presence",
    ]
    services = wl.Workload.DESCRIPTOR.fields_by_name["services"]
    assert services.message_type.GetOptions().map_entry
    assert (
        wl.Workload.DESCRIPTOR.fields_by_name["capacity"].message_type.full_name
        == "google.protobuf.UInt32Value"
    )
    assert wl.NetworkAddress.DESCRIPTOR.fields_by_name["length"].has_presence
