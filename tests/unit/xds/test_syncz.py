"""The syncz answer istioctl proxy-status reads: per type the sync state, the NACK text."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest
from envoy.service.status.v3.csds_pb2 import ClientConfig, ConfigStatus
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from ketch.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    SYNCZ_TYPE,
    ServerStream,
    client_config,
    syncz_response,
)


def _node() -> Node:
    md = struct_pb2.Struct()
    md.update(
        {
            "CLUSTER_ID": "Kubernetes",
            "NAMESPACE": "istio-system",
            "NAME": "z",
            "ISTIO_VERSION": "1.28",
        }
    )
    return Node(id="ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local", metadata=md)


def test_client_config_per_type_states() -> None:
    n = iter(range(1, 100))
    s = ServerStream(nonces=lambda: f"n{next(n)}", clock=lambda: 1700000000.5)
    s.on_request(DeltaDiscoveryRequest(type_url=ADDRESS_TYPE, node=_node()))
    s.respond(ADDRESS_TYPE, {}, version="2026-12-02T09:00:00Z/1")
    s.on_request(
        DeltaDiscoveryRequest(
            type_url=ADDRESS_TYPE,
            response_nonce="n1",
            error_detail=status_pb2.Status(message="x: bad"),
        )
    )
    cfg = client_config(s)
    assert cfg.node.id.startswith("ztunnel~")
    assert set(cfg.node.metadata.fields) == {"CLUSTER_ID", "NAMESPACE", "ISTIO_VERSION"}
    by_type = {c.type_url: c for c in cfg.generic_xds_configs}
    addr = by_type[ADDRESS_TYPE]
    assert ConfigStatus.Name(addr.config_status) == "ERROR"
    assert addr.error_state.details == "x: bad"
    assert addr.version_info == "2026-12-02T09:00:00Z/1"
    assert addr.last_updated.seconds == 1700000000
    # ztunnel never subscribed to it yet: UNKNOWN, as istiod.
    assert ConfigStatus.Name(by_type[AUTHORIZATION_TYPE].config_status) == "UNKNOWN"


def test_syncz_response_skips_streams_without_a_node() -> None:
    named = ServerStream()
    named.on_request(DeltaDiscoveryRequest(type_url=ADDRESS_TYPE, node=_node()))
    anonymous = ServerStream()
    resp = syncz_response([named, anonymous], nonce="s1")
    assert resp.type_url == SYNCZ_TYPE
    assert len(resp.resources) == 1
    cfg = ClientConfig()
    assert resp.resources[0].Unpack(cfg)
    assert ConfigStatus.Name(cfg.generic_xds_configs[0].config_status) == "NOT_SENT"
