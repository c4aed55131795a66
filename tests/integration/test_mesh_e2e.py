"""Issue 11's acceptance over the real path: `ketch up` (control plane, controllers, per node
the node agent, the node proxy over ZDS and the kubelet) with the sample app in namespace
`shop` (labelled ambient), then what an operator does to it.

One cluster for the module (`--name m<random>`, a short state dir: unix socket paths must
stay under 108 bytes); the tests run in file order and each leaves the cluster as it found
it (the label on, no policy, every node proxy running). Everything goes through
`python -m ketch.cli` as a user would; the wire is watched with tcpdump on the underlay
bridge (`<name>-u`, br0), the apps' processes through /proc (the processes whose network
namespace is the pod's).

The load generator (loadgen, on one node) calls the frontend Service forever, one request
at a time and one new connection per request; the frontend calls catalog and reviews
(v2 calls ratings), each on a new connection too. Its counters (`/stats`) are read from the
node's netns: node-originated connections to pods are the kubelet's probe path (SNATed past
the node proxy), so they work with STRICT mTLS and while a node proxy is down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster import fabric
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import ClusterLayout
from ketch.store.sqlite import SqliteStore
from tests.prereq import needs_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    needs_tool("nft"),
    needs_tool("nsenter"),
    needs_tool("tcpdump"),
    needs_tool("curl"),
]

NS = "shop"
APP_PORT = 8080
HBONE_PORT = 15008
SAMPLE_PODS = 8  # frontend x2, catalog x2, reviews-v1, reviews-v2, ratings, loadgen
ENROLLED = "ambient.istio.io/redirection"
# Requests the load generator may lose while the label is removed and added back. It has
# at most one request chain in flight (loadgen -> frontend -> catalog/reviews -> ratings:
# one new connection each, one after the other), so a switch can only break the chain in
# flight when a pod on its path changes state under it:
# - removal: the node proxy closes the pod's proxied connections on ZDS del; and a
#   connection opened between that del and the control plane's update (annotation removed)
#   reaching the caller's node proxy still goes to the pod's 15008 and is refused;
# - addition: a plaintext connection accepted just before the pod's rules are installed is
#   cut by them; and the pod's own new connection in the moment between its rules and its
#   node proxy's listeners (rules first, so nothing escapes) is refused.
# istio-cni takes the same order both ways. Each pod changes state once per switch, 8 pods.
# Seen: 0, 1, 2, 2 and 2 failed requests (ConnectionResetError) of 63-77 over both
# switches in five runs, at most 2 at one switch.
SWITCH_FAILURE_BOUND = 4


@dataclass
class Mesh:
    layout: ClusterLayout
    scratch: Path
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def opts(self) -> list[str]:
        return ["--name", self.layout.name, "--state-dir", str(self.layout.state_dir)]

    def ketch(
        self, *args: str, ok: bool = True, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """A kubectl-style verb (`--store`), or a cluster verb when `args` carry `self.opts`."""
        argv = [sys.executable, "-m", "ketch.cli"]
        if args and args[0] not in ("up", "down", "status", "exec", "logs", "restart"):
            argv += ["--store", str(self.layout.store_path)]
        proc = subprocess.run(
            [*argv, *args],
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

    def pods(self, namespace: str = NS) -> list[dict[str, Any]]:
        s = SqliteStore(self.layout.store_path)
        try:
            return [dict(m) for m in s.list("Pod", namespace).items]
        finally:
            s.close()

    def pod(self, prefix: str, node: str | None = None) -> dict[str, Any]:
        for p in self.pods():
            if p["metadata"]["name"].startswith(prefix) and node in (
                None,
                p["spec"].get("nodeName"),
            ):
                return p
        raise AssertionError(f"no pod {prefix}* (node {node}) in {NS}")

    def in_node(
        self, node: str, *argv: str, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.layout.node_netns(node), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stats(self) -> dict[str, Any]:
        """The load generator's counters, from its node's netns (the probe path)."""
        lg = self.pod("loadgen")
        r = self.in_node(
            lg["spec"]["nodeName"],
            "curl", "-s", "--max-time", "5",
            f"http://{lg['status']['podIP']}:{APP_PORT}/stats",
        )  # fmt: skip
        assert r.returncode == 0, f"cannot read loadgen's /stats: {r.stderr}"
        return dict(json.loads(r.stdout))

    def metrics(self, node: str) -> str:
        r = self.in_node(node, "curl", "-s", "--max-time", "5", "http://127.0.0.1:15020/metrics")
        assert r.returncode == 0, r.stderr
        return r.stdout

    def app_pids(self) -> dict[str, frozenset[int]]:
        """pod name -> PIDs of the processes in the pod's network namespace."""
        by_inode: dict[tuple[int, int], set[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{entry}/ns/net")
                    by_inode.setdefault((st.st_dev, st.st_ino), set()).add(int(entry))
        out: dict[str, frozenset[int]] = {}
        for p in self.pods():
            st = os.stat(f"/run/netns/{self.layout.pod_netns(p['metadata']['uid'])}")
            out[p["metadata"]["name"]] = frozenset(by_inode.get((st.st_dev, st.st_ino), ()))
        return out

    def restarts(self) -> dict[str, int]:
        return {
            p["metadata"]["name"]: sum(
                int(c.get("restartCount", 0)) for c in p["status"].get("containerStatuses") or []
            )
            for p in self.pods()
        }

    def proxy(self, node: str) -> sv.PidRecord:
        rec = sv.read_pid_file(self.layout, sv.ztunnel_role(node))
        assert rec is not None, f"no PID file for ztunnel-{node}"
        return rec


def _wait(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (AssertionError, OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def _ready(p: dict[str, Any]) -> bool:
    conds = p.get("status", {}).get("conditions") or []
    return p.get("status", {}).get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conds
    )


def _all(mesh: Mesh, enrolled: str | None) -> bool:
    pods = mesh.pods()
    return len(pods) == SAMPLE_PODS and all(
        _ready(p) and (p["metadata"].get("annotations") or {}).get(ENROLLED) == enrolled
        for p in pods
    )


def _flowing(mesh: Mesh, seconds: float = 4.0) -> dict[str, Any]:
    """Traffic flows with no failure over a window; returns the last counters."""
    a = mesh.stats()
    time.sleep(seconds)
    b = mesh.stats()
    assert b["ok"] > a["ok"], f"the load generator made no progress: {a} -> {b}"
    assert b["failed"] == a["failed"], f"requests failed meanwhile: {a} -> {b}"
    return b


def _settled(mesh: Mesh, timeout: float = 60) -> dict[str, Any]:
    """Wait until a window passes with progress and no failure."""
    result: dict[str, Any] = {}

    def check() -> bool:
        result.update(_flowing(mesh, 3.0))
        return True

    _wait(check, timeout, "the sample app's traffic to flow without failures")
    return result


# --------------------------------------------------------------------------- tcpdump

_LINE = re.compile(
    r" IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): Flags \[([^\]]*)\]"
)
# A TCP segment whose payload starts with a TLS record header (content type 20-23, 0x0303).
TLS_RECORD = (
    "tcp[((tcp[12:1] & 0xf0) >> 2):1] >= 0x14 and tcp[((tcp[12:1] & 0xf0) >> 2):1] <= 0x17 "
    "and tcp[((tcp[12:1] & 0xf0) >> 2) + 1:2] = 0x0303"
)


@dataclass
class Capture:
    packets: list[tuple[str, int, str, int, str]] = field(default_factory=list)
    tls_records: int = 0

    def not_hbone(self) -> list[tuple[str, int, str, int, str]]:
        return [p for p in self.packets if HBONE_PORT not in (p[1], p[3])]

    def new_plaintext(self) -> list[tuple[str, int, str, int, str]]:
        """Connections opened to anything but HBONE (a SYN)."""
        return [p for p in self.not_hbone() if p[4] == "S"]

    def to_port(self, port: int) -> list[tuple[str, int, str, int, str]]:
        return [p for p in self.packets if port in (p[1], p[3])]


def _tcpdump(mesh: Mesh, bpf: str, out: Path) -> subprocess.Popen[bytes]:
    err = out.with_suffix(".err")
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", mesh.layout.underlay_netns, "tcpdump", "-i", "br0",
             "-nn", "-l", "-U", bpf],
            stdout=o,
            stderr=e,
        )  # fmt: skip
    _wait(lambda: b"listening on" in err.read_bytes(), 15, f"tcpdump to start ({err})")
    return proc


@contextlib.contextmanager
def capture(mesh: Mesh) -> Iterator[Capture]:
    """Every TCP packet on the underlay bridge while the block runs, and how many of the
    HBONE ones carry a TLS record."""
    tag = secrets.token_hex(3)
    all_out, tls_out = mesh.scratch / f"all-{tag}.txt", mesh.scratch / f"tls-{tag}.txt"
    procs = [_tcpdump(mesh, "tcp", all_out)]
    procs.append(_tcpdump(mesh, f"tcp port {HBONE_PORT} and {TLS_RECORD}", tls_out))
    cap = Capture()
    try:
        yield cap
    finally:
        time.sleep(0.5)
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for line in all_out.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if m:
            cap.packets.append((m[1], int(m[2]), m[3], int(m[4]), m[5]))
    cap.tls_records = sum(
        1 for line in tls_out.read_text(errors="replace").splitlines() if " IP " in line
    )


# --------------------------------------------------------------------------- the cluster


def _cleanup(layout: ClusterLayout) -> None:
    for pf in sv.read_pid_files(layout):
        if pf.record is not None and sv.check(pf.record) is sv.ProcState.RUNNING:
            os.kill(pf.record.pid, signal.SIGKILL)
    fabric.destroy(layout, kill_grace=1.0)


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    state = Path(tempfile.mkdtemp(prefix="k", dir="/tmp"))
    name = ""
    while not name or fabric.existing_netns(ClusterLayout(state, name)):
        name = "m" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    m = Mesh(ClusterLayout(state, name), state / "scratch")
    m.scratch.mkdir()
    try:
        m.ketch("up", *m.opts, timeout=300)
        _wait(lambda: _all(m, "enabled"), 120, "the sample app's 8 pods Ready and enrolled")
        _settled(m, 90)
        yield m
    finally:
        try:
            if not m.notes.get("down"):
                m.ketch("down", "--purge", *m.opts, ok=False, timeout=180)
        finally:
            _cleanup(m.layout)
            shutil.rmtree(state, ignore_errors=True)
        left = fabric.existing_netns(m.layout)
        assert not left, f"namespaces left behind: {left}"


# --------------------------------------------------------------------------- tests


def test_traffic_is_mtls_between_nodes(mesh: Mesh) -> None:
    with capture(mesh) as cap:
        before = _flowing(mesh, 5.0)
    assert cap.packets, "no TCP on the underlay while the sample app runs"
    assert not cap.not_hbone(), f"non-HBONE TCP between nodes: {cap.not_hbone()[:5]}"
    assert not cap.to_port(APP_PORT)
    assert cap.tls_records > 0, "no TLS record seen on 15008"
    # the server side's node proxy: SPIFFE identities of both ends and mutual TLS
    wanted = [
        'reporter="destination"',
        'connection_security_policy="mutual_tls"',
        'source_principal="spiffe://cluster.local/ns/shop/sa/loadgen"',
        'destination_principal="spiffe://cluster.local/ns/shop/sa/frontend"',
    ]
    for node in sorted(
        {p["spec"]["nodeName"] for p in mesh.pods() if p["metadata"]["name"].startswith("frontend")}
    ):
        lines = [
            ln
            for ln in mesh.metrics(node).splitlines()
            if ln.startswith("istio_tcp_connections_opened_total") and all(w in ln for w in wanted)
        ]
        assert lines, f"{node}: no server-side mTLS metric for loadgen -> frontend"
    assert before["ok"] > 0


def test_cli_shows_the_mesh(mesh: Mesh) -> None:
    r = mesh.ketch("get", "pods", "-n", NS, "-o", "wide")
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert rows[0][-1] == "MESH", r.stdout
    assert len(rows) == SAMPLE_PODS + 1, r.stdout
    assert all(row[-1] == "ambient" for row in rows[1:]), r.stdout
    r = mesh.ketch("ztunnel-config", "workloads", "--node", "node2", *mesh.opts, "-o", "json")
    workloads = json.loads(r.stdout)["workloads"]
    on_node2 = {p["status"]["podIP"] for p in mesh.pods() if p["spec"]["nodeName"] == "node2"}
    hbone = {
        a
        for w in workloads
        if w.get("protocol") == "HBONE"
        for a in w.get("workloadIps") or w.get("addresses") or []
    }
    assert on_node2 <= hbone, f"node2's pods not HBONE in its node proxy: {workloads}"


def test_label_off_and_on_without_restart(mesh: Mesh) -> None:
    pids = mesh.app_pids()
    assert all(pids.values()), f"a pod without processes: {pids}"
    restarts = mesh.restarts()
    start = mesh.stats()

    mesh.ketch("label", "ns", NS, "istio.io/dataplane-mode-")
    _wait(lambda: _all(mesh, None), 60, "every shop pod to leave the mesh")
    r = mesh.ketch("get", "pods", "-n", NS, "-o", "wide")
    assert all(ln.split()[-1] == "none" for ln in r.stdout.splitlines()[1:]), r.stdout
    # Requests in flight at the switch may still fail (they are counted against
    # SWITCH_FAILURE_BOUND below); wait for a clean window before looking at the wire.
    _settled(mesh)
    with capture(mesh) as cap:
        _flowing(mesh, 4.0)
    assert cap.to_port(APP_PORT), "no plaintext app traffic between nodes without the label"
    assert mesh.app_pids() == pids, "an app process changed when the label went"
    off = mesh.stats()

    mesh.ketch("label", "ns", NS, "istio.io/dataplane-mode=ambient")
    _wait(lambda: _all(mesh, "enabled"), 60, "every shop pod to join the mesh again")
    _settled(mesh)  # as above: the switch's own failures are bounded below, not here
    with capture(mesh) as cap:
        end = _flowing(mesh, 4.0)
    # A plaintext connection opened before the switch may still say goodbye (FIN/ACK of a
    # connection in its last moments: seen in a run); no new one is opened.
    assert not cap.new_plaintext(), f"new plaintext connections: {cap.new_plaintext()[:5]}"
    assert len(cap.not_hbone()) <= 4, f"plaintext between nodes: {cap.not_hbone()}"
    print(f"after re-enrollment: {len(cap.not_hbone())} stray plaintext packets {cap.not_hbone()}")
    assert cap.tls_records > 0
    assert mesh.app_pids() == pids, "an app process changed when the label came back"
    assert mesh.restarts() == restarts
    lost = end["failed"] - start["failed"]
    mesh.notes["label_switch_failed"] = (off["failed"] - start["failed"], lost)
    print(
        f"label off/on: {lost} failed of {end['ok'] - start['ok'] + lost} requests "
        f"({off['failed'] - start['failed']} at the removal; last error {end['last_error']!r})"
    )
    assert lost <= SWITCH_FAILURE_BOUND, f"{lost} requests failed across the switches: {end}"


OUTSIDE = """
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: outside}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    command: [python3, -c, "import time; time.sleep(100000)"]
"""

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
"""


def _apply(mesh: Mesh, text: str) -> None:
    path = mesh.scratch / f"apply-{secrets.token_hex(3)}.yaml"
    path.write_text(text)
    mesh.ketch("apply", "-f", str(path))


def _outside_curl(mesh: Mesh) -> subprocess.CompletedProcess[str]:
    return mesh.ketch(
        "exec", *mesh.opts, "-n", "outside", "client", "--",
        "curl", "-s", "--max-time", "3", f"http://frontend.{NS}.svc.cluster.local:{APP_PORT}/",
        ok=False, timeout=30,
    )  # fmt: skip


def test_strict_refuses_plaintext_probes_keep_pods_ready(mesh: Mesh) -> None:
    _apply(mesh, OUTSIDE)

    def client_runs() -> bool:
        s = SqliteStore(mesh.layout.store_path)
        try:
            return bool(
                s.get("Pod", "outside", "client").get("status", {}).get("phase") == "Running"
            )
        finally:
            s.close()

    _wait(client_runs, 60, "the non-mesh client pod to run")
    _wait(lambda: _outside_curl(mesh).returncode == 0, 30, "plaintext accepted (PERMISSIVE)")
    _apply(mesh, STRICT)
    try:
        _wait(lambda: _outside_curl(mesh).returncode != 0, 30, "STRICT to refuse plaintext")
        time.sleep(8)  # > failureThreshold (3) x periodSeconds (2) of the readiness probes
        assert _outside_curl(mesh).returncode != 0
        pods = mesh.pods()
        assert all(_ready(p) for p in pods), "a mesh pod lost readiness under STRICT"
        _flowing(mesh, 3.0)
    finally:
        mesh.ketch("delete", "peerauthentication", "strict", "-n", NS, ok=False)
        mesh.ketch("delete", "namespace", "outside", ok=False)
    _settled(mesh)


def test_node_proxy_killed_fails_closed_then_recovers(mesh: Mesh) -> None:
    pids, restarts = mesh.app_pids(), mesh.restarts()
    old = mesh.proxy("node2")
    client = mesh.pod("", "node2")  # any enrolled pod of node2 ...
    target = mesh.pod("", "node1")  # ... calling any pod of node1 directly
    before = mesh.stats()
    os.kill(old.pid, signal.SIGKILL)
    _wait(lambda: sv.check(old) is not sv.ProcState.RUNNING, 10, "the node proxy to die")
    try:
        with capture(mesh) as cap:
            for _ in range(3):
                r = mesh.ketch(
                    "exec", *mesh.opts, "-n", NS, client["metadata"]["name"], "--",
                    "curl", "-s", "--max-time", "3",
                    f"http://{target['status']['podIP']}:{APP_PORT}/healthz",
                    ok=False, timeout=30,
                )  # fmt: skip
                assert r.returncode != 0, (
                    f"an enrolled pod's connection worked without its node proxy: {r.stdout}"
                )
            time.sleep(2)
        during = mesh.stats()
        assert not cap.to_port(APP_PORT), f"plaintext left the node: {cap.to_port(APP_PORT)[:5]}"
        # requests through node2 fail (refused in the pod), they do not bypass the mesh
        assert during["failed"] > before["failed"], (before, during)
        assert not cap.not_hbone(), f"non-HBONE TCP between nodes: {cap.not_hbone()[:5]}"
    finally:
        mesh.ketch("up", *mesh.opts, timeout=300)  # repairs: starts the node proxy again
    assert mesh.proxy("node2").pid != old.pid
    _settled(mesh)
    assert mesh.app_pids() == pids, "an app process changed across the node proxy's restart"
    assert mesh.restarts() == restarts


def test_node_proxy_handover_refuses_nothing(mesh: Mesh) -> None:
    pids = mesh.app_pids()
    start = _settled(mesh)
    for node in ("node1", "node2"):
        old = mesh.proxy(node)
        r = mesh.ketch("restart", sv.ztunnel_role(node), *mesh.opts, timeout=120)
        new = mesh.proxy(node)
        assert new.pid != old.pid, r.stderr
        assert sv.check(old) is not sv.ProcState.RUNNING, "the old node proxy still runs"
        assert sv.check(new) is sv.ProcState.RUNNING
        time.sleep(1)
    end = _flowing(mesh, 3.0)
    made = end["ok"] - start["ok"]
    print(
        f"handover of both node proxies: {made} requests, {end['failed'] - start['failed']} failed"
    )
    assert end["failed"] == start["failed"], (
        f"requests failed during the handover: {start} -> {end}"
    )
    assert made > 0
    assert mesh.app_pids() == pids
    # the new processes took over the node ports
    r = mesh.in_node(
        "node1", "curl", "-s", "--max-time", "3", "http://127.0.0.1:15021/healthz/ready"
    )
    assert r.returncode == 0, r.stderr
    assert "ready" in r.stdout
    r = mesh.ketch("status", *mesh.opts)
    row = next(ln.split() for ln in r.stdout.splitlines() if ln.startswith("ztunnel-node1 "))
    assert row[1:3] == [str(mesh.proxy("node1").pid), "running"], r.stdout


def test_node_agent_restart_keeps_every_pod_enrolled(mesh: Mesh) -> None:
    pids = mesh.app_pids()
    old = sv.read_pid_file(mesh.layout, sv.agent_role("node1"))
    assert old is not None
    start = _settled(mesh)
    mesh.ketch("restart", sv.agent_role("node1"), *mesh.opts, timeout=120)
    new = sv.read_pid_file(mesh.layout, sv.agent_role("node1"))
    assert new is not None
    assert new.pid != old.pid
    assert _all(mesh, "enabled"), "a pod lost its enrollment when the node agent restarted"
    end = _flowing(mesh, 4.0)
    assert end["failed"] == start["failed"], (start, end)
    assert mesh.app_pids() == pids


def test_down_leaves_nothing(mesh: Mesh) -> None:
    layout = mesh.layout
    records = [pf.record for pf in sv.read_pid_files(layout) if pf.record is not None]
    app = {pid for pids in mesh.app_pids().values() for pid in pids}
    veths = {layout.pod_veth(p["metadata"]["uid"]) for p in mesh.pods()}
    mesh.notes["down"] = True
    mesh.ketch("down", "--purge", *mesh.opts, timeout=180)
    assert not fabric.existing_netns(layout)
    names = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert layout.netns_prefix() not in names
    assert not list(Path("/etc/netns").glob(f"{layout.netns_prefix()}*"))
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not [v for v in veths if v in links], "a pod veth is left in the root netns"
    for rec in records:
        assert sv.check(rec) is not sv.ProcState.RUNNING, f"{rec.role} (pid {rec.pid}) still runs"
    for pid in app:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"app process {pid} still runs"
    mine = str(layout.state_dir)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                assert mine not in cmd, f"process {entry} of the cluster still runs: {cmd}"
    assert not layout.cluster_dir.exists()
    sockets = [p for p in layout.state_dir.rglob("*") if p.is_socket()]
    assert not sockets, f"sockets left: {sockets}"


def _zombie(pid: int) -> bool:
    try:
        return sv.start_ticks_of(Path(f"/proc/{pid}/stat").read_text())[0] in ("Z", "X")
    except (OSError, IndexError, ValueError):
        return True
