"""Unit tests for the parts of ketch.netns that need no root."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ketch.netns import (
    FabricError,
    IptablesError,
    NetnsNotFound,
    NoOriginalDestination,
    canonical_ip,
    detect_backend,
    netns_path,
    open_netns,
    original_dst,
)
from ketch.netns.enter import nsenter_argv
from ketch.netns.fabric import Fabric, cleanup_stale


@pytest.mark.parametrize(
    ("ref", "path"),
    [
        ("pod-a", "/run/netns/pod-a"),
        ("/proc/1/ns/net", "/proc/1/ns/net"),
        (7, "/proc/self/fd/7"),
    ],
)
def test_netns_path(ref: int | str, path: str) -> None:
    assert netns_path(ref) == path


def test_nsenter_argv_passes_fd_down() -> None:
    argv, fds = nsenter_argv(9, ["ip", "link"])
    assert argv == ["nsenter", "--net=/proc/self/fd/9", "--", "ip", "link"]
    assert fds == (9,)
    argv, fds = nsenter_argv("x", ["true"])
    assert argv[1] == "--net=/run/netns/x"
    assert fds == ()


def test_open_missing_netns_names_the_namespace() -> None:
    with pytest.raises(NetnsNotFound, match="kn-does-not-exist"):
        open_netns("kn-does-not-exist")


def test_original_dst_of_a_plain_connection_is_its_own_address_or_a_clear_error() -> None:
    # Without conntrack (no nat rules loaded in this netns) there is no original
    # destination; with conntrack, an untouched connection reports its own address.
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            try:
                result: tuple[str, int] | str = original_dst(accepted)
            except NoOriginalDestination as exc:
                result = str(exc)
            assert result == accepted.getsockname() or "not redirected" in str(result)


@pytest.mark.parametrize("prefix", ["", "UPPER", "1abc", "a" * 30, "kn_x", "kn x"])
def test_fabric_rejects_bad_prefix(prefix: str) -> None:
    with pytest.raises(FabricError):
        Fabric(prefix)


def test_cleanup_stale_refuses_odd_prefix() -> None:
    with pytest.raises(FabricError):
        cleanup_stale("../etc")


def test_fabric_rejects_unknown_node_without_touching_the_system() -> None:
    fabric = Fabric("knunit")
    with pytest.raises(FabricError, match="not part of fabric"):
        fabric.add_pod("nope", "a")
    assert fabric.namespaces() == []
    fabric.close()


def test_backend_override_must_be_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH_IPTABLES_BACKEND", "bogus")
    with pytest.raises(IptablesError, match="not 'nft' or 'legacy'"):
        detect_backend("kn-never-used")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("10.244.1.2", "10.244.1.2"),
        ("::ffff:10.244.1.2", "10.244.1.2"),
        ("fd00:10:244:1::2", "fd00:10:244:1::2"),
        ("::1", "::1"),
        ("::ffff:0:a00:1", "::ffff:0:a00:1"),  # IPv4-translated (RFC 2765), not mapped
        ("::ffff:a00:1", "10.0.0.1"),  # mapped, in hex
        ("0:0:0:0:0:ffff:10.0.0.1", "10.0.0.1"),
    ],
)
def test_canonical_ip_unmaps_v4_mapped_addresses(given: str, canonical: str) -> None:
    assert str(canonical_ip(given)) == canonical


def test_canonical_ip_rejects_garbage() -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        canonical_ip("::ffff:10.0.0.300")


class _FakeConntrackSocket:
    """Stands in for an accepted AF_INET6 socket: answers one original-destination
    lookup (level -> raw sockaddr) and records which ones were asked."""

    family = socket.AF_INET6

    def __init__(self, answers: dict[int, bytes]) -> None:
        self.answers = answers
        self.asked: list[int] = []

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        assert opt == 80
        self.asked.append(level)
        if level not in self.answers:
            raise OSError(2, "No such file or directory")
        return self.answers[level]


_V4_DST = struct.pack("!HH4s8x", socket.AF_INET, 8080, ipaddress.IPv4Address("10.244.2.2").packed)
_V6_DST = struct.pack(
    "!HHI16sI", socket.AF_INET6, 8080, 0, ipaddress.IPv6Address("fd00:10:244:2::2").packed, 0
)
_MAPPED_DST = struct.pack(
    "!HHI16sI", socket.AF_INET6, 8080, 0, ipaddress.IPv6Address("::ffff:10.244.2.2").packed, 0
)


@pytest.mark.parametrize(
    ("answers", "peer", "expected", "asked"),
    [
        # dual-stack listener, IPv6 connection: IP6T_SO_ORIGINAL_DST at SOL_IPV6
        (
            {socket.IPPROTO_IPV6: _V6_DST},
            ("fd00:10:244:1::2", 4000, 0, 0),
            "fd00:10:244:2::2",
            [41],
        ),
        # IPv4 connection (v4-mapped peer): straight to SO_ORIGINAL_DST at SOL_IP
        ({socket.SOL_IP: _V4_DST}, ("::ffff:10.244.1.2", 4000, 0, 0), "10.244.2.2", [0]),
        # no peer given: IPv6 first, then IPv4
        ({socket.SOL_IP: _V4_DST}, None, "10.244.2.2", [41, 0]),
        ({socket.IPPROTO_IPV6: _V6_DST}, None, "fd00:10:244:2::2", [41]),
        # a v4-mapped answer comes back as plain IPv4
        ({socket.IPPROTO_IPV6: _MAPPED_DST}, None, "10.244.2.2", [41]),
    ],
)
def test_original_dst_family_choice_and_canonical_result(
    answers: dict[int, bytes],
    peer: tuple[str, int, int, int] | None,
    expected: str,
    asked: list[int],
) -> None:
    sock = _FakeConntrackSocket(answers)
    assert original_dst(sock, peer) == (expected, 8080)  # type: ignore[arg-type]
    assert sock.asked == asked
