"""Convert and session together, as the control plane and a node proxy will use them: mesh
objects -> snapshot -> ServerStream -> ClientStream -> decode -> the same mesh objects, and
a bad resource becomes ztunnel's NACK text in the server's sync status."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from envoy.config.core.v3.base_pb2 import Node
from google.protobuf import any_pb2

from ketch.mesh import (
    Action,
    Authorization,
    Scope,
    Service,
    ServicePort,
    Workload,
)
from ketch.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    ClientStream,
    ServerStream,
    SyncState,
    decode_all,
    snapshot,
)

WEB = Workload(
    uid="Kubernetes//Pod/default/web-1",
    name="web-1",
    namespace="default",
    addresses=(ipaddress.ip_address("10.0.0.5"),),
    service_account="web",
    services={"default/web.default.svc.cluster.local": {80: 8080}},
    authorization_policies=("default/allow-web",),
)
SVC = Service(
    "web",
    "default",
    "web.default.svc.cluster.local",
    vips=(ipaddress.ip_address("10.96.0.10"),),
    ports=(ServicePort(80, 8080),),
)
POL = Authorization("allow-web", "default", Scope.WORKLOAD_SELECTOR, Action.ALLOW)


class NodeProxyState:
    """What the node proxy keeps: decoded objects by resource name."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, object]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}

    def apply(
        self, type_url: str, upserts: list[tuple[str, any_pb2.Any]], removals: list[str]
    ) -> Mapping[str, str]:
        good, bad = decode_all(type_url, upserts)
        self.objects[type_url].update(good)
        for name in removals:
            self.objects[type_url].pop(name, None)
        return bad


def test_push_decode_nack_and_recover() -> None:
    server = ServerStream()
    client = ClientStream()
    proxy = NodeProxyState()
    addresses = snapshot([WEB, SVC])
    policies = snapshot([POL])
    broken = dict(addresses)
    broken["Kubernetes//Pod/default/bad"] = (
        "v1",
        any_pb2.Any(type_url=ADDRESS_TYPE, value=b"\xff"),
    )
    config = {ADDRESS_TYPE: broken, AUTHORIZATION_TYPE: policies}

    for req in client.initial_requests(
        Node(id="ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local")
    ):
        for type_url in server.on_request(req):
            resp = server.respond(type_url, config[type_url])
            assert resp is not None
            assert server.on_request(client.on_response(resp, proxy.apply)) == []

    # The bad resource is NACKed with ztunnel's text; the good ones are applied.
    st = server.status(ADDRESS_TYPE)
    assert st.state is SyncState.ERROR
    assert st.error.startswith("Kubernetes//Pod/default/bad: cannot decode istio.workload.Address")
    assert server.status(AUTHORIZATION_TYPE).state is SyncState.SYNCED
    assert proxy.objects[ADDRESS_TYPE] == {WEB.uid: WEB, SVC.key: SVC}
    assert proxy.objects[AUTHORIZATION_TYPE] == {POL.key: POL}
    assert not client.ready()

    # The control plane drops the bad resource: the retry removes it, the client ACKs.
    resp = server.respond(ADDRESS_TYPE, addresses)
    assert resp is not None
    assert list(resp.removed_resources) == ["Kubernetes//Pod/default/bad"]
    assert {r.name for r in resp.resources} == {WEB.uid, SVC.key}  # resent after the NACK
    server.on_request(client.on_response(resp, proxy.apply))
    assert server.status(ADDRESS_TYPE).state is SyncState.SYNCED
    assert client.ready()
    assert dict(client.versions(ADDRESS_TYPE)) == {n: v for n, (v, _) in addresses.items()}
