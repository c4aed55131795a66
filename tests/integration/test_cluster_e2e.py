"""Issue 10's acceptance, end to end, the way a user runs it (root; real netns, processes, DNS).

One cluster for the module (`ketch up --nodes 2 --no-mesh --no-sample` with a random name and
a short tmp state dir), driven only through `python -m ketch.cli` (up, apply, get, exec, logs,
scale, status, down); the store is read directly only to poll for a state. The tests run in
file order and build on each other: the demo app, its hostnames, load balancing over the
VIP, `deploy/NAME` references, crash back-off, readiness, bad input, scale-down, and last
`ketch down` (nothing left) and `ketch up` again (the same pods back). A `finally` runs
`ketch down` and removes whatever is left by the cluster's name.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster import fabric, process
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import UTS_RUN_DIR, ClusterLayout
from ketch.store.base import NotFoundError
from ketch.store.sqlite import SqliteStore
from tests.prereq import needs_tool

pytestmark = [needs_tool("nft"), needs_tool("nsenter"), needs_tool("curl"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "cluster-demo.yaml"
NS = "demo"
WEB_URL = "http://web.demo.svc.cluster.local/"


@dataclass
class Cluster:
    layout: ClusterLayout
    node_pids: dict[str, int] = field(default_factory=dict)

    @property
    def opts(self) -> list[str]:
        return ["--name", self.layout.name, "--state-dir", str(self.layout.state_dir)]

    def ketch(
        self, *args: str, ok: bool = True, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "ketch.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "COLUMNS": "250", **(env or {})},
            check=False,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"ketch {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def kubectl(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """A store verb (apply, get, scale, delete) against this cluster's store."""
        return self.ketch("--store", str(self.layout.store_path), *args, ok=ok)

    def exec(self, pod: str, script: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ketch("exec", *self.opts, "-n", NS, pod, "--", "sh", "-c", script, ok=ok)

    def up(self) -> None:
        self.ketch(
            "up",
            "--nodes",
            "2",
            "--no-mesh",
            "--no-sample",
            *self.opts,
            env={"KETCH_KUBELET_BACKOFF_BASE": "0.2"},
        )

    def pods(self) -> dict[str, dict[str, Any]]:
        s = SqliteStore(self.layout.store_path)
        try:
            return {p["metadata"]["name"]: p for p in s.list("Pod", NS).items}
        finally:
            s.close()

    def pod(self, name: str) -> dict[str, Any] | None:
        s = SqliteStore(self.layout.store_path)
        try:
            return s.get("Pod", NS, name)
        except NotFoundError:
            return None
        finally:
            s.close()

    def slice_of(self, service: str) -> list[dict[str, Any]]:
        """The endpoints of the Service's EndpointSlices."""
        s = SqliteStore(self.layout.store_path)
        try:
            items = s.list("EndpointSlice", NS).items
        finally:
            s.close()
        return [
            ep
            for sl in items
            if (sl["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == service
            for ep in sl.get("endpoints") or []
        ]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def wait_until(get: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Poll `get()` until `ok(value)`; returns that value."""
    box: list[Any] = []

    def check() -> bool:
        box[:] = [get()]
        return ok(box[0])

    wait_for(check, timeout, what)
    return box[0]


def running_ready(p: dict[str, Any] | None) -> bool:
    if p is None:
        return False
    st = p.get("status") or {}
    cs = st.get("containerStatuses") or []
    return st.get("phase") == "Running" and bool(cs) and all(c.get("ready") for c in cs)


def app_pods(c: Cluster, app: str) -> list[str]:
    return sorted(
        n for n, p in c.pods().items() if (p["metadata"].get("labels") or {}).get("app") == app
    )


def hits(c: Cluster, client: str, n: int, url: str = WEB_URL) -> Counter[str]:
    """`n` requests to `url` from inside `client`; answers counted (FAIL for an error)."""
    script = f"for i in $(seq {n}); do curl -s -m 2 {url} || echo FAIL; done"
    out = c.exec(client, script).stdout
    return Counter(line.removeprefix("hello from ").strip() for line in out.splitlines())


def _leftover_cleanup(layout: ClusterLayout) -> None:
    for pf in sv.read_pid_files(layout):
        if pf.record is not None and sv.check(pf.record) is sv.ProcState.RUNNING:
            os.kill(pf.record.pid, signal.SIGKILL)
    fabric.destroy(layout, kill_grace=1.0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    state = Path(tempfile.mkdtemp(prefix="k", dir="/tmp"))  # unix socket paths stay short
    name = "t" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(5))
    c = Cluster(ClusterLayout(state, name))
    try:
        c.up()
        c.kubectl("apply", "-f", str(DEMO))
        wait_for(
            lambda: len(c.pods()) == 5 and all(running_ready(p) for p in c.pods().values()),
            60,
            "the demo's 5 pods Running and ready",
            every=0.3,
        )
        c.node_pids = {
            role: rec.pid
            for pf in sv.read_pid_files(c.layout)
            if (rec := pf.record) is not None and (role := pf.role).startswith(sv.NODE_PREFIX)
        }
        yield c
    finally:
        try:
            c.ketch("down", *c.opts, ok=False, timeout=120)
        finally:
            _leftover_cleanup(c.layout)
            shutil.rmtree(state, ignore_errors=True)
        assert not fabric.existing_netns(c.layout)


def test_get_pods_wide_shows_the_demo_running_on_both_nodes(cluster: Cluster) -> None:
    out = cluster.kubectl("get", "pods", "-n", NS, "-o", "wide").stdout
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    header = out.splitlines()[0].split()
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "MESH"]
    assert len(rows) == 5, out
    assert {r[7] for r in rows} == {"none"}, out  # namespace demo is not labelled ambient
    assert all(r[1] == "1/1" and r[2] == "Running" for r in rows), out
    assert {r[6] for r in rows} == {"node1", "node2"}, out
    assert sum(1 for r in rows if r[0].startswith("web-")) == 3
    assert sum(1 for r in rows if r[0].startswith("client-")) == 2
    for r in rows:  # each node's pods come from its own pod CIDR
        assert r[5].startswith("10.244.1." if r[6] == "node1" else "10.244.2."), r


def test_every_pod_has_its_own_hostname(cluster: Cluster) -> None:
    client = app_pods(cluster, "client")[0]
    out = cluster.exec(
        client,
        "hostname; echo $HOSTNAME; python3 -c 'import socket; print(socket.gethostname())'; "
        'grep -c "$(hostname)" /etc/hosts',
    ).stdout.split()
    assert out == [client, client, client, "1"]
    # the machine's own hostname is untouched
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() != client


def test_curl_by_dns_name_is_load_balanced_over_every_replica(cluster: Cluster) -> None:
    web = app_pods(cluster, "web")
    nodes = {p["spec"]["nodeName"] for p in cluster.pods().values()}
    assert nodes == {"node1", "node2"}
    for client in app_pods(cluster, "client"):  # one client per node: same and cross node
        counts = hits(cluster, client, 60)
        assert "FAIL" not in counts, counts
        assert sorted(counts) == web, counts  # answers name the pods: every replica answered
        assert min(counts.values()) >= 5, counts  # and not just once


def test_logs_and_exec_take_deploy_references(cluster: Cluster) -> None:
    web = app_pods(cluster, "web")
    for ref in ("deploy/web", "deployment/web", f"pod/{web[0]}", web[0]):
        r = cluster.ketch("exec", *cluster.opts, "-n", NS, ref, "--", "hostname")
        assert r.stdout.strip() in web, (ref, r.stdout)
        if ref.startswith("deploy"):
            assert "Found 3 pods, using pod/" in r.stderr
        else:
            assert r.stdout.strip() == web[0]
    # the web servers log each request (http.server writes them to stderr)
    r = cluster.ketch("logs", *cluster.opts, "-n", NS, "deploy/web")
    assert '"GET / HTTP/1.1" 200' in r.stdout
    bad = cluster.ketch("logs", *cluster.opts, "-n", NS, "deploy/nope", ok=False)
    assert bad.returncode != 0
    assert "deployment/nope not found in namespace demo" in bad.stderr
    bad = cluster.ketch("logs", *cluster.opts, "-n", NS, "svc/web", ok=False)
    assert bad.returncode != 0
    assert "use pod/NAME, deploy/NAME" in bad.stderr


CRASHER = """
apiVersion: v1
kind: Pod
metadata: {name: crasher, namespace: demo}
spec:
  hostname: crashy
  containers:
    - name: app
      command: [sh, -c, "echo run $(hostname) $HOSTNAME; exit 3"]
"""


def test_an_exiting_process_is_restarted_with_back_off(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "crasher.yaml").write_text(CRASHER)
    cluster.kubectl("apply", "-f", str(tmp_path / "crasher.yaml"))
    delays: list[float] = []

    def restarted() -> bool:
        p = cluster.pod("crasher") or {}
        cs = ((p.get("status") or {}).get("containerStatuses") or [{}])[0]
        waiting = (cs.get("state") or {}).get("waiting") or {}
        m = re.match(r"back-off ([0-9.]+)s", waiting.get("message") or "")
        if m and float(m.group(1)) not in delays:
            delays.append(float(m.group(1)))
        return cs.get("restartCount", 0) >= 3 and len(delays) >= 3

    wait_for(restarted, 30, "crasher restarted 3 times", every=0.05)
    assert delays == sorted(delays), delays  # a growing back-off
    assert delays[-1] > delays[0], delays
    p = cluster.pod("crasher") or {}
    cs = p["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    prev = cluster.ketch("logs", *cluster.opts, "-n", NS, "crasher", "--previous").stdout
    assert prev == "run crashy crashy\n"  # spec.hostname is the pod's hostname
    cluster.kubectl("delete", "pod", "crasher", "-n", NS)


GATE = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: gate, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: gate}}
  template:
    metadata: {labels: {app: gate}}
    spec:
      containers:
        - name: gate
          command: ["python3", "-c"]
          args:
            - |
              import http.server, os, socket
              down = os.path.join("@DIR@", socket.gethostname())
              class H(http.server.BaseHTTPRequestHandler):
                  def do_GET(self):
                      bad = self.path == "/healthz" and os.path.exists(down)
                      body = f"hello from {socket.gethostname()}\\n".encode()
                      self.send_response(503 if bad else 200)
                      self.send_header("Content-Length", str(len(body)))
                      self.end_headers()
                      self.wfile.write(body)
                  def log_message(self, *args):
                      pass
              http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 1
            failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {name: gate, namespace: demo}
spec:
  selector: {app: gate}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_a_failing_readiness_probe_removes_the_pod_from_the_endpoints(
    cluster: Cluster, tmp_path: Path
) -> None:
    flags = tmp_path / "down"
    flags.mkdir()
    (tmp_path / "gate.yaml").write_text(GATE.replace("@DIR@", str(flags)))
    cluster.kubectl("apply", "-f", str(tmp_path / "gate.yaml"))
    url = "http://gate/"  # the short name, through the pod's search path
    wait_for(
        lambda: (
            len(g := app_pods(cluster, "gate")) == 2
            and all(running_ready(cluster.pod(n)) for n in g)
        ),
        30,
        "both gate pods ready",
    )
    gate = app_pods(cluster, "gate")
    client = app_pods(cluster, "client")[0]
    wait_for(lambda: set(hits(cluster, client, 20, url)) == set(gate), 10, "both behind the VIP")

    (flags / gate[0]).touch()  # its /healthz now answers 503
    wait_for(
        lambda: (
            {
                ep["targetRef"]["name"]: ep["conditions"]["ready"]
                for ep in cluster.slice_of("gate")
            }.get(gate[0])
            is False
        ),
        10,
        f"{gate[0]} not ready in the EndpointSlice",
    )
    pod = cluster.pod(gate[0]) or {}
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    counts = wait_until(
        lambda: hits(cluster, client, 20, url),
        lambda h: set(h) == {gate[1]},
        5,
        "the VIP answering from the ready pod only",
    )
    assert counts[gate[1]] == 20

    (flags / gate[0]).unlink()  # ready again: back behind the VIP
    wait_for(lambda: set(hits(cluster, client, 20, url)) == set(gate), 10, "both back")
    cluster.kubectl("delete", "deployment", "gate", "-n", NS)
    cluster.kubectl("delete", "service", "gate", "-n", NS)


IMAGE_ONLY = """
apiVersion: v1
kind: Pod
metadata: {name: imageonly, namespace: demo}
spec:
  containers:
    - {name: web, image: nginx}
"""

NO_NODE = """
apiVersion: v1
kind: Pod
metadata: {name: nowhere, namespace: demo}
spec:
  nodeName: node9
  containers:
    - {name: app, command: [sleep, infinity]}
"""

PORT_CLASH = """
apiVersion: v1
kind: Pod
metadata: {name: clash, namespace: demo}
spec:
  containers:
    - name: a
      command: [python3, -m, http.server, "8081"]
      ports: [{containerPort: 8081}]
    - name: b
      command: [python3, -m, http.server, "8081"]
      ports: [{containerPort: 8081}]
"""


def test_bad_input_gets_located_errors_and_never_takes_a_node_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    for name, text in (("image", IMAGE_ONLY), ("nonode", NO_NODE), ("clash", PORT_CLASH)):
        (tmp_path / f"{name}.yaml").write_text(text)

    # a container with only an image: refused at apply, naming the field, saying what to do
    r = cluster.kubectl("apply", "-f", str(tmp_path / "image.yaml"), ok=False)
    assert r.returncode != 0
    assert "image.yaml doc 1: spec.containers[0].command" in r.stderr
    assert "has image 'nginx' but no command" in r.stderr
    assert "command: [" in r.stderr
    assert cluster.pod("imageonly") is None

    # an unknown node: stored, and the pod says why it does not run
    cluster.kubectl("apply", "-f", str(tmp_path / "nonode.yaml"))

    def not_found() -> dict[str, Any] | None:
        p = cluster.pod("nowhere") or {}
        for cond in (p.get("status") or {}).get("conditions") or []:
            if cond["type"] == "PodScheduled" and cond.get("reason") == "NodeNotFound":
                return dict(cond)
        return None

    cond = wait_for(not_found, 15, "PodScheduled=False NodeNotFound")
    assert cond["status"] == "False"
    assert "node9" in cond["message"]
    assert "remove spec.nodeName" in cond["message"]

    # two containers on one port: accepted with Kubernetes' warning; at run time the second
    # cannot bind, crash-loops, and says why in its previous log
    r = cluster.kubectl("apply", "-f", str(tmp_path / "clash.yaml"))
    assert (
        "clash.yaml doc 1: spec.containers[1].ports[0]: duplicate port definition with "
        "spec.containers[0].ports[0]" in r.stderr
    )

    def crash_looping() -> bool:
        rows = cluster.kubectl("get", "pods", "-n", NS, "clash").stdout.splitlines()
        return len(rows) == 2 and rows[1].split()[2] == "CrashLoopBackOff"

    wait_for(crash_looping, 30, "clash CrashLoopBackOff in get pods", every=0.3)
    p = cluster.pod("clash") or {}
    statuses = {c["name"]: c for c in p["status"]["containerStatuses"]}
    loser = "b" if statuses["b"]["restartCount"] > 0 else "a"
    assert statuses["a" if loser == "b" else "b"]["restartCount"] == 0
    prev = cluster.ketch("logs", *cluster.opts, "-n", NS, "clash", "-c", loser, "--previous")
    assert "Address already in use" in prev.stdout

    # no crash took a node process down
    now = {
        pf.role: pf.record.pid
        for pf in sv.read_pid_files(cluster.layout)
        if pf.record is not None and pf.role.startswith(sv.NODE_PREFIX)
    }
    assert now == cluster.node_pids
    st = cluster.ketch("status", *cluster.opts)
    assert st.returncode == 0
    assert st.stdout.count("Ready") >= 2
    for name in ("nowhere", "clash"):
        cluster.kubectl("delete", "pod", name, "-n", NS)


def test_a_rolling_update_replaces_every_pod_behind_the_vip(
    cluster: Cluster, tmp_path: Path
) -> None:
    old = app_pods(cluster, "web")
    text = DEMO.read_text()
    marker = "          ports:\n            - {name: http, containerPort: 8080}"
    assert text.count(marker) == 1
    v2 = text.replace(marker, '          env: [{name: VERSION, value: "2"}]\n' + marker)
    (tmp_path / "demo-v2.yaml").write_text(v2)
    cluster.kubectl("apply", "-f", str(tmp_path / "demo-v2.yaml"))

    def rolled() -> list[str] | None:
        web = app_pods(cluster, "web")
        pods = cluster.pods()
        done = len(web) == 3 and not set(web) & set(old)
        return web if done and all(running_ready(pods[n]) for n in web) else None

    new = wait_for(rolled, 60, "3 new web pods ready, the old ones gone", every=0.3)
    for name in new:
        env = (cluster.pod(name) or {})["spec"]["containers"][0].get("env")
        assert env == [{"name": "VERSION", "value": "2"}]
    client = app_pods(cluster, "client")[0]
    wait_until(lambda: hits(cluster, client, 30), lambda h: sorted(h) == new, 10, "new pods")
    out = cluster.kubectl("get", "deploy", "web", "-n", NS).stdout.splitlines()[1].split()
    assert out[1:4] == ["3/3", "3", "3"], out  # READY, UP-TO-DATE, AVAILABLE


def test_scale_down_endpoints_and_vip_follow(cluster: Cluster) -> None:
    client = app_pods(cluster, "client")[0]
    t0 = time.monotonic()
    cluster.kubectl("scale", "deploy/web", "--replicas", "1", "-n", NS)
    eps = wait_until(lambda: cluster.slice_of("web"), lambda e: len(e) == 1, 5, "one endpoint")
    slice_after = time.monotonic() - t0
    left = eps[0]["targetRef"]["name"]
    counts = wait_until(
        lambda: hits(cluster, client, 20),
        lambda h: set(h) == {left},
        5,
        f"every request answered by {left}",
    )
    assert counts[left] == 20
    print(f"scale-down: EndpointSlice followed {slice_after:.2f}s after `ketch scale` began")
    wait_for(lambda: app_pods(cluster, "web") == [left], 30, "the other web pods gone")


def _pod_processes(c: Cluster) -> list[tuple[int, int | None]]:
    """(pid, start ticks) of every container process the kubelets recorded."""
    found = []
    for record in (c.layout.cluster_dir / "pods").glob("*/kubelet.json"):
        for entry in json.loads(record.read_text()).get("processes", {}).values():
            found.append((entry["pid"], entry["start"]))
    return found


def test_down_leaves_nothing_and_up_brings_the_same_pods_back(cluster: Cluster) -> None:
    layout = cluster.layout
    before = {n for n, p in cluster.pods().items() if running_ready(p)}
    assert len(before) >= 3  # web (3, or 1 after the scale test) and two clients
    procs = _pod_processes(cluster)
    daemons = [pf.record for pf in sv.read_pid_files(layout) if pf.record is not None]
    veths = [layout.pod_veth(p["metadata"]["uid"]) for p in cluster.pods().values()]
    assert procs
    assert daemons

    # everything above (crashes, bad input, probes, deletes) left no traceback in any log
    for log in (layout.cluster_dir / "logs").glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log

    cluster.ketch("down", *cluster.opts)
    assert fabric.existing_netns(layout) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{layout.name}-" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not [v for v in veths if v in links]
    etc = Path("/etc/netns")
    assert not [
        d for d in (etc.iterdir() if etc.exists() else []) if d.name.startswith(layout.name + "-")
    ]
    uts = [
        f
        for f in (UTS_RUN_DIR.iterdir() if UTS_RUN_DIR.exists() else [])
        if f.name.startswith(layout.name + "-")
    ]
    assert not uts
    for pid, ticks in procs:
        assert not process.same_process(pid, ticks), f"container process {pid} survived"
    for rec in daemons:
        assert sv.check(rec) is not sv.ProcState.RUNNING, f"{rec.role} survived"

    cluster.up()
    wait_for(
        lambda: (
            {n for n, p in cluster.pods().items() if running_ready(p)} == before
            and set(cluster.pods()) == before
        ),
        60,
        "the same pods Running again",
        every=0.3,
    )
    out = cluster.kubectl("get", "pods", "-n", NS, "-o", "wide").stdout
    assert sorted(line.split()[0] for line in out.splitlines()[1:]) == sorted(before)
    client = app_pods(cluster, "client")[0]
    left = app_pods(cluster, "web")
    wait_until(lambda: hits(cluster, client, 5), lambda h: set(h) == set(left), 10, "the VIP")
