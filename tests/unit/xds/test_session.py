"""The delta ADS session state machines, driven with messages (no sockets): table tests of
each server/client rule, and a Hypothesis run of random interleavings."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from google.protobuf import any_pb2, wrappers_pb2
from google.rpc import status_pb2

from ketch.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    ClientStream,
    ServerStream,
    SyncState,
    UnknownType,
)

A = ADDRESS_TYPE
P = AUTHORIZATION_TYPE


def res(value: str) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(wrappers_pb2.StringValue(value=value))
    return packed


def snap(**versions: str) -> dict[str, tuple[str, any_pb2.Any]]:
    return {name: (v, res(f"{name}@{v}")) for name, v in versions.items()}


def counter_nonces() -> ServerStream:
    n = iter(range(1, 10_000))
    return ServerStream(nonces=lambda: f"n{next(n)}", clock=lambda: 42.0)


def req(type_url: str = A, **kw: object) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(type_url=type_url, **kw)


def names(resp: DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in resp.resources]


# -- server ---------------------------------------------------------------------------------


def test_first_request_is_wildcard_and_answered_even_when_empty() -> None:
    s = counter_nonces()
    assert s.on_request(req(node=Node(id="ztunnel~1.2.3.4~z.ns~ns.svc.cluster.local"))) == [A]
    assert s.node is not None
    assert s.node.id.startswith("ztunnel~")
    sub = s.subscription(A)
    assert sub is not None
    assert sub.wildcard
    resp = s.respond(A, {})
    assert resp is not None
    assert resp.nonce == "n1"
    assert list(resp.resources) == []
    assert s.status(A).state is SyncState.STALE
    assert s.respond(A, {}) is None  # nothing owed, nothing new


@pytest.mark.parametrize(
    ("subscribe", "unsubscribe", "wildcard", "subscribed"),
    [
        ([], [], True, set()),
        (["*"], [], True, set()),
        (["*"], ["*"], False, set()),  # ztunnel on-demand: "subscribe to nothing"
        (["a", "b"], [], False, {"a", "b"}),
        (["*", "a"], [], True, {"a"}),
    ],
)
def test_first_request_subscription(
    subscribe: list[str], unsubscribe: list[str], wildcard: bool, subscribed: set[str]
) -> None:
    s = counter_nonces()
    s.on_request(req(resource_names_subscribe=subscribe, resource_names_unsubscribe=unsubscribe))
    sub = s.subscription(A)
    assert sub is not None
    assert (sub.wildcard, set(sub.names)) == (wildcard, subscribed)


def test_initial_resource_versions_skip_what_the_client_holds() -> None:
    s = counter_nonces()
    s.on_request(req(initial_resource_versions={"a": "1", "b": "1", "gone": "1"}))
    resp = s.respond(A, snap(a="1", b="2", c="1"))
    assert resp is not None
    assert names(resp) == ["b", "c"]
    assert list(resp.removed_resources) == ["gone"]


def test_ack_marks_synced_and_stale_nonce_is_ignored() -> None:
    s = counter_nonces()
    s.on_request(req())
    s.respond(A, snap(a="1"))  # n1
    s.respond(A, snap(a="2"))  # n2
    assert s.on_request(req(response_nonce="n1")) == []  # old but outstanding: ACK of n1
    assert s.status(A).state is SyncState.STALE
    assert s.on_request(req(response_nonce="bogus")) == []
    assert s.on_request(req(response_nonce="n2")) == []
    st = s.status(A)
    assert (st.state, st.sent_nonce, st.acked_nonce, st.sent_at) == (
        SyncState.SYNCED,
        "n2",
        "n2",
        42.0,
    )
    # An answered older nonce is stale: ignored, subscription changes included.
    assert s.on_request(req(response_nonce="n1", resource_names_subscribe=["x"])) == []
    sub = s.subscription(A)
    assert sub is not None
    assert "x" not in sub.names
    # The latest nonce again carries subscription changes (as istiod takes them).
    assert s.on_request(req(response_nonce="n2", resource_names_subscribe=["x"])) == [A]
    assert s.status(A).state is SyncState.SYNCED


def test_nack_records_error_sends_nothing_and_resends_on_next_push() -> None:
    s = counter_nonces()
    s.on_request(req())
    s.respond(A, snap(a="1", b="1"))
    nack = req(response_nonce="n1", error_detail=status_pb2.Status(message="b: bad"))
    assert s.on_request(nack) == []
    st = s.status(A)
    assert (st.state, st.error) == (SyncState.ERROR, "b: bad")
    # The next push resends what that response carried (the client may lack it).
    resp = s.respond(A, snap(a="1", b="1"))
    assert resp is not None
    assert names(resp) == ["a", "b"]
    s.on_request(req(response_nonce=resp.nonce))
    assert s.status(A).state is SyncState.SYNCED
    assert s.status(A).error == ""


def test_stale_nack_is_ignored() -> None:
    s = counter_nonces()
    s.on_request(req())
    s.respond(A, snap(a="1"))
    s.on_request(req(response_nonce="n1"))
    s.on_request(req(response_nonce="n1", error_detail=status_pb2.Status(message="x")))
    assert s.status(A).state is SyncState.SYNCED


def test_unknown_type_is_an_error_to_report() -> None:
    s = counter_nonces()
    with pytest.raises(UnknownType, match="not served here"):
        s.on_request(req("type.googleapis.com/envoy.config.cluster.v3.Cluster"))
    with pytest.raises(UnknownType):
        s.respond("type.googleapis.com/nope", {})


def test_not_subscribed_and_not_sent() -> None:
    s = counter_nonces()
    assert s.respond(P, snap(a="1")) is None
    assert s.status(P).state is SyncState.NOT_SENT
    assert s.subscribed() == []


def test_full_push_removes_and_incremental_push_sends_changes() -> None:
    s = counter_nonces()
    s.on_request(req())
    s.respond(A, snap(a="1", b="1", c="1"))
    resp = s.respond(A, snap(a="1", b="2"))
    assert resp is not None
    assert (names(resp), list(resp.removed_resources)) == (["b"], ["c"])
    resp = s.respond(A, snap(d="1"), full=False, removed=["a", "never-held"])
    assert resp is not None
    assert (names(resp), list(resp.removed_resources)) == (["d"], ["a"])
    assert dict(s.held(A)) == {"b": "2", "d": "1"}


def test_on_demand_subscription_answers_the_name_or_its_absence() -> None:
    s = counter_nonces()
    s.on_request(req(resource_names_subscribe=["*"], resource_names_unsubscribe=["*"]))
    resp = s.respond(A, snap(a="1", b="1"))
    assert resp is not None
    assert names(resp) == []  # subscribed to nothing yet
    assert s.on_request(req(response_nonce="n1")) == []
    # A spontaneous lookup: subscribe one name that exists and one that does not.
    assert s.on_request(req(resource_names_subscribe=["b", "missing"])) == [A]
    resp = s.respond(A, snap(a="1", b="1"))
    assert resp is not None
    assert (names(resp), list(resp.removed_resources)) == (["b"], ["missing"])
    # Unsubscribing forgets the name: no removal is sent for it later.
    s.on_request(req(resource_names_unsubscribe=["b"]))
    assert s.respond(A, {}) is None


# -- client ---------------------------------------------------------------------------------


def test_initial_requests_wildcard_then_versions_after_reconnect() -> None:
    c = ClientStream(on_demand=[A])
    node = Node(id="ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local")
    first = c.initial_requests(node)
    assert [r.type_url for r in first] == [A, P]
    assert (list(first[0].resource_names_subscribe), list(first[0].resource_names_unsubscribe)) == (
        ["*"],
        ["*"],
    )
    assert list(first[1].resource_names_subscribe) == []
    assert all(r.node.id == node.id for r in first)
    c.on_response(
        DeltaDiscoveryResponse(
            type_url=P, nonce="n1", resources=[{"name": "ns/p", "version": "v1"}]
        ),
        lambda t, u, r: {},
    )
    again = c.initial_requests(node)
    assert dict(again[1].initial_resource_versions) == {"ns/p": "v1"}
    assert c.demand(A, ["/10.0.0.5"]).resource_names_subscribe == ["/10.0.0.5"]


def test_client_acks_and_nacks_as_ztunnel() -> None:
    c = ClientStream()
    assert not c.synced(A)
    resp = DeltaDiscoveryResponse(
        type_url=A,
        nonce="n1",
        resources=[
            {"name": "good", "version": "1", "resource": res("g")},
            {"name": "bad1", "version": "1", "resource": res("x")},
            {"name": "bad2", "version": "1", "resource": res("y")},
        ],
    )
    seen: list[tuple[str, list[str], list[str]]] = []

    def apply(t: str, ups: list[tuple[str, any_pb2.Any]], rms: list[str]) -> Mapping[str, str]:
        seen.append((t, [n for n, _ in ups], rms))
        return {"bad2": "unknown tunnel_protocol value 7", "bad1": "empty uid"}

    nack = c.on_response(resp, apply)
    assert nack.response_nonce == "n1"
    assert nack.error_detail.message == "bad1: empty uid; bad2: unknown tunnel_protocol value 7"
    assert seen == [(A, ["good", "bad1", "bad2"], [])]
    assert c.versions(A) == {"good": "1"}  # the good one stays applied
    assert not c.synced(A)
    ack = c.on_response(
        DeltaDiscoveryResponse(type_url=A, nonce="n2", removed_resources=["good"]),
        lambda t, u, r: {},
    )
    assert ack.response_nonce == "n2"
    assert not ack.HasField("error_detail")
    assert c.versions(A) == {}
    assert c.synced(A)
    assert not c.ready()  # Authorization not synced yet


def test_client_nacks_an_unsubscribed_type() -> None:
    reply = ClientStream().on_response(
        DeltaDiscoveryResponse(type_url="type.googleapis.com/x", nonce="n"), lambda t, u, r: {}
    )
    assert "was not subscribed" in reply.error_detail.message


def test_on_demand_by_alias_and_istiods_additions() -> None:
    s = counter_nonces()
    s.on_request(req(resource_names_subscribe=["*"], resource_names_unsubscribe=["*"]))
    s.respond(A, {})
    s.on_request(req(response_nonce="n1"))
    pods = snap(**{"Kubernetes//Pod/ns/a": "1", "Kubernetes//Pod/ns/b": "1", "ns/svc": "1"})
    aliases = {"Kubernetes//Pod/ns/a": ["/10.0.0.5"], "ns/svc": ["/10.96.0.1"]}
    # Look up a workload by IP: it is answered under its uid, the alias listed.
    assert s.on_request(req(resource_names_subscribe=["/10.0.0.5"])) == [A]
    resp = s.respond(A, pods, aliases=aliases)
    assert resp is not None
    assert [(r.name, list(r.aliases)) for r in resp.resources] == [
        ("Kubernetes//Pod/ns/a", ["/10.0.0.5"])
    ]
    assert list(resp.removed_resources) == []
    s.on_request(req(response_nonce=resp.nonce))
    # A VIP lookup: istiod adds the pods behind it (`also`).
    s.on_request(req(resource_names_subscribe=["/10.96.0.1"]))
    resp = s.respond(A, pods, aliases=aliases, also=["Kubernetes//Pod/ns/b"])
    assert resp is not None
    assert names(resp) == ["Kubernetes//Pod/ns/b", "ns/svc"]
    # When b no longer backs the VIP, the next full push removes it.
    resp = s.respond(A, pods, aliases=aliases)
    assert resp is not None
    assert (names(resp), list(resp.removed_resources)) == ([], ["Kubernetes//Pod/ns/b"])


def test_on_demand_client_resubscribes_after_reconnect() -> None:
    c = ClientStream(on_demand=[A])
    node = Node(id="ztunnel~10.0.0.1~z.ns~ns.svc.cluster.local")
    c.initial_requests(node)
    assert list(c.demand(A, ["/10.0.0.5"]).resource_names_subscribe) == ["/10.0.0.5"]
    c.on_response(
        DeltaDiscoveryResponse(
            type_url=A,
            nonce="n1",
            resources=[{"name": "uid-a", "version": "1", "aliases": ["/10.0.0.5"]}],
        ),
        lambda t, u, r: {},
    )
    again = c.initial_requests(node)[0]
    assert list(again.resource_names_subscribe) == ["/10.0.0.5"]
    assert list(again.resource_names_unsubscribe) == []
    assert dict(again.initial_resource_versions) == {"uid-a": "1"}
    # A new server stream keeps what the client holds (nothing to send but the answer).
    s = counter_nonces()
    assert s.on_request(again) == [A]
    resp = s.respond(A, snap(**{"uid-a": "1", "uid-b": "1"}), aliases={"uid-a": ["/10.0.0.5"]})
    assert resp is not None
    assert (names(resp), list(resp.removed_resources)) == ([], [])


# -- respond_changes: a push looks at the changed names only, and answers as a full respond


def _shape(resp: DeltaDiscoveryResponse | None) -> object:
    if resp is None:
        return None
    return (
        resp.nonce,
        [(r.name, r.version) for r in resp.resources],
        sorted(resp.removed_resources),
    )


@pytest.mark.parametrize("seed", range(30))
def test_respond_changes_answers_as_a_full_respond(seed: int) -> None:
    """Two streams see the same client (ACKs, NACKs, unanswered responses, reconnect-style
    initial versions, subscription changes) and the same snapshots; one is answered with
    `respond` over the whole snapshot, the other with `respond_changes` over the names
    changed since its last answer: every response is the same."""
    import random

    rng = random.Random(seed)
    full, fast = counter_nonces(), counter_nonces()
    current = {f"w{i}": "1" for i in range(8)}
    initial = {f"w{i}": "1" for i in range(0, 8, 2)} | {"gone": "1"}
    for s in (full, fast):
        s.on_request(req(initial_resource_versions=initial))
    changed: set[str] = set()
    for _ in range(40):
        # the snapshot changes at a few names
        for _ in range(rng.choice([0, 1, 3])):
            name = f"w{rng.randrange(12)}"
            if name in current and rng.random() < 0.3:
                del current[name]
            else:
                current[name] = str(rng.randrange(5))
            changed.add(name)
        resources = snap(**current)
        a = full.respond(A, resources, version="v")
        b = fast.respond_changes(A, resources, changed, version="v")
        changed = set()
        assert _shape(a) == _shape(b)
        if a is None:
            continue
        # the client's answer, the same to both
        roll = rng.random()
        if roll < 0.6:
            answer = req(response_nonce=a.nonce)
        elif roll < 0.75:
            answer = req(response_nonce=a.nonce, error_detail=status_pb2.Status(message="bad"))
        elif roll < 0.85:
            continue  # not answered (yet)
        elif roll < 0.93:
            answer = req(response_nonce=a.nonce, resource_names_unsubscribe=["w1"])
        else:
            answer = req(response_nonce=a.nonce, resource_names_subscribe=["*"])
        assert full.on_request(answer) == fast.on_request(answer)
        assert full.held(A) == fast.held(A)


def test_respond_changes_falls_back_after_a_nack() -> None:
    s = counter_nonces()
    s.on_request(req())
    first = s.respond(A, snap(a="1", b="1"))
    assert first is not None
    s.on_request(req(response_nonce=first.nonce, error_detail=status_pb2.Status(message="x")))
    # nothing changed, but the NACKed resources are resent (istiod: the next push retries)
    again = s.respond_changes(A, snap(a="1", b="1"), ())
    assert again is not None
    assert names(again) == ["a", "b"]
    s.on_request(req(response_nonce=again.nonce))
    assert s.respond_changes(A, snap(a="1", b="1"), ()) is None
    pushed = s.respond_changes(A, snap(a="2"), ["a", "b"])
    assert pushed is not None
    assert (names(pushed), list(pushed.removed_resources)) == (["a"], ["b"])
