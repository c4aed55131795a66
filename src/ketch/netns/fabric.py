"""A local "cluster" made of network namespaces: nodes, pods and the wire between nodes.

Used by integration tests, benchmarks and the `ketch` local cluster. Layout (n = node index,
starting at 1)::

                      netns <prefix>-u  ("underlay": the wire between nodes)
                 +-----------------------------------------------+
                 |  br0 (bridge, no address)                     |
                 |   |-- n1 (veth)        |-- n2 (veth)   ...    |
                 +---|--------------------|----------------------+
                     | eth0 172.18.0.1/24 | eth0 172.18.0.2/24
       +-------------+---------+  +-------+-----------------+
       | netns <prefix>-n-node1 |  | netns <prefix>-n-node2 |   ip_forward=1
       | 10.244.2.0/24 via      |  | 10.244.1.0/24 via      |   route to every other
       |   172.18.0.2           |  |   172.18.0.1           |   node's pod CIDR
       | p1: 10.244.1.1/32      |  | p2: 10.244.2.1/32      |   gateway address on
       | 10.244.1.2/32 dev p1   |  | 10.244.2.2/32 dev p2   |   each pod veth
       +-----|------------------+  +-----|------------------+
             | eth0 10.244.1.2/32        | eth0 10.244.2.2/32
       +-----+-----------------+   +-----+------------------+
       | netns <prefix>-p-a    |   | netns <prefix>-p-b     |   default via 10.244.n.1
       +-----------------------+   +------------------------+

* One netns per node, per pod, and one "underlay" netns holding a bridge; every veth is
  created inside a fabric netns with its peer placed directly in another fabric netns, so
  nothing ever appears in the root netns (no links, addresses or routes).
* Pods are point-to-point (/32 on eth0, an on-link route to the node's gateway address
  10.244.n.1 and a default route through it), like the ptp CNI plugin: all pod traffic,
  even to a pod on the same node, crosses the node netns, where a node proxy can see it.
* Traffic between nodes crosses br0 in the underlay netns: capture it there, e.g.
  ``nsenter --net=/run/netns/<prefix>-u tcpdump -ni br0``.
* Dual stack, opt-in (``Fabric(prefix, ipv6=True)``): the same layout again in IPv6 ULA
  space. Node n gets ``fd00:172:18::<n>/64`` on the underlay and the pod prefix
  ``fd00:10:244:<n>::/64``; its gateway ``fd00:10:244:<n>::1`` sits on every pod veth and
  pods get ``fd00:10:244:<n>::<k>/128`` (same k as the IPv4 address). Nodes forward IPv6
  and route each other's pod prefixes. Duplicate address detection is off in every
  fabric netns (``accept_dad=0`` and ``nodad``): the addresses are ours alone, and without
  this they stay "tentative" for ~1-2 s and connections to them fail at first.
* Processes started with `.exec` are tracked and stopped (SIGTERM, then SIGKILL) by
  `Fabric.close()`, which then deletes every netns the fabric made, even after a partial
  failure. `cleanup_stale(prefix)` removes the namespaces a crashed run left behind.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from ketch.netns.enter import NETNS_RUN_DIR, in_netns, netns_path, ns_popen, open_netns
from ketch.netns.errors import FabricError

T = TypeVar("T")

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
DEFAULT_UNDERLAY = "172.18.0.0/24"
DEFAULT_POD_CIDR = "10.244.{n}.0/24"
DEFAULT_UNDERLAY6 = "fd00:172:18::/64"
DEFAULT_POD_CIDR6 = "fd00:10:244:{n}::/64"
BRIDGE = "br0"


def ip_batch(netns: str, lines: Sequence[str]) -> None:
    """Run `ip` commands inside the named netns, stopping at the first failure."""
    script = "\n".join(lines) + "\n"
    proc = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise FabricError(
            f"ip commands failed in netns {netns}: {proc.stderr.strip() or 'no error output'}"
            f"\ncommands:\n{script}"
        )


def link_exists(netns: str, link: str) -> bool:
    """Whether `link` exists in the named netns."""
    proc = subprocess.run(
        ["ip", "-n", netns, "link", "show", "dev", link],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0


def netns_add(name: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0:
        raise FabricError(
            f"cannot create netns {name}: {proc.stderr.strip()} "
            "(left over from a crashed run? try ketch.netns.fabric.cleanup_stale)"
        )


def netns_del(name: str) -> str | None:
    """Delete a named netns; returns an error message, or None (also when already gone)."""
    if not os.path.exists(f"{NETNS_RUN_DIR}/{name}"):
        return None
    proc = subprocess.run(
        ["ip", "netns", "del", name], capture_output=True, text=True, timeout=30, check=False
    )
    if proc.returncode != 0 and os.path.exists(f"{NETNS_RUN_DIR}/{name}"):
        return f"netns {name}: {proc.stderr.strip()}"
    return None


def sysctl(netns: str, key: str, value: str) -> None:
    """Set a net.* sysctl inside `netns`: /proc/sys/net resolves to the writing thread's
    netns, so this needs no `sysctl` binary and never touches the root netns."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(value + "\n")

    try:
        in_netns(netns, write)
    except OSError as exc:
        raise FabricError(f"cannot set {key}={value} in netns {netns}: {exc}") from exc


