"""IPAM of one node's pod CIDR: table tests."""

from __future__ import annotations

import ipaddress

import pytest

from ketch.cluster.ipam import IpamError, PodIpam


def test_first_addresses_skip_network_and_gateway() -> None:
    ipam = PodIpam("10.244.1.0/24")
    assert ipam.gateway == ipaddress.IPv4Address("10.244.1.1")
    assert str(ipam.allocate("a")) == "10.244.1.2"
    assert str(ipam.allocate("b")) == "10.244.1.3"
    assert ipam.capacity == 253  # 256 - network - gateway - broadcast


def test_allocate_is_idempotent_per_uid() -> None:
    ipam = PodIpam("10.244.1.0/24")
    assert ipam.allocate("a") == ipam.allocate("a")
    assert ipam.owner("10.244.1.2") == "a"


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ("10.244.1.77", "10.244.1.77"),  # free and usable: kept (stable endpoints)
        ("10.244.1.0", "10.244.1.2"),  # network address
        ("10.244.1.1", "10.244.1.2"),  # gateway
        ("10.244.1.255", "10.244.1.2"),  # broadcast
        ("10.244.2.7", "10.244.1.2"),  # another node's range
        ("not-an-ip", "10.244.1.2"),
        (None, "10.244.1.2"),
    ],
)
def test_preferred_address(preferred: str | None, expected: str) -> None:
    assert str(PodIpam("10.244.1.0/24").allocate("a", preferred)) == expected


def test_preferred_address_taken_by_another_pod() -> None:
    ipam = PodIpam("10.244.1.0/24")
    ipam.allocate("a", "10.244.1.9")
    assert str(ipam.allocate("b", "10.244.1.9")) != "10.244.1.9"


def test_release_and_no_immediate_reuse() -> None:
    ipam = PodIpam("10.244.1.0/24")
    a = ipam.allocate("a")
    assert ipam.release("a") == a
    assert ipam.release("a") is None
    assert ipam.get("a") is None
    # round-robin: the address just freed is not handed out next
    assert ipam.allocate("b") != a


def test_exhaustion_is_a_clear_error_and_release_makes_room() -> None:
    ipam = PodIpam("10.244.1.0/29")  # .2 - .6: five pods
    got = {str(ipam.allocate(f"p{i}")) for i in range(5)}
    assert got == {f"10.244.1.{n}" for n in range(2, 7)}
    with pytest.raises(IpamError, match=r"10.244.1.0/29 is exhausted: all 5 pod addresses"):
        ipam.allocate("one-too-many")
    ipam.release("p3")
    assert str(ipam.allocate("one-too-many")) == "10.244.1.5"


def test_wraps_around_after_the_last_address() -> None:
    ipam = PodIpam("10.244.1.0/29")
    for i in range(5):
        ipam.allocate(f"p{i}")
    ipam.release("p0")
    assert str(ipam.allocate("new")) == "10.244.1.2"


def test_too_small_cidr() -> None:
    with pytest.raises(IpamError, match="too small"):
        PodIpam("10.244.1.0/31")


def test_rebuild_from_pods_in_the_store() -> None:
    ipam = PodIpam("10.244.1.0/24")
    ipam.allocate("stale")
    problems = ipam.rebuild(
        [
            ("a", "10.244.1.5"),
            ("b", "10.244.1.6"),
            ("dup", "10.244.1.5"),  # two pods claim one address: the first keeps it
            ("other-node", "10.244.2.5"),
            ("garbage", "x"),
        ]
    )
    assert ipam.allocated() == {
        "a": ipaddress.IPv4Address("10.244.1.5"),
        "b": ipaddress.IPv4Address("10.244.1.6"),
    }
    assert len(problems) == 3
    assert any("already held by pod uid a" in p for p in problems)
    assert ipam.get("stale") is None
    # the pods keep their address; newcomers get others
    assert str(ipam.allocate("a")) == "10.244.1.5"
    assert str(ipam.allocate("dup")) not in ("10.244.1.5", "10.244.1.6")
