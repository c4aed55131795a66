"""The pod sandbox: a pod's network namespace, its veth to the node and its /etc files.

What a CNI plugin (ptp + host-local) and the container runtime's sandbox do for a pod,
on the layout of `ketch.netns.fabric` (see its docstring): the pod netns `layout.pod_netns(uid)`
gets `eth0` with the pod IP as /32, an on-link route to the node's gateway address
(10.244.<n>.1) and a default route through it; the node end `layout.pod_veth(uid)` stays in
the node netns, carries the gateway address as /32 and a /32 route to the pod. So every
packet of a pod crosses the node netns, where service rules and the node proxy see it.

`/etc/netns/<pod netns>/resolv.conf` and `hosts` are what `ip netns exec` bind-mounts over
/etc in the private mount namespace it gives each container process: cluster DNS with the
pod's search path, and the pod's own name.

The pod's hostname: Kubernetes gives every pod its own UTS namespace whose hostname is the
pod's name (`spec.hostname` if set). `setup` creates one per pod and bind-mounts it at
`layout.pod_uts(netns)` (/run/ketch/uts/<pod netns>), as `ip netns` keeps a netns; every
container and `ketch exec` enter it (`process.pod_argv`), so `hostname` and
`socket.gethostname()` print the pod's name.

`setup` is idempotent and survives a crashed run: whatever an earlier attempt left (netns,
node-side veth, /etc/netns files) is removed first. `teardown` never raises; it returns what
it could not remove. Both are blocking (they run `ip`): call them in a thread from asyncio.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ketch.cluster.layout import CLUSTER_DOMAIN, DNS_IP, ClusterLayout
from ketch.netns.enter import NETNS_RUN_DIR
from ketch.netns.errors import NetnsError
from ketch.netns.fabric import ip_batch, link_exists, netns_add, netns_del


class SandboxError(Exception):
    """The pod's network could not be set up; the message says which step and why."""


@dataclass(frozen=True)
class Sandbox:
    """Everything that identifies one pod's network (all derived from the layout)."""

    node_netns: str
    netns: str  # the pod's, under /run/netns
    veth: str  # node-side end, in node_netns
    ip: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    etc_dir: Path  # /etc/netns/<netns>
    namespace: str
    pod_name: str
    hostname: str = ""  # the pod's hostname; "" = derived from pod_name

    @property
    def netns_path(self) -> str:
        return f"{NETNS_RUN_DIR}/{self.netns}"

    @property
    def uts_path(self) -> Path:
        return ClusterLayout.pod_uts(self.netns)

    @property
    def host_name(self) -> str:
        return self.hostname or pod_hostname(self.pod_name, None)


HOSTNAME_MAX = 63


def pod_hostname(pod_name: str, spec_hostname: str | None) -> str:
    """The pod's hostname as the kubelet picks it: `spec.hostname` if set, else the pod's
    name cut to 63 characters (a DNS label) with trailing '-' and '.' removed."""
    if spec_hostname:
        return spec_hostname
    return pod_name[:HOSTNAME_MAX].rstrip("-.")


def resolv_conf(namespace: str) -> str:
    """The pod's resolv.conf as the kubelet writes it for dnsPolicy ClusterFirst."""
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver {DNS_IP}\noptions ndots:5\n"


def hosts_file(hostname: str, ip: ipaddress.IPv4Address) -> str:
    """The pod's /etc/hosts as the kubelet writes it (kubelet's managed hosts file)."""
    return (
        "# Kubernetes-managed hosts file (written by the Ketch kubelet).\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        f"{ip}\t{hostname}\n"
    )


def netns_pids(netns: str) -> list[int]:
    """PIDs of every process inside the named netns (`ip netns pids`)."""
    if not os.path.exists(f"{NETNS_RUN_DIR}/{netns}"):
        return []
    proc = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30, check=False
    )
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def kill_netns_processes(netns: str) -> list[int]:
    """SIGKILL every process left inside the pod netns (ones that escaped their process
    group, e.g. with setsid); returns their PIDs. The netns is ours alone, so anything in it
    belongs to the pod."""
    me = os.getpid()
    killed: list[int] = []
    for pid in netns_pids(netns):
        if pid == me:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def teardown(sb: Sandbox) -> list[str]:
    """Remove the pod's netns, its node-side veth and /etc/netns files; returns errors
    (never raises)."""
    try:
        return _teardown(sb)
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"tearing down the sandbox of {sb.namespace}/{sb.pod_name}: {exc}"]


