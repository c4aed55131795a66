"""Pod IP address management for one node (pure: no I/O).

Like the host-local CNI IPAM plugin: every node owns a pod CIDR (`spec.podCIDR` of its Node,
10.244.<n>.0/24) and hands out its addresses one per pod, by pod uid. The network address,
the broadcast address and the gateway (the first address, .1, which the node puts on every
pod veth) are never handed out. Allocation continues after the last address given out
(round-robin, as host-local does), so an address just released is not reused at once: a
Service endpoint or a connection that still names the old pod then finds nothing rather than
a stranger.

The allocator keeps no file: after a restart the kubelet rebuilds it from the Pods in the
store that are bound to its node and carry a `status.podIP` (`rebuild`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class IpamError(Exception):
    """No address can be given (range exhausted, address outside the range or taken)."""


class PodIpam:
    """Allocates IPv4 pod addresses of one node's pod CIDR, keyed by pod uid."""

    def __init__(self, cidr: ipaddress.IPv4Network | str) -> None:
        self.cidr = ipaddress.IPv4Network(cidr)
        if self.cidr.num_addresses < 4:
            raise IpamError(
                f"pod CIDR {self.cidr} is too small: it needs a network, a gateway, a broadcast "
                "address and at least one pod address (use a /30 or larger, e.g. a /24)"
            )
        self.gateway = self.cidr.network_address + 1
        self._first = int(self.cidr.network_address) + 2
        self._last = int(self.cidr.broadcast_address) - 1
        self._by_uid: dict[str, ipaddress.IPv4Address] = {}
        self._by_ip: dict[ipaddress.IPv4Address, str] = {}
        self._cursor = self._first - 1  # last address handed out

    @property
    def capacity(self) -> int:
        return self._last - self._first + 1

    def usable(self, ip: ipaddress.IPv4Address) -> bool:
        """True if `ip` is an address this allocator may give to a pod."""
        return self._first <= int(ip) <= self._last and ip in self.cidr

    def get(self, uid: str) -> ipaddress.IPv4Address | None:
        return self._by_uid.get(uid)

    def owner(self, ip: ipaddress.IPv4Address | str) -> str | None:
        return self._by_ip.get(ipaddress.IPv4Address(ip))

    def allocated(self) -> dict[str, ipaddress.IPv4Address]:
        return dict(self._by_uid)

    def allocate(
        self, uid: str, preferred: ipaddress.IPv4Address | str | None = None
    ) -> ipaddress.IPv4Address:
        """The address of pod `uid`: the one it already has, else `preferred` if usable and
        free (a pod coming back after a restart keeps its address), else the next free one."""
        have = self._by_uid.get(uid)
        if have is not None:
            return have
        if preferred is not None:
            try:
                want = ipaddress.IPv4Address(preferred)
            except ValueError:
                want = None
            if want is not None and self.usable(want) and want not in self._by_ip:
                return self._take(uid, want)
        for step in range(1, self.capacity + 1):
            n = self._first + (self._cursor - self._first + step) % self.capacity
            candidate = ipaddress.IPv4Address(n)
            if candidate not in self._by_ip:
                self._cursor = n
                return self._take(uid, candidate)
        raise IpamError(
            f"pod CIDR {self.cidr} is exhausted: all {self.capacity} pod addresses are in use; "
            "delete pods on this node or schedule them on another node"
        )

    def reserve(self, uid: str, ip: ipaddress.IPv4Address | str) -> ipaddress.IPv4Address:
        """Record that pod `uid` holds `ip` (rebuilding after a restart). IpamError if the
        address is outside the range or held by another pod."""
        addr = ipaddress.IPv4Address(ip)
        if not self.usable(addr):
            raise IpamError(
                f"{addr} is not a pod address of {self.cidr} (network, gateway {self.gateway} "
                "and broadcast are reserved)"
            )
        holder = self._by_ip.get(addr)
        if holder is not None and holder != uid:
            raise IpamError(f"{addr} is already held by pod uid {holder}")
        old = self._by_uid.get(uid)
        if old is not None and old != addr:
            del self._by_ip[old]
        return self._take(uid, addr)

    def release(self, uid: str) -> ipaddress.IPv4Address | None:
        """Free the address of pod `uid`; returns it (None if it had none)."""
        addr = self._by_uid.pop(uid, None)
        if addr is not None:
            self._by_ip.pop(addr, None)
        return addr

    def rebuild(self, holders: Iterable[tuple[str, str]]) -> list[str]:
        """Start over from (uid, podIP) pairs; returns a message for each pair that was
        skipped (outside the range, duplicate)."""
        self._by_uid.clear()
        self._by_ip.clear()
        problems: list[str] = []
        for uid, ip in holders:
            try:
                self.reserve(uid, ip)
            except (IpamError, ValueError) as exc:
                problems.append(f"pod uid {uid}: podIP {ip!r} ignored: {exc}")
        return problems

    def _take(self, uid: str, addr: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        self._by_uid[uid] = addr
        self._by_ip[addr] = uid
        return addr
