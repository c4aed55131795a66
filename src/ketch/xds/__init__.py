"""The xDS wire contract between the control plane and the node proxies (delta ADS carrying
`istio.workload.Address` and `istio.security.Authorization`, as istiod and ztunnel), sans-IO:

- `types`: type URLs, the syncz debug type, the exception family (`Rejected`, `UnknownType`).
- `convert`: mesh model <-> protos, validated at the edge; resource names and versions.
- `session`: both ends of one delta ADS stream as state machines (`ServerStream`,
  `ClientStream`): subscriptions, what the client holds, nonces, ACK/NACK, sync status.
- `node`: the proxy's `Node` (ztunnel's id and metadata) and its parse.
- `syncz`: the `istio.io/debug/syncz` answer (istioctl proxy-status) from the streams.

The gRPC server and client that carry these messages live with their roles and build on this
package. Imports: `ketch.mesh`, `ketch.identity.spiffe`, `ketch.util` only
(docs/architecture.md). See docs/xds.md.
"""

from __future__ import annotations

from ketch.xds.convert import (
    AddressObject,
    Snapshot,
    address_from_proto,
    authorization_from_proto,
    authorization_to_proto,
    decode_all,
    resource_name,
    service_to_proto,
    snapshot,
    to_address,
    to_any,
    version_of,
    workload_to_proto,
)
from ketch.xds.node import InvalidNode, NodeInfo, parse_node, ztunnel_node
from ketch.xds.session import (
    Apply,
    ClientStream,
    ServerStream,
    Subscription,
    SyncState,
    TypeStatus,
    format_nack,
)
from ketch.xds.syncz import client_config, syncz_response
from ketch.xds.types import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    NODE_PROXY_TYPES,
    SYNCZ_TYPE,
    WORKLOAD_TYPE,
    Rejected,
    UnknownType,
    XdsError,
)

__all__ = [
    "ADDRESS_TYPE",
    "AUTHORIZATION_TYPE",
    "NODE_PROXY_TYPES",
    "SYNCZ_TYPE",
    "WORKLOAD_TYPE",
    "AddressObject",
    "Apply",
    "ClientStream",
    "InvalidNode",
    "NodeInfo",
    "Rejected",
    "ServerStream",
    "Snapshot",
    "Subscription",
    "SyncState",
    "TypeStatus",
    "UnknownType",
    "XdsError",
    "address_from_proto",
    "authorization_from_proto",
    "authorization_to_proto",
    "client_config",
    "decode_all",
    "format_nack",
    "parse_node",
    "resource_name",
    "service_to_proto",
    "snapshot",
    "syncz_response",
    "to_address",
    "to_any",
    "version_of",
    "workload_to_proto",
    "ztunnel_node",
]