def _teardown(sb: Sandbox) -> list[str]:
    errors: list[str] = []
    kill_netns_processes(sb.netns)
    if os.path.exists(f"{NETNS_RUN_DIR}/{sb.node_netns}") and link_exists(sb.node_netns, sb.veth):
        try:
            ip_batch(sb.node_netns, [f"link del {sb.veth}"])
        except NetnsError as exc:
            if link_exists(sb.node_netns, sb.veth):
                errors.append(str(exc))
    err = netns_del(sb.netns)
    if err:
        errors.append(err)
    if problem := remove_uts(sb.uts_path):
        errors.append(problem)
    if sb.etc_dir.exists():
        try:
            shutil.rmtree(sb.etc_dir)
        except OSError as exc:
            errors.append(f"cannot remove {sb.etc_dir}: {exc}")
    return errors


def setup(sb: Sandbox) -> None:
    """Create the pod's network from scratch (removing leftovers first)."""
    if not os.path.exists(f"{NETNS_RUN_DIR}/{sb.node_netns}"):
        raise SandboxError(
            f"node netns {sb.node_netns} does not exist (is the node up? `ketch up` creates it)"
        )
    leftovers = teardown(sb)
    if leftovers:
        raise SandboxError("cannot clear an earlier sandbox: " + "; ".join(leftovers))
    try:
        netns_add(sb.netns)
        ip_batch(sb.netns, ["link set lo up"])
        ip_batch(
            sb.node_netns,
            [
                f"link add {sb.veth} type veth peer name eth0 netns {sb.netns}",
                f"addr add {sb.gateway}/32 dev {sb.veth}",
                f"link set {sb.veth} up",
                f"route add {sb.ip}/32 dev {sb.veth}",
            ],
        )
        ip_batch(
            sb.netns,
            [
                f"addr add {sb.ip}/32 dev eth0",
                "link set eth0 up",
                f"route add {sb.gateway} dev eth0 scope link",
                f"route add default via {sb.gateway} dev eth0",
            ],
        )
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"pod network for {sb.namespace}/{sb.pod_name}: {exc}") from exc
    try:
        sb.etc_dir.mkdir(parents=True, exist_ok=True)
        _write(sb.etc_dir / "resolv.conf", resolv_conf(sb.namespace))
        _write(sb.etc_dir / "hosts", hosts_file(sb.host_name, sb.ip))
    except OSError as exc:
        raise SandboxError(f"cannot write the pod's /etc files in {sb.etc_dir}: {exc}") from exc
    make_uts(sb.uts_path, sb.host_name)


_SET_HOSTNAME = "import socket, sys; socket.sethostname(sys.argv[1])"


def make_uts(path: Path, hostname: str) -> None:
    """A new UTS namespace with `hostname`, kept alive by a bind mount at `path`
    (`unshare --uts=<file>`, util-linux)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        proc = subprocess.run(
            ["unshare", f"--uts={path}", sys.executable, "-S", "-c", _SET_HOSTNAME, hostname],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot create the pod's UTS namespace at {path}: {exc}") from exc
    if proc.returncode != 0:
        remove_uts(path)
        why = proc.stderr.strip() or f"exit code {proc.returncode}"
        raise SandboxError(
            f"cannot create the pod's UTS namespace (hostname {hostname!r}) at {path}: {why}"
        )


_MNT_DETACH = 2
_libc: ctypes.CDLL | None = None


def remove_uts(path: Path) -> str | None:
    """Unmount and delete a pod's UTS namespace file; a problem as text, or None (also when
    there is nothing to remove)."""
    global _libc
    if not os.path.lexists(path):
        return None
    try:  # a namespace bind-mounted there lives on another device (nsfs)
        mounted = os.lstat(path).st_dev != os.lstat(path.parent).st_dev
    except OSError:
        mounted = True
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if mounted and _libc.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point
            return f"cannot unmount {path}: {os.strerror(code)}"
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f"cannot remove {path}: {exc}"
    return None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)
