"""`ketch up` / `status` / `exec` / `down` over real namespaces and real processes.

Each test runs its own cluster (`--name t<random>`, a tmp state dir) beside anyone else's,
through `python -m ketch.cli` as a user would, and removes everything in a `finally`:
`ketch down`, then whatever is left with the cluster's name (namespaces, /etc/netns
directories, processes from its PID files).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.cluster import fabric, nodes
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import ClusterLayout
from ketch.netns.enter import in_netns, ns_popen
from ketch.store.sqlite import SqliteStore
from tests.prereq import needs_tool

pytestmark = [needs_tool("nft"), needs_tool("nsenter"), pytest.mark.slow]

PLAIN = ("--no-mesh", "--no-sample")  # the runtime alone (the mesh: test_mesh_e2e.py)


@dataclass
class Cluster:
    layout: ClusterLayout

    @property
    def opts(self) -> list[str]:
        return ["--name", self.layout.name, "--state-dir", str(self.layout.state_dir)]

    def ketch(
        self, *args: str, ok: bool = True, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "ketch.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "COLUMNS": "250"},
            check=False,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"ketch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def store(self) -> SqliteStore:
        return SqliteStore(self.layout.store_path)

    def node(self, name: str) -> dict[str, object]:
        s = self.store()
        try:
            return s.get("Node", "", name)
        finally:
            s.close()


def _cleanup(layout: ClusterLayout) -> None:
    """Whatever `ketch down` did not remove (it failed, or the test broke first)."""
    for pf in sv.read_pid_files(layout):
        if pf.record is not None and sv.check(pf.record) is sv.ProcState.RUNNING:
            os.kill(pf.record.pid, signal.SIGKILL)
    fabric.destroy(layout, kill_grace=1.0)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    name = f"t{secrets.token_hex(3)}"
    while fabric.existing_netns(ClusterLayout(tmp_path, name)):
        name = f"t{secrets.token_hex(3)}"
    c = Cluster(ClusterLayout(tmp_path / "state", name))
    try:
        yield c
    finally:
        try:
            c.ketch("down", *c.opts, ok=False, timeout=120)
        finally:
            _cleanup(c.layout)
        left = fabric.existing_netns(c.layout)
        assert not left, f"namespaces left behind: {left}"


def _wait(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _records(layout: ClusterLayout) -> dict[str, sv.PidRecord]:
    return {pf.role: pf.record for pf in sv.read_pid_files(layout) if pf.record is not None}


def _tcp_between(layout: ClusterLayout, src: str, dst: str, dst_ip: str) -> bytes:
    """A TCP connection from node `src`'s netns to a listener in node `dst`'s netns."""
    listener = in_netns(layout.node_netns(dst), socket.create_server, (dst_ip, 0))
    port = listener.getsockname()[1]
    try:

        def dial() -> bytes:
            with socket.create_connection((dst_ip, port), timeout=5) as s:
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"over the underlay")
                return s.recv(100)

        listener.settimeout(5)
        return in_netns(layout.node_netns(src), dial)
    finally:
        listener.close()


def test_up_status_down_up(cluster: Cluster) -> None:
    layout = cluster.layout
    up = cluster.ketch("up", "--nodes", "2", *PLAIN, *cluster.opts)
    assert "is up: 2 nodes" in up.stdout
    assert "ketch down" in up.stdout  # what to try next

    # namespaces: the underlay and one per node, nothing else
    assert fabric.existing_netns(layout) == [
        layout.node_netns("node1"),
        layout.node_netns("node2"),
        layout.underlay_netns,
    ]
    # processes alive, each the process its PID file names
    recs = _records(layout)
    assert set(recs) == {"control-plane", "controllers", "node-node1", "node-node2"}
    assert all(sv.check(r) is sv.ProcState.RUNNING for r in recs.values())
    # node processes run inside their node's netns
    node_ns = os.stat(f"/run/netns/{layout.node_netns('node1')}")
    proc_ns = os.stat(f"/proc/{recs['node-node1'].pid}/ns/net")
    assert (proc_ns.st_dev, proc_ns.st_ino) == (node_ns.st_dev, node_ns.st_ino)

    # Node objects: addresses, pod CIDR, Ready, and a heartbeat that keeps coming
    for i, name in ((1, "node1"), (2, "node2")):
        m = cluster.node(name)
        assert m["spec"]["podCIDR"] == f"10.244.{i}.0/24"  # type: ignore[index]
        assert {"type": "InternalIP", "address": f"172.18.0.{i}"} in m["status"]["addresses"]  # type: ignore[index]
        assert nodes.is_ready(m)
    first = nodes.ready_condition(cluster.node("node1"))["lastHeartbeatTime"]  # type: ignore[index]

    def beat_again() -> bool:
        cond = nodes.ready_condition(cluster.node("node1"))
        return cond is not None and cond["lastHeartbeatTime"] != first

    _wait(beat_again, 40, "a second heartbeat of node1")

    # the wire: node1 reaches node2's underlay address; routes to the other pod CIDR;
    # the cluster DNS address on lo
    assert _tcp_between(layout, "node1", "node2", "172.18.0.2") == b"over the underlay"
    routes = subprocess.run(
        ["ip", "-n", layout.node_netns("node1"), "route"], capture_output=True, text=True
    ).stdout
    assert "10.244.2.0/24 via 172.18.0.2" in routes
    lo = subprocess.run(
        ["ip", "-n", layout.node_netns("node2"), "addr", "show", "lo"],
        capture_output=True,
        text=True,
    ).stdout
    assert "10.96.0.10/32" in lo

    status = cluster.ketch("status", *cluster.opts)
    for word in ("control-plane", "controllers", "node-node1", "node-node2", "running"):
        assert word in status.stdout
    assert status.stdout.count("Ready") >= 2

    # a process that dies is reported by status and restarted by `ketch up`
    os.kill(recs["node-node2"].pid, signal.SIGKILL)
    _wait(lambda: sv.check(recs["node-node2"]) is not sv.ProcState.RUNNING, 10, "the kill")
    broken = cluster.ketch("status", *cluster.opts, ok=False)
    assert broken.returncode == 1
    assert "node-node2" in broken.stderr
    assert "exited" in broken.stderr
    again = cluster.ketch("up", *PLAIN, *cluster.opts)  # repairs: restarts node2 only
    assert "node-node2 started" in again.stderr
    assert "control-plane already running" in again.stderr
    recs2 = _records(layout)
    assert recs2["control-plane"] == recs["control-plane"]
    assert recs2["node-node2"].pid != recs["node-node2"].pid

    # an orphaned "container": a pod netns of this cluster with a process in it, and its
    # /etc/netns directory; `ketch down` must remove all three
    pod_ns = layout.pod_netns("uid-of-an-orphan")
    subprocess.run(["ip", "netns", "add", pod_ns], check=True)
    orphan = ns_popen(pod_ns, ["sleep", "300"], start_new_session=True)
    etc = layout.etc_dir(pod_ns)
    etc.mkdir(parents=True)
    (etc / "resolv.conf").write_text("nameserver 10.96.0.10\n")
    try:
        down = cluster.ketch("down", *cluster.opts)
        assert "is down" in down.stdout
        assert orphan.wait(timeout=15) is not None
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
        shutil.rmtree(etc, ignore_errors=True)
    assert fabric.existing_netns(layout) == []
    assert not etc.exists()
    assert all(sv.check(r) is not sv.ProcState.RUNNING for r in recs2.values())
    assert sv.read_pid_files(layout) == []
    cond = nodes.ready_condition(cluster.node("node1"))
    assert cond is not None
    assert cond["status"] == "Unknown"
    assert cluster.ketch("status", *cluster.opts, ok=False).returncode == 3
    nothing = cluster.ketch("down", *cluster.opts)
    assert "is not up" in nothing.stderr

    # up again: the same nodes, the same indices, Ready again
    cluster.ketch("up", *PLAIN, *cluster.opts)
    assert nodes.is_ready(cluster.node("node2"))
    assert cluster.node("node2")["spec"]["podCIDR"] == "10.244.2.0/24"  # type: ignore[index]
    assert len(fabric.existing_netns(layout)) == 3


def test_exec_runs_in_the_pod_namespaces(cluster: Cluster) -> None:
    """`ketch exec` against a pod written straight into the store (the kubelet's part is
    simulated: a netns named by the pod's uid and its /etc/netns files)."""
    layout = cluster.layout
    layout.state_dir.mkdir(parents=True)
    store = cluster.store()
    try:
        pod = store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "client", "namespace": "default"},
                    "spec": {
                        "nodeName": "node1",
                        "containers": [
                            {
                                "name": "main",
                                "command": ["sleep", "inf"],
                                "env": [{"name": "GREETING", "value": "hi from env"}],
                            }
                        ],
                    },
                    "status": {"phase": "Running"},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "pending", "namespace": "default"},
                    "spec": {"containers": [{"name": "main", "command": ["true"]}]},
                },
            ]
        )[0]
    finally:
        store.close()
    netns = layout.pod_netns(pod["metadata"]["uid"])
    subprocess.run(["ip", "netns", "add", netns], check=True)
    etc = layout.etc_dir(netns)
    etc.mkdir(parents=True)
    (etc / "resolv.conf").write_text("nameserver 10.96.0.10\nsearch default.svc.cluster.local\n")
    try:
        r = cluster.ketch(
            "exec",
            *cluster.opts,
            "client",
            "--",
            "sh",
            "-c",
            'cat /etc/resolv.conf; ip -o link | wc -l; echo "$GREETING"; exit 7',
            ok=False,
        )
        assert r.returncode == 7, r.stderr
        lines = r.stdout.splitlines()
        assert "nameserver 10.96.0.10" in lines  # the pod's /etc, not the machine's
        assert "1" in lines  # only lo: the pod's network namespace
        assert "hi from env" in lines

        cases = [
            (("missing",), 'pod "missing" not found'),
            (("pending",), "is Pending, not Running"),
            (("client", "-c", "nope"), 'container "nope" is not in pod client'),
        ]
        for args, msg in cases:
            bad = cluster.ketch("exec", *cluster.opts, *args, "--", "true", ok=False)
            assert bad.returncode == 1
            assert msg in bad.stderr
            assert "Traceback" not in bad.stderr
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def test_up_refuses_a_non_root_user(cluster: Cluster) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root for this test")
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "ketch.cli",
            "up",
            *cluster.opts,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "Permission denied" in r.stderr and "ketch" not in r.stderr:
        pytest.skip(f"the checkout is not readable by nobody: {r.stderr.strip()[:200]}")
    assert r.returncode == 1
    assert "ketch up needs root: it creates network namespaces" in r.stderr
    assert json.dumps(fabric.existing_netns(cluster.layout)) == "[]"
