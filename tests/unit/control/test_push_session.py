"""The stand-in per-stream delta-xDS state (`LocalServerStream`, to be replaced by
ketch.xds.session.ServerStream): subscriptions, reconnect with initial versions, ACK/NACK."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from ketch.control.push import ADDRESS_TYPE, LocalServerStream


def res(*pairs: tuple[str, str]) -> dict[str, tuple[str, Any]]:
    return {
        name: (version, any_pb2.Any(type_url=ADDRESS_TYPE, value=f"{name}@{version}".encode()))
        for name, version in pairs
    }


def req(**kw: Any) -> Any:
    return discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE, **kw)


def names(response: Any) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def test_wildcard_subscription_ack_and_nothing_more_to_send() -> None:
    s = LocalServerStream()
    assert s.status(ADDRESS_TYPE) == "NOT_SENT"
    assert s.on_request(req()) == [ADDRESS_TYPE]
    r = s.respond(ADDRESS_TYPE, res(("a", "1"), ("b", "1")), True)
    assert r is not None
    assert names(r) == {"a": "1", "b": "1"}
    assert r.resources[0].resource.value == b"a@1"
    assert list(r.removed_resources) == []
    assert s.status(ADDRESS_TYPE) == "STALE"
    assert s.on_request(req(response_nonce=r.nonce)) == []  # an ACK asks for nothing
    assert s.status(ADDRESS_TYPE) == "SYNCED"
    assert s.respond(ADDRESS_TYPE, res(("a", "1"), ("b", "1")), True) is None
    r2 = s.respond(ADDRESS_TYPE, res(("a", "2")), True)
    assert r2 is not None
    assert (names(r2), list(r2.removed_resources)) == ({"a": "2"}, ["b"])
    assert r2.nonce != r.nonce
    assert s.status(ADDRESS_TYPE) == "STALE"


def test_first_response_is_sent_even_when_empty() -> None:
    # ztunnel is not ready until it has a response of every type to ACK.
    s = LocalServerStream()
    s.on_request(req())
    r = s.respond(ADDRESS_TYPE, {}, True)
    assert r is not None
    assert (len(r.resources), len(r.removed_resources)) == (0, 0)


def test_reconnect_sends_only_what_differs_and_removes_what_is_gone() -> None:
    s = LocalServerStream()
    s.on_request(req(initial_resource_versions={"same": "1", "old": "1", "gone": "1"}))
    r = s.respond(ADDRESS_TYPE, res(("same", "1"), ("old", "2"), ("new", "1")), True)
    assert r is not None
    assert names(r) == {"old": "2", "new": "1"}
    assert list(r.removed_resources) == ["gone"]


def test_nack_is_recorded_until_a_later_ack_and_stale_nonces_are_ignored() -> None:
    s = LocalServerStream()
    s.on_request(req())
    r1 = s.respond(ADDRESS_TYPE, res(("a", "1")), True)
    assert r1 is not None
    nack = req(response_nonce=r1.nonce)
    nack.error_detail.message = "a: bad address"
    assert s.on_request(nack) == []
    assert s.status(ADDRESS_TYPE) == "ERROR"
    # Nothing is resent for a NACK (istiod): the next change retries.
    assert s.respond(ADDRESS_TYPE, res(("a", "1")), True) is None
    r2 = s.respond(ADDRESS_TYPE, res(("a", "2")), True)
    assert r2 is not None
    s.on_request(req(response_nonce=r1.nonce))  # stale ACK: ignored
    assert s.status(ADDRESS_TYPE) == "ERROR"
    s.on_request(req(response_nonce=r2.nonce))
    assert s.status(ADDRESS_TYPE) == "SYNCED"


def test_on_demand_named_subscriptions() -> None:
    s = LocalServerStream()
    everything = res(("/10.0.0.5", "1"), ("/10.0.0.6", "1"))
    # ztunnel's on-demand start: subscribe and unsubscribe "*" = nothing.
    assert s.on_request(req(resource_names_subscribe=["*"], resource_names_unsubscribe=["*"])) == [
        ADDRESS_TYPE
    ]
    r = s.respond(ADDRESS_TYPE, everything, True)
    assert r is not None
    assert names(r) == {}
    assert s.on_request(req(resource_names_subscribe=["/10.0.0.5", "/10.9.9.9"])) == [ADDRESS_TYPE]
    r = s.respond(ADDRESS_TYPE, everything, True)
    assert r is not None
    assert names(r) == {"/10.0.0.5": "1"}
    assert list(r.removed_resources) == ["/10.9.9.9"]  # asked for, does not exist
    # A change to a name not subscribed is not sent.
    assert s.respond(ADDRESS_TYPE, res(("/10.0.0.5", "1"), ("/10.0.0.6", "2")), True) is None
    assert s.on_request(req(resource_names_unsubscribe=["/10.0.0.5"])) == [ADDRESS_TYPE]
    r = s.respond(ADDRESS_TYPE, everything, True)
    assert r is not None  # answers the subscription change (nothing to send)
    assert (names(r), list(r.removed_resources)) == ({}, ["/10.9.9.9"])


def test_partial_respond_upserts_without_removing() -> None:
    s = LocalServerStream()
    s.on_request(req())
    s.respond(ADDRESS_TYPE, res(("a", "1"), ("b", "1")), True)
    r = s.respond(ADDRESS_TYPE, res(("a", "2")), False)
    assert r is not None
    assert (names(r), list(r.removed_resources)) == ({"a": "2"}, [])


def test_unsubscribed_type_gets_nothing() -> None:
    assert LocalServerStream().respond(ADDRESS_TYPE, res(("a", "1")), True) is None
