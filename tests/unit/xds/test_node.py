"""ztunnel's Node and the control plane's parse of it."""

from __future__ import annotations

import pytest
from envoy.config.core.v3.base_pb2 import Node

from ketch.xds import InvalidNode, parse_node, ztunnel_node


def test_ztunnel_node_round_trip() -> None:
    node = ztunnel_node(
        instance_ip="10.0.0.1",
        pod_name="ztunnel-abcde",
        pod_namespace="istio-system",
        node_name="kind-worker",
        meta={"CLUSTER_ID": "Kubernetes", "ISTIO_VERSION": "1.28.0"},
    )
    assert node.id == "ztunnel~10.0.0.1~ztunnel-abcde.istio-system~istio-system.svc.cluster.local"
    info = parse_node(node)
    assert (info.proxy_type, info.ip, info.pod_name, info.namespace, info.dns_domain) == (
        "ztunnel",
        "10.0.0.1",
        "ztunnel-abcde",
        "istio-system",
        "istio-system.svc.cluster.local",
    )
    assert info.cluster_id == "Kubernetes"
    assert info.metadata["NODE_NAME"] == "kind-worker"
    assert info.metadata["INSTANCE_IPS"] == "10.0.0.1"


@pytest.mark.parametrize("node_id", ["", "ztunnel", "ztunnel~10.0.0.1~x", "~~~", "a~b~c~d~e"])
def test_bad_node_ids(node_id: str) -> None:
    with pytest.raises(InvalidNode, match=r"is not <type>~<ip>~<pod>\.<namespace>~<domain>"):
        parse_node(Node(id=node_id))
