"""The `istio.io/debug/syncz` answer: what `istioctl proxy-status` shows per connected proxy.

istioctl sends a (state-of-the-world) `DiscoveryRequest` of type `SYNCZ_TYPE` to the control
plane's xDS port; istiod answers one `envoy.service.status.v3.ClientConfig` per connected
proxy: the node id, metadata `CLUSTER_ID`, `NAMESPACE`, `ISTIO_VERSION`, and per type URL a
`GenericXdsConfig` with the sync state (istiod `pilot/pkg/xds/statusgen.go`). Built here from
`ServerStream.status`; the server decides which streams to include.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse
from envoy.service.status.v3.csds_pb2 import ClientConfig, ConfigStatus
from google.protobuf import any_pb2

from ketch.xds.session import ServerStream, SyncState
from ketch.xds.types import NODE_PROXY_TYPES, SYNCZ_TYPE

__all__ = ["client_config", "syncz_response"]

#: The node metadata istiod copies into the syncz answer.
_METADATA_KEYS = ("CLUSTER_ID", "NAMESPACE", "ISTIO_VERSION")
_STATUS = {
    SyncState.SYNCED: "SYNCED",
    SyncState.STALE: "STALE",
    SyncState.NOT_SENT: "NOT_SENT",
    SyncState.ERROR: "ERROR",
}


def client_config(stream: ServerStream, types: Sequence[str] = NODE_PROXY_TYPES) -> ClientConfig:
    """One proxy's sync status. A type the proxy never subscribed to is NOT_SENT, or UNKNOWN
    for a ztunnel (istiod: ztunnel does not watch every type)."""
    out = ClientConfig()
    node = stream.node
    is_ztunnel = False
    if node is not None:
        out.node.id = node.id
        is_ztunnel = node.id.startswith("ztunnel~")
        for key in _METADATA_KEYS:
            if key in node.metadata.fields:
                out.node.metadata.fields[key].CopyFrom(node.metadata.fields[key])
    for type_url in types:
        st = stream.status(type_url)
        cfg = out.generic_xds_configs.add(type_url=type_url, version_info=st.sent_version)
        if stream.subscription(type_url) is None and is_ztunnel:
            cfg.config_status = ConfigStatus.Value("UNKNOWN")
        else:
            cfg.config_status = ConfigStatus.Value(_STATUS[st.state])
        if st.sent_at is not None:
            cfg.last_updated.FromNanoseconds(int(st.sent_at * 1e9))
        if st.state is SyncState.ERROR:
            cfg.error_state.details = st.error
    return out


def syncz_response(
    streams: Iterable[ServerStream], *, nonce: str = "", types: Sequence[str] = NODE_PROXY_TYPES
) -> DiscoveryResponse:
    """The answer to a syncz request: one ClientConfig per stream that has identified itself
    (istiod skips connections without a node, such as istioctl's own)."""
    resp = DiscoveryResponse(type_url=SYNCZ_TYPE, nonce=nonce)
    for stream in streams:
        if stream.node is None:
            continue
        packed = any_pb2.Any()
        packed.Pack(client_config(stream, types))
        resp.resources.append(packed)
    return resp
