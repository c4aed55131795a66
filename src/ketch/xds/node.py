"""The `Node` a node proxy sends in its first request, and the control plane's parse of it.

ztunnel (`src/xds/client.rs`): `Node.id` = `ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~
<POD_NAMESPACE>.svc.cluster.local`; `Node.metadata` holds `NAME`, `NAMESPACE`,
`INSTANCE_IPS`, `NODE_NAME` and the `ISTIO_META_*` environment with the prefix stripped
(e.g. `CLUSTER_ID`, `ISTIO_VERSION`). istiod reads the proxy type from the id's first field
(`pilot/pkg/model/proxy.go`: `<type>~<ip>~<pod>.<namespace>~<domain>`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node

from ketch.xds.types import XdsError

__all__ = ["InvalidNode", "NodeInfo", "parse_node", "ztunnel_node"]

ZTUNNEL = "ztunnel"


class InvalidNode(XdsError):
    """The first request's `Node` cannot be understood (the stream is refused)."""


@dataclass(frozen=True)
class NodeInfo:
    proxy_type: str  # "ztunnel", "sidecar", "router", ...
    ip: str
    pod_name: str
    namespace: str
    dns_domain: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def cluster_id(self) -> str:
        return self.metadata.get("CLUSTER_ID", "")


def ztunnel_node(
    *,
    instance_ip: str,
    pod_name: str,
    pod_namespace: str,
    node_name: str = "",
    meta: Mapping[str, str] | None = None,
) -> Node:
    """ztunnel's Node. `meta`: the `ISTIO_META_*` values, prefix stripped."""
    node = Node(
        id=f"{ZTUNNEL}~{instance_ip}~{pod_name}.{pod_namespace}~{pod_namespace}.svc.cluster.local"
    )
    node.metadata.update(
        {
            "NAME": pod_name,
            "NAMESPACE": pod_namespace,
            "INSTANCE_IPS": instance_ip,
            "NODE_NAME": node_name,
            **dict(meta or {}),
        }
    )
    return node


def parse_node(node: Node) -> NodeInfo:
    """Split `Node.id`; string metadata values are kept (others, e.g. ISTIO_METAJSON_*
    values, are skipped)."""
    parts = node.id.split("~")
    if len(parts) != 4 or not all(parts[:2]):
        raise InvalidNode(
            f"node id {node.id!r} is not <type>~<ip>~<pod>.<namespace>~<domain> "
            "(is the proxy an Istio-compatible node proxy?)"
        )
    proxy_type, ip, pod_ns, domain = parts
    pod_name, _, namespace = pod_ns.partition(".")
    metadata = {
        key: value.string_value
        for key, value in node.metadata.fields.items()
        if value.WhichOneof("kind") == "string_value"
    }
    return NodeInfo(proxy_type, ip, pod_name, namespace, domain, metadata)
