"""Where everything of one local cluster lives: namespace and link names, files, address ranges.

Every process of a cluster (the `ketch up` supervisor, controllers, node processes, CLI
commands such as `ketch exec`) derives names from one `ClusterLayout`, so they agree without
talking. Everything is prefixed with the cluster's name, so two clusters (a user's and a
test's) never collide, and `ketch down` finds everything by prefix.

Address plan (the same as `ketch.netns.fabric`, which tests use):
- underlay (the wire between nodes): 172.18.0.0/24, node n (1-based) = 172.18.0.<n>
- pods of node n: 10.244.<n>.0/24; the node's gateway address on every pod veth = .1
- Service cluster IPs: 10.96.0.0/16 (allocated by admission); cluster DNS answers on
  10.96.0.10, a local address of every node netns (like NodeLocal DNSCache).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME = "ketch"
UNDERLAY_CIDR = ipaddress.IPv4Network("172.18.0.0/24")
POD_CIDR_TEMPLATE = "10.244.{n}.0/24"
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
DNS_IP = ipaddress.IPv4Address("10.96.0.10")
CLUSTER_DOMAIN = "cluster.local"
#: each pod's UTS namespace (its hostname) is bind-mounted here, named like its netns
UTS_RUN_DIR = Path("/run/ketch/uts")

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")


def default_state_dir() -> Path:
    """`$KETCH_HOME` if set, /var/lib/ketch as root, else ~/.local/state/ketch."""
    home = os.environ.get("KETCH_HOME")
    if home:
        return Path(home)
    if os.geteuid() == 0:
        return Path("/var/lib/ketch")
    return Path.home() / ".local" / "state" / "ketch"


@dataclass(frozen=True)
class ClusterLayout:
    """Names and paths of one local cluster. `name` prefixes every network namespace."""

    state_dir: Path
    name: str = DEFAULT_NAME

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(
                f"cluster name {self.name!r} must be 1-12 lowercase letters, digits or '-', "
                "starting with a letter (it prefixes network namespace names)"
            )

    # --- files -------------------------------------------------------------------------

    @property
    def store_path(self) -> Path:
        return self.state_dir / "ketch.db"

    @property
    def cluster_dir(self) -> Path:
        """Runtime files of this cluster: pid files, process logs, pod directories."""
        return self.state_dir / "cluster" / self.name

    def process_log(self, role: str) -> Path:
        """Log file of a supervised process, e.g. `controllers` or `node-node1`."""
        return self.cluster_dir / "logs" / f"{role}.log"

    def pid_file(self, role: str) -> Path:
        return self.cluster_dir / "run" / f"{role}.pid"

    def pod_dir(self, namespace: str, pod: str, uid: str) -> Path:
        """Per-pod files (kubelet style `<ns>_<name>_<uid>`): container logs live in
        `<pod_dir>/<container>/<restartCount>.log`."""
        return self.cluster_dir / "pods" / f"{namespace}_{pod}_{uid}"

    def container_log(
        self, namespace: str, pod: str, uid: str, container: str, restart: int
    ) -> Path:
        return self.pod_dir(namespace, pod, uid) / container / f"{restart}.log"

    def node_dir(self, node: str) -> Path:
        """Per-node files of the mesh roles: the node agent's sockets, the node proxy's
        identity (key, certificate, trust bundle)."""
        return self.cluster_dir / "nodes" / node

    def zds_socket(self, node: str) -> Path:
        """The node agent's ZDS socket; the node proxy connects to it."""
        return self.node_dir(node) / "zds.sock"

    def cni_socket(self, node: str) -> Path:
        """The node agent's CNI-event socket; the kubelet posts `/cmdadd` to it."""
        return self.node_dir(node) / "cni.sock"

    def proxy_identity_dir(self, node: str) -> Path:
        return self.node_dir(node) / "identity"

    def netns_template(self) -> str:
        """`pod_netns` as a template for the node agent (`{uidhash}` = `_short(uid)`)."""
        return f"/run/netns/{self.name}-p-{{uidhash}}"

    # --- network namespaces and links -------------------------------------------------

    @property
    def underlay_netns(self) -> str:
        return f"{self.name}-u"

    def node_netns(self, node: str) -> str:
        return f"{self.name}-n-{node}"

    def pod_netns(self, uid: str) -> str:
        """A pod's netns, by its uid (names and namespaces can be long; uids are unique)."""
        return f"{self.name}-p-{_short(uid)}"

    def pod_veth(self, uid: str) -> str:
        """The node-side end of a pod's veth (<= 15 characters, the kernel's limit)."""
        return f"v{_short(uid)}"

    def netns_prefix(self) -> str:
        """Every netns of this cluster starts with this (what `ketch down` removes)."""
        return f"{self.name}-"

    @staticmethod
    def pod_uts(netns: str) -> Path:
        """The pod's UTS namespace (hostname = the pod's), bind-mounted like a netns; named
        after the pod's netns so `ketch down` finds it by the same patterns."""
        return UTS_RUN_DIR / netns

    def etc_dir(self, netns: str) -> Path:
        """`ip netns exec` bind-mounts files from here over /etc (resolv.conf, hosts)."""
        return Path("/etc/netns") / netns

    # --- addresses ----------------------------------------------------------------------

    @staticmethod
    def node_ip(index: int) -> ipaddress.IPv4Address:
        """Underlay address of node `index` (1-based)."""
        return UNDERLAY_CIDR.network_address + index

    @staticmethod
    def pod_cidr(index: int) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(POD_CIDR_TEMPLATE.format(n=index))

    @staticmethod
    def pod_gateway(index: int) -> ipaddress.IPv4Address:
        return ClusterLayout.pod_cidr(index).network_address + 1


def _short(uid: str) -> str:
    """12 hex characters derived from a uid: stable, collision-safe enough for one machine."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]
