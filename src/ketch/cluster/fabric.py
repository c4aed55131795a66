"""The persistent fabric of a local cluster: the underlay and one network namespace per node.

`ketch up` calls `ensure(layout, nodes)`; `ketch down` calls `destroy(layout)`. The layout
is the one of `ketch.netns.fabric` (read its docstring), built from a `ClusterLayout`::

    netns <name>-u        br0 (bridge, no address), one veth n<i> per node on it
    netns <name>-n-<node> eth0 172.18.0.<i>/24 (peer of n<i>), lo 127.0.0.1 + 10.96.0.10/32
                          ip_forward=1, route 10.244.<j>.0/24 via 172.18.0.<j> per other node

Pods' namespaces (`<name>-p-<hash>`) are the kubelet's; `destroy` removes them too.

Unlike the test fabric (which builds once and is thrown away), this one outlives the
process that built it, so `ensure` is idempotent: it creates what is missing and
re-applies addresses, routes and sysctls with `replace` semantics, so running `ketch up` on
a half-broken fabric repairs it and never duplicates anything. It reports what it created.

Nothing is added to the root network namespace: every veth is created inside the underlay
netns with its peer placed straight into a node netns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ketch.cluster.layout import DNS_IP, UNDERLAY_CIDR, UTS_RUN_DIR, ClusterLayout
from ketch.cluster.podnet import remove_uts
from ketch.netns.enter import NETNS_RUN_DIR
from ketch.netns.errors import FabricError
from ketch.netns.fabric import ip_batch, link_exists, netns_add, netns_del, sysctl

BRIDGE = "br0"
#: The node netns's uplink (peer of `n<i>` in the underlay).
NODE_UPLINK = "eth0"
_NODE_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_POD_SUFFIX_RE = re.compile(r"^[0-9a-f]{12}$")


class ClusterFabricError(Exception):
    """The fabric could not be built or removed; the message says what and how to fix it."""


@dataclass(frozen=True)
class FabricNode:
    """A node of the fabric: its name and index (1-based; addresses derive from it)."""

    name: str
    index: int

    def __post_init__(self) -> None:
        if not _NODE_RE.match(self.name):
            raise ClusterFabricError(
                f"node name {self.name!r} must be a DNS label (lowercase letters, digits, '-')"
            )
        if not 1 <= self.index <= UNDERLAY_CIDR.num_addresses - 2:
            raise ClusterFabricError(f"node index {self.index} of {self.name} is not in 1..254")


@dataclass
class EnsureReport:
    """What `ensure` had to create (empty lists: the fabric was complete already)."""

    created_netns: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created_netns or self.created_links)


@dataclass
class DestroyReport:
    """What `destroy` removed, and what it could not (with the reason)."""

    killed: list[int] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    etc_dirs: list[str] = field(default_factory=list)
    uts: list[str] = field(default_factory=list)  # pods' UTS namespace files
    errors: list[str] = field(default_factory=list)


# --- pure planning ----------------------------------------------------------------------


def uplink_name(index: int) -> str:
    """The underlay end of node `index`'s veth."""
    return f"n{index}"


def node_config(layout: ClusterLayout, node: FabricNode, others: Iterable[FabricNode]) -> list[str]:
    """`ip -batch` lines that (re)configure a node netns whose uplink exists: idempotent."""
    ip = layout.node_ip(node.index)
    lines = [
        "link set lo up",
        f"addr replace {DNS_IP}/32 dev lo",
        f"addr replace {ip}/{UNDERLAY_CIDR.prefixlen} dev {NODE_UPLINK}",
        f"link set {NODE_UPLINK} up",
    ]
    for other in sorted(others, key=lambda n: n.index):
        if other.index != node.index:
            lines.append(
                f"route replace {layout.pod_cidr(other.index)} via {layout.node_ip(other.index)}"
            )
    return lines


def check_nodes(nodes: Sequence[FabricNode]) -> None:
    """Two nodes may not share a name or an index (they would share addresses)."""
    seen_names: set[str] = set()
    seen_index: dict[int, str] = {}
    for n in nodes:
        if n.name in seen_names:
            raise ClusterFabricError(f"node {n.name} is listed twice")
        if n.index in seen_index:
            raise ClusterFabricError(
                f"nodes {seen_index[n.index]} and {n.name} both have index {n.index} "
                f"(pod CIDR 10.244.{n.index}.0/24): fix spec.podCIDR of one of the Node objects"
            )
        seen_names.add(n.name)
        seen_index[n.index] = n.name


def owned_netns(layout: ClusterLayout, names: Iterable[str]) -> list[str]:
    """Of the netns `names`, those this cluster made: its underlay, `<name>-n-<node>` and
    `<name>-p-<12 hex>`. Exact patterns, so cluster `t` never takes `tx-...` (a different
    cluster) and never takes something the kubelet of another cluster named."""
    prefix = layout.netns_prefix()
    owned = []
    for name in names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if (
            rest == "u"
            or (rest.startswith("n-") and _NODE_RE.match(rest[2:]))
            or (rest.startswith("p-") and _POD_SUFFIX_RE.match(rest[2:]))
        ):
            owned.append(name)
    # pods first, then nodes, the underlay last (the reverse of building)
    order = {"p": 0, "n": 1, "u": 2}
    return sorted(owned, key=lambda n: (order[n[len(prefix)]], n))