class _Processes:
    """Processes started inside fabric namespaces; stopped by PID on close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[Any]] = []

    def add(self, proc: subprocess.Popen[Any]) -> None:
        with self._lock:
            self._procs.append(proc)

    def stop_all(self, grace: float = 3.0) -> None:
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@dataclass(frozen=True, eq=False)
class Endpoint:
    """Something with its own netns in the fabric: a node or a pod."""

    name: str
    ip: str
    netns: str  # name under /run/netns
    _procs: _Processes = field(repr=False)

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)

    def exec(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start a real process inside this netns (via nsenter); the fabric stops it on close
        if it is still running."""
        proc = ns_popen(self.netns, argv, **popen_kwargs)
        self._procs.add(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        *,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a process inside this netns to completion; text stdout/stderr captured.
        With `check`, a non-zero exit raises FabricError carrying its stderr."""
        proc = self.exec(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise FabricError(
                f"`{' '.join(argv)}` in {self.netns} did not finish within {timeout}s; "
                f"stderr: {err.strip()}"
            ) from None
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise FabricError(
                f"`{' '.join(argv)}` in {self.netns} exited {proc.returncode}: {err.strip()}"
            )
        return result

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a Python function inside this netns (see `ketch.netns.in_netns`)."""
        return in_netns(self.netns, fn, *args, **kwargs)

    def open_netns(self) -> int:
        """An fd for this netns (the caller closes it with `ketch.netns.close_netns`)."""
        return open_netns(self.netns)

    def wait_for_tcp(self, host: str, port: int, timeout: float = 10.0) -> None:
        """Poll from inside this netns until host:port accepts a TCP connection
        (e.g. a server just started with `.exec`); FabricError after `timeout`."""
        deadline = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        last = ""
        while True:
            sock = self.call(socket.socket, family, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
                sock.connect((host, port))
                return
            except OSError as exc:  # refused, unreachable while ARP settles, timeout: retry
                last = str(exc)
            finally:
                sock.close()
            if time.monotonic() >= deadline:
                raise FabricError(
                    f"{host}:{port} did not accept connections from {self.netns} "
                    f"within {timeout}s (last error: {last})"
                )
            time.sleep(0.02)


@dataclass(frozen=True, eq=False)
class Node(Endpoint):
    """A node: its own netns, 172.18.0.<index> on the underlay, pods in `pod_cidr`."""

    index: int
    pod_cidr: ipaddress.IPv4Network
    #: IPv6 underlay address and pod prefix (dual-stack fabrics only).
    ip6: str | None = None
    pod_cidr6: ipaddress.IPv6Network | None = None

    @property
    def gateway(self) -> str:
        """The pods' default gateway: the first address of the pod CIDR."""
        return str(self.pod_cidr.network_address + 1)

    @property
    def gateway6(self) -> str | None:
        """The pods' IPv6 default gateway: the first address of the pod prefix."""
        return None if self.pod_cidr6 is None else str(self.pod_cidr6.network_address + 1)


@dataclass(frozen=True, eq=False)
class Pod(Endpoint):
    """A pod: its own netns with eth0 (a /32 from its node's pod CIDR)."""

    node: str
    #: Name of the node-side veth of this pod (inside the node netns).
    host_veth: str
    #: The pod's IPv6 address (dual-stack fabrics only).
    ip6: str | None = None

    @property
    def ips(self) -> tuple[str, ...]:
        """Every address of the pod: IPv4 first, then IPv6 if any."""
        return (self.ip,) if self.ip6 is None else (self.ip, self.ip6)


class Fabric:
    """Builds and tears down a cluster of network namespaces (see the module docstring)."""

    def __init__(
        self,
        prefix: str,
        *,
        underlay: str = DEFAULT_UNDERLAY,
        pod_cidr: str = DEFAULT_POD_CIDR,
        ipv6: bool = False,
        underlay6: str = DEFAULT_UNDERLAY6,
        pod_cidr6: str = DEFAULT_POD_CIDR6,
    ) -> None:
        if not _PREFIX_RE.match(prefix):
            raise FabricError(
                f"fabric prefix {prefix!r} must be 1-24 chars of [a-z0-9-] starting with a letter"
            )
        self.prefix = prefix
        self.underlay_cidr = ipaddress.IPv4Network(underlay)
        self._pod_cidr_template = pod_cidr
        self.ipv6 = ipv6
        self.underlay6_cidr = ipaddress.IPv6Network(underlay6)
        self._pod_cidr6_template = pod_cidr6
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self._namespaces: list[str] = []
        self._procs = _Processes()
        self._veths = 0
        self._closed = False

    # -- names -------------------------------------------------------------------------
    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}-u"

    def namespaces(self) -> list[str]:
        """Names (under /run/netns) of every netns this fabric created, in creation order."""
        return list(self._namespaces)

    def _new_netns(self, name: str) -> None:
        if self._closed:
            raise FabricError(f"fabric {self.prefix} is closed")
        netns_add(name)
        self._namespaces.append(name)
        if self.ipv6:
            # Before any link exists, so every interface made here inherits "no DAD".
            for conf in ("default", "all"):
                sysctl(name, f"net.ipv6.conf.{conf}.accept_dad", "0")
        ip_batch(name, ["link set lo up"])

    def _ensure_underlay(self) -> None:
        if self.underlay_netns in self._namespaces:
            return
        self._new_netns(self.underlay_netns)
        ip_batch(
            self.underlay_netns,
            [
                f"link add {BRIDGE} type bridge stp_state 0 forward_delay 0",
                f"link set {BRIDGE} up",
            ],
        )

    # -- building ----------------------------------------------------------------------
    def add_node(self, name: str) -> Node:
        """Create a node netns wired to the underlay bridge with address 172.18.0.<n>/24,
        forwarding on, and routes to every other node's pod CIDR."""
        if not _NAME_RE.match(name):
            raise FabricError(f"node name {name!r} must be DNS-label-like, at most 32 chars")
        if name in self.nodes:
            raise FabricError(f"node {name!r} already exists in fabric {self.prefix}")
        index = len(self.nodes) + 1
        if index >= self.underlay_cidr.num_addresses - 1 or index > 255:
            raise FabricError(f"no room for node #{index} in {self.underlay_cidr}")
        ip = self.underlay_cidr.network_address + index
        pod_cidr = ipaddress.IPv4Network(self._pod_cidr_template.format(n=index))
        ip6: ipaddress.IPv6Address | None = None
        pod_cidr6: ipaddress.IPv6Network | None = None
        if self.ipv6:
            ip6 = self.underlay6_cidr.network_address + index
            pod_cidr6 = ipaddress.IPv6Network(self._pod_cidr6_template.format(n=index))
        netns = f"{self.prefix}-n-{name}"
        self._ensure_underlay()
        self._new_netns(netns)
        node = Node(
            name,
            str(ip),
            netns,
            self._procs,
            index,
            pod_cidr,
            None if ip6 is None else str(ip6),
            pod_cidr6,
        )
        uplink = f"n{index}"
        ip_batch(
            self.underlay_netns,
            [
                f"link add {uplink} type veth peer name eth0 netns {netns}",
                f"link set {uplink} master {BRIDGE}",
                f"link set {uplink} up",
            ],
        )
        routes = [f"route add {other.pod_cidr} via {other.ip}" for other in self.nodes.values()]
        v6: list[str] = []
        if ip6 is not None:
            v6.append(f"addr add {ip6}/{self.underlay6_cidr.prefixlen} dev eth0 nodad")
            routes += [
                f"route add {other.pod_cidr6} via {other.ip6}"
                for other in self.nodes.values()
                if other.pod_cidr6 is not None
            ]
        ip_batch(
            netns,
            [
                f"addr add {ip}/{self.underlay_cidr.prefixlen} dev eth0",
                *v6,
                "link set eth0 up",
                *routes,
            ],
        )
        sysctl(netns, "net.ipv4.ip_forward", "1")
        if ip6 is not None:
            sysctl(netns, "net.ipv6.conf.all.forwarding", "1")
        for other in self.nodes.values():
            back = [f"route add {pod_cidr} via {ip}"]
            if pod_cidr6 is not None:
                back.append(f"route add {pod_cidr6} via {ip6}")
            ip_batch(other.netns, back)
        self.nodes[name] = node
        return node

    def _next_pod_ip(self, node: Node) -> ipaddress.IPv4Address:
        used = {ipaddress.IPv4Address(p.ip) for p in self.pods.values() if p.node == node.name}
        for candidate in node.pod_cidr.hosts():
            if candidate != ipaddress.IPv4Address(node.gateway) and candidate not in used:
                return candidate
        raise FabricError(f"pod CIDR {node.pod_cidr} of node {node.name} is full")

    def add_pod(self, node: Node | str, name: str, ip: str | None = None) -> Pod:
        """Create a pod netns on `node` with eth0 = `ip` (default: next free address of the
        node's pod CIDR) and a default route via the node."""
        node_obj = self.nodes.get(node) if isinstance(node, str) else node
        if node_obj is None or self.nodes.get(node_obj.name) is not node_obj:
            raise FabricError(f"node {node!r} is not part of fabric {self.prefix}")
        if not _NAME_RE.match(name):
            raise FabricError(f"pod name {name!r} must be DNS-label-like, at most 32 chars")
        if name in self.pods:
            raise FabricError(f"pod {name!r} already exists in fabric {self.prefix}")
        if ip is None:
            addr = self._next_pod_ip(node_obj)
        else:
            addr = ipaddress.IPv4Address(ip)
            if addr not in node_obj.pod_cidr or addr in (
                node_obj.pod_cidr.network_address,
                node_obj.pod_cidr.broadcast_address,
                ipaddress.IPv4Address(node_obj.gateway),
            ):
                raise FabricError(
                    f"pod IP {ip} is not a usable address of node {node_obj.name}'s pod CIDR "
                    f"{node_obj.pod_cidr} (the first address {node_obj.gateway} is the gateway)"
                )
            if any(p.ip == str(addr) for p in self.pods.values()):
                raise FabricError(f"pod IP {ip} is already used in fabric {self.prefix}")
        netns = f"{self.prefix}-p-{name}"
        self._new_netns(netns)
        self._veths += 1
        veth = f"p{self._veths}"
        gw = node_obj.gateway
        addr6: ipaddress.IPv6Address | None = None
        gw6 = node_obj.gateway6
        node_v6: list[str] = []
        pod_v6: list[str] = []
        if node_obj.pod_cidr6 is not None and gw6 is not None:
            # the same host number as the IPv4 address: 10.244.1.7 <-> fd00:10:244:1::7
            host = int(addr) - int(node_obj.pod_cidr.network_address)
            addr6 = node_obj.pod_cidr6.network_address + host
            node_v6 = [f"addr add {gw6}/128 dev {veth} nodad"]
            pod_v6 = [
                f"addr add {addr6}/128 dev eth0 nodad",
                f"route add {gw6} dev eth0",
                f"route add default via {gw6} dev eth0",
            ]
        ip_batch(
            node_obj.netns,
            [
                f"link add {veth} type veth peer name eth0 netns {netns}",
                f"addr add {gw}/32 dev {veth}",
                *node_v6,
                f"link set {veth} up",
                f"route add {addr}/32 dev {veth}",
                *([f"route add {addr6}/128 dev {veth}"] if addr6 is not None else []),
            ],
        )
        ip_batch(
            netns,
            [
                f"addr add {addr}/32 dev eth0",
                "link set eth0 up",
                f"route add {gw} dev eth0 scope link",
                f"route add default via {gw} dev eth0",
                *pod_v6,
            ],
        )
        pod = Pod(
            name,
            str(addr),
            netns,
            self._procs,
            node_obj.name,
            veth,
            None if addr6 is None else str(addr6),
        )
        self.pods[name] = pod
        return pod

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Stop processes started through the fabric, then delete every netns it created
        (which destroys their veths and bridge). Safe to call twice and after partial
        failures; raises FabricError listing what could not be removed."""
        self._closed = True
        self._procs.stop_all()
        errors = [e for ns in reversed(self._namespaces) if (e := netns_del(ns))]
        self._namespaces.clear()
        self.nodes.clear()
        self.pods.clear()
        if errors:
            raise FabricError("fabric cleanup left namespaces behind: " + "; ".join(errors))

    def __enter__(self) -> Fabric:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def free_prefix(base: str) -> str:
    """A fabric prefix no other fabric on this machine uses: `base` + 6 random hex chars
    (tests, benchmarks and parallel runs each take their own)."""
    for _ in range(100):
        prefix = f"{base}{secrets.token_hex(3)}"
        if not stale_namespaces(prefix):
            return prefix
    raise FabricError(f"no free fabric prefix starting with {base!r} after 100 tries")


def stale_namespaces(prefix: str) -> list[str]:
    """Names under /run/netns that a fabric with this exact prefix would have created."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def cleanup_stale(prefix: str) -> list[str]:
    """Delete the namespaces a crashed fabric with this prefix left behind; returns their
    names. It does not kill processes still running in them (their netns then lives on,
    unnamed, until they exit)."""
    if not _PREFIX_RE.match(prefix):
        raise FabricError(f"refusing to clean up with unusual prefix {prefix!r}")
    removed: list[str] = []
    errors: list[str] = []
    for name in stale_namespaces(prefix):
        err = netns_del(name)
        if err:
            errors.append(err)
        else:
            removed.append(name)
    if errors:
        raise FabricError("could not remove stale namespaces: " + "; ".join(errors))
    return removed