# --- I/O --------------------------------------------------------------------------------


def _exists(netns: str) -> bool:
    return os.path.exists(f"{NETNS_RUN_DIR}/{netns}")


def _new_netns(netns: str, report: EnsureReport) -> None:
    netns_add(netns)
    report.created_netns.append(netns)


def _base_sysctls(netns: str) -> None:
    # Before links are made, so new interfaces inherit "default": no DAD (addresses are ours
    # alone; a tentative address refuses connections for ~1-2 s) and no reverse-path filter
    # (pod traffic is DNATed and routed asymmetrically through /32 routes).
    for conf in ("default", "all"):
        sysctl(netns, f"net.ipv6.conf.{conf}.accept_dad", "0")
        sysctl(netns, f"net.ipv4.conf.{conf}.rp_filter", "0")


def ensure(layout: ClusterLayout, nodes: Sequence[FabricNode]) -> EnsureReport:
    """Create or repair the underlay and the node namespaces of `nodes`."""
    check_nodes(nodes)
    report = EnsureReport()
    try:
        underlay = layout.underlay_netns
        if not _exists(underlay):
            _new_netns(underlay, report)
        _base_sysctls(underlay)
        if not link_exists(underlay, BRIDGE):
            ip_batch(underlay, [f"link add {BRIDGE} type bridge stp_state 0 forward_delay 0"])
            report.created_links.append(f"{underlay}/{BRIDGE}")
        ip_batch(underlay, ["link set lo up", f"link set {BRIDGE} up"])
        for node in nodes:
            netns = layout.node_netns(node.name)
            if not _exists(netns):
                _new_netns(netns, report)
            _base_sysctls(netns)
            uplink = uplink_name(node.index)
            if not link_exists(underlay, uplink):
                # The node's eth0 is the peer of n<i>; one left over from an earlier index
                # (its peer renamed or gone) is in the way: drop it.
                if link_exists(netns, NODE_UPLINK):
                    ip_batch(netns, [f"link del {NODE_UPLINK}"])
                ip_batch(
                    underlay,
                    [f"link add {uplink} type veth peer name {NODE_UPLINK} netns {netns}"],
                )
                report.created_links.append(f"{underlay}/{uplink}")
            ip_batch(underlay, [f"link set {uplink} master {BRIDGE}", f"link set {uplink} up"])
            sysctl(netns, "net.ipv4.ip_forward", "1")
        for node in nodes:
            ip_batch(layout.node_netns(node.name), node_config(layout, node, nodes))
    except FabricError as exc:
        raise ClusterFabricError(str(exc)) from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterFabricError(f"building the fabric of cluster {layout.name}: {exc}") from exc
    return report


def existing_netns(layout: ClusterLayout) -> list[str]:
    """This cluster's network namespaces that exist now (pods, nodes, underlay)."""
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return owned_netns(layout, names)


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def processes_in(netns: Iterable[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of `netns` (by name): what the
    cluster started in its namespaces (node processes, containers) and left running."""
    ids = {i for n in netns if (i := _ns_id(f"{NETNS_RUN_DIR}/{n}")) is not None}
    if not ids:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        if _ns_id(f"/proc/{entry}/ns/net") in ids:
            pids.append(int(entry))
    return sorted(pids)


def _etc_dirs(layout: ClusterLayout, etc_root: Path) -> list[Path]:
    try:
        names = [p.name for p in etc_root.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    return [etc_root / n for n in owned_netns(layout, names)]


def destroy(
    layout: ClusterLayout,
    *,
    etc_root: Path = Path("/etc/netns"),
    uts_root: Path = UTS_RUN_DIR,
    kill_grace: float = 5.0,
) -> DestroyReport:
    """Remove every namespace of the cluster, their /etc/netns directories and the pods'
    UTS namespace files (`layout.pod_uts`: unmounted, deleted). Processes
    still inside them (a container a killed kubelet left behind) get SIGTERM, then SIGKILL:
    a netns with a process in it outlives its name."""
    report = DestroyReport()
    names = existing_netns(layout)
    pids = processes_in(names)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            report.killed.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + kill_grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in names:
        if err := netns_del(name):
            report.errors.append(err)
        else:
            report.netns.append(name)
    for path in _etc_dirs(layout, etc_root):
        try:
            shutil.rmtree(path)
            report.etc_dirs.append(str(path))
        except OSError as exc:
            report.errors.append(f"{path}: {exc}")
    try:
        uts_names = os.listdir(uts_root)
    except FileNotFoundError:
        uts_names = []
    for name in owned_netns(layout, uts_names):
        if problem := remove_uts(uts_root / name):
            report.errors.append(problem)
        else:
            report.uts.append(name)
    return report


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
