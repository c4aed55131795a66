"""End to end over the real path: a real control plane process with `--xds`, two node
netns with a pod each, two real `ketch ztunnel run --control-plane` processes joined with
bootstrap tokens, pods enrolled from `--pods` files (the ZDS stand-in), the mesh written
with `ketch apply`, and traffic between the pods through HBONE, by pod IP and by service
VIP; then an AuthorizationPolicy applied and deleted through the store takes effect on
new connections within seconds.

On the same harness (`_bring_up`): the control plane SIGKILLed and restarted (the proxies
serve on their last state, then resync with nothing resent), a resource the proxies reject
(NACKed by name, ERROR in `ketch proxy-status`, the rest of the push applied), and
`ketch node revoke` (the node's stream ends, no more config or certificates for it).
"""

from __future__ import annotations

import json
import os
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
import yaml

from ketch.netns import install_rules
from ketch.netns.fabric import Fabric, Node, Pod
from ketch.xds.types import ADDRESS_TYPE as ADDRESS
from ketch.xds.types import AUTHORIZATION_TYPE as AUTHORIZATION
from tests.integration.conftest import node_http, two_enrolled_nodes_with_web, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KETCH = str(Path(sys.executable).with_name("ketch"))
TD = "cluster.local"
MTLS = 'connection_security_policy="mutual_tls"'
OPENED = "istio_tcp_connections_opened_total{"


def _deadline(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end


@dataclass
class Mesh:
    fabric: Fabric
    node1: Node
    node2: Node
    a: Pod
    b: Pod
    state: Path  # the control plane's state dir (sockets, ketch.db, CA)
    logs: Path
    env: dict[str, str]
    plane: subprocess.Popen[Any] | None = None
    plane_log_at: int = 0  # where the plane's log of its current run starts
    proxies: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    # ---------------------------------------------------------------- the CLI, the store

    def ketch(self, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run(
            [KETCH, *args], input=stdin, capture_output=True, text=True, env=self.env, timeout=60
        )
        assert r.returncode == 0, f"ketch {' '.join(args)}: {r.stderr}"
        return r.stdout

    def apply(self, *docs: dict[str, Any]) -> None:
        self.ketch("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    # ---------------------------------------------------------------- processes

    def start_plane(self) -> None:
        """Start the control plane (again: same state dir, its log appended to) and wait
        until it serves xDS. A restart after SIGKILL finds the old sockets still there, so
        "up" is the plane's own log line, written after this start."""
        path = self.logs / "plane.log"
        self.plane_log_at = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")  # noqa: SIM115
        argv = [KETCH, "control-plane", "run", "--xds", "--state-dir", str(self.state)]
        argv += ["--xds-revalidate", "1"]  # a revoked node loses its stream within 1 s
        self.plane = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        alive = _deadline(30)
        while "xDS (delta ADS) serving" not in self.plane_log():
            assert self.plane.poll() is None, self.log("plane")
            assert alive(), "control plane did not start:\n" + self.log("plane")
            time.sleep(0.05)
        assert all((self.state / s).exists() for s in ("ca.sock", "join.sock"))
        assert not (self.state / "xds.sock").exists()  # xDS shares ca.sock (istiod's 15012)

    def plane_log(self) -> str:
        """The control plane's log since its last start."""
        return self.log("plane")[self.plane_log_at :]

    def kill_plane(self) -> None:
        assert self.plane is not None
        self.plane.send_signal(signal.SIGKILL)
        self.plane.wait(timeout=10)

    def pods_file(self, node: Node, *pods: Pod) -> Path:
        path = self.state / f"pods-{node.name}.yaml"
        doc = [
            {"name": p.name, "namespace": "app", "serviceAccount": p.name, "netns": p.netns}
            for p in pods
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, path)
        return path

    def start_proxy(self, node: Node, token: str, pods: Path) -> None:
        log = open(self.logs / f"{node.name}.log", "wb")  # noqa: SIM115
        self.proxies[node.name] = node.exec(
            [
                KETCH,
                "ztunnel",
                "run",
                "--control-plane",
                f"unix://{self.state / 'ca.sock'}",
                "--token",
                token,
                "--node",
                node.name,
                "--node-ip",
                node.ip,
                "--node-dir",
                str(self.state / f"node-{node.name}"),
                "--pods",
                str(pods),
                "--reload-interval",
                "0.2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs_all(self) -> str:
        return "\n".join(
            f"===== {n}\n{self.log(n)[-6000:]}" for n in ("plane", self.node1.name, self.node2.name)
        )

    def stop_plane(self) -> int | None:
        if self.plane is None or self.plane.poll() is not None:
            return self.plane.returncode if self.plane else None
        self.plane.send_signal(signal.SIGTERM)
        try:
            return self.plane.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.plane.kill()
            self.plane.wait()
            return None

    # ---------------------------------------------------------------- node endpoints

    def http(self, node: Node, port: int, path: str) -> tuple[int, str]:
        return node_http(node, port, path)

    def dump(self, node: Node) -> dict[str, Any]:
        code, body = self.http(node, 15000, "/config_dump")
        return json.loads(body) if code == 200 else {}

    def metric_lines(self, node: Node, *needles: str) -> list[str]:
        _, text = self.http(node, 15020, "/metrics")
        return [
            ln
            for ln in text.splitlines()
            if ln.startswith(OPENED) and all(n in ln for n in needles)
        ]

    def ready(self, node: Node) -> bool:
        return self.http(node, 15021, "/healthz/ready")[0] == 200

    def vip(self, service: str) -> str:
        obj = json.loads(self.ketch("get", "service", service, "-n", "app", "-o", "json"))
        return str(obj["spec"]["clusterIP"])

    def store_names(self) -> dict[str, list[str]]:
        """What the store says each proxy must hold, by xDS resource name, sorted."""

        def items(kind: str) -> list[dict[str, Any]]:
            return list(json.loads(self.ketch("get", kind, "-A", "-o", "json"))["items"])

        def ns_name(o: dict[str, Any]) -> tuple[str, str]:
            return o["metadata"].get("namespace", "default"), o["metadata"]["name"]

        return {
            "workloads": sorted(
                "Kubernetes//Pod/{}/{}".format(*ns_name(o))
                for o in items("pods")
                if o.get("status", {}).get("podIP")
            ),
            "services": sorted(
                "{0}/{1}.{0}.svc.cluster.local".format(*ns_name(o)) for o in items("services")
            ),
            "policies": sorted("{}/{}".format(*ns_name(o)) for o in items("authorizationpolicies")),
        }

    def dump_names(self, node: Node) -> dict[str, list[str]]:
        """What a proxy holds (duplicates kept, so that they show)."""
        d = self.dump(node)
        return {
            "workloads": sorted(w["uid"] for w in d.get("workloads", [])),
            "services": sorted(f"{s['namespace']}/{s['hostname']}" for s in d.get("services", [])),
            "policies": sorted(f"{p['namespace']}/{p['name']}" for p in d.get("policies", [])),
        }

    def set_log_level(self, node: Node, spec: str) -> None:
        r = node.run(
            ["curl", "-sS", "-f", "-X", "POST", f"http://127.0.0.1:15000/logging?level={spec}"],
            check=False,
        )
        assert r.returncode == 0, r.stderr

    def curl_from_a(self, url: str, timeout: float = 3) -> subprocess.CompletedProcess[str]:
        return self.a.run(["curl", "-sS", "--max-time", str(timeout), url], check=False)

    def wait(
        self, what: str, cond: Callable[[], object], within: float = 20, *, plane: bool = True
    ) -> None:
        """Poll `cond` until true; the proxies (and, unless `plane=False`, the control
        plane) must stay up meanwhile."""
        alive = _deadline(within)
        while not cond():
            for name, proc in self.proxies.items():
                assert proc.poll() is None, f"proxy on {name} exited:\n{self.logs_all()}"
            if plane:
                assert self.plane is not None
                assert self.plane.poll() is None, self.logs_all()
            assert alive(), f"{what}: not within {within}s\n{self.logs_all()}"
            time.sleep(0.2)


def _pod(p: Pod, node: Node) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": "app",
            "labels": {"app": p.name},
            "annotations": {"ambient.istio.io/redirection": "enabled"},
        },
        "spec": {
            "nodeName": node.name,
            "serviceAccountName": p.name,
            "containers": [{"name": "main", "command": ["sleep", "infinity"]}],
        },
        # kept by `ketch apply` on create (server-set status is kept only on update)
        "status": {
            "phase": "Running",
            "podIP": p.ip,
            "podIPs": [{"ip": p.ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "app"},
    "spec": {"selector": {"app": "b"}, "ports": [{"port": 80, "targetPort": 8080}]},
}
DENY_A = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny-a", "namespace": "app"},
    "spec": {
        "action": "DENY",
        "rules": [{"from": [{"source": {"principals": [f"{TD}/ns/app/sa/a"]}}]}],
    },
}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    state = Path(tempfile.mkdtemp(prefix="kx-"))  # unix socket paths are short
    fab = Fabric(unique_prefix("x"))
    m: Mesh | None = None
    try:
        n1, n2, a, b = two_enrolled_nodes_with_web(fab, tmp_path / "www")
        logs = tmp_path / "logs"
        logs.mkdir()
        env = {**os.environ, "KETCH_STORE": str(state / "ketch.db")}
        m = Mesh(fab, n1, n2, a, b, state, logs, env)
        yield m
    finally:
        fab.close()  # the node proxies first (started in the fabric), by PID
        if m is not None:
            m.stop_plane()
        shutil.rmtree(state, ignore_errors=True)


def _bring_up(m: Mesh) -> str:
    """The control plane, the mesh (pods a and b, Service web) in its store, both node
    proxies joined, synced, holding the mesh and ready. Returns web's VIP."""
    m.start_plane()
    tokens = {
        n.name: m.ketch("node", "token", "create", n.name).strip() for n in (m.node1, m.node2)
    }
    m.apply(NAMESPACE, _pod(m.a, m.node1), _pod(m.b, m.node2), SERVICE)
    vip = m.vip("web")
    m.start_proxy(m.node1, tokens["node1"], m.pods_file(m.node1, m.a))
    m.start_proxy(m.node2, tokens["node2"], m.pods_file(m.node2, m.b))

    # joined, xDS from ca.sock (certificates and xDS on one listener), both types ACKed; the
    # pod from --pods is enrolled
    for node, pod in ((m.node1, m.a), (m.node2, m.b)):
        m.wait(
            f"{node.name} synced",
            lambda node=node: m.dump(node).get("xds", {}).get("synced") is True,
        )
        xds = m.dump(node)["xds"]
        assert xds["target"] == f"unix:{m.state / 'ca.sock'}"
        assert xds["nacks"] == 0, xds
        assert (m.state / f"node-{node.name}" / "node-key.pem").exists()
        assert [p["name"] for p in m.dump(node)["pods"]] == [pod.name]

    # the snapshot: both workloads and the service, on both nodes
    def has_mesh(node: Node) -> bool:
        dump = m.dump(node)
        names = {w["name"] for w in dump.get("workloads", [])}
        return {"a", "b"} <= names and any(s.get("name") == "web" for s in dump["services"])

    m.wait("workloads pushed", lambda: has_mesh(m.node1) and has_mesh(m.node2), within=15)

    # readiness: synced and every pod enrolled
    for node in (m.node1, m.node2):
        m.wait(f"{node.name} ready", lambda node=node: m.ready(node))
    return vip


def test_control_plane_to_node_proxies_over_xds(mesh: Mesh) -> None:
    m = mesh
    vip = _bring_up(m)

    # by pod IP, through HBONE: mutual TLS at the destination with the pods' identities
    r = m.curl_from_a(f"http://{m.b.ip}:8080/", timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    (line,) = m.metric_lines(m.node2, 'reporter="destination"', MTLS)
    assert f'source_principal="spiffe://{TD}/ns/app/sa/a"' in line
    assert f'destination_principal="spiffe://{TD}/ns/app/sa/b"' in line

    # by the service VIP (port 80 -> targetPort 8080)
    r = m.curl_from_a(f"http://{vip}:80/", timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    assert m.metric_lines(m.node1, 'reporter="source"', 'destination_service_name="web"', MTLS)

    # a DENY policy through the store refuses a's new connections within seconds ...
    m.apply(DENY_A)
    m.wait("deny-a enforced", lambda: m.curl_from_a(f"http://{m.b.ip}:8080/").returncode != 0)
    assert m.curl_from_a(f"http://{vip}:80/").returncode != 0
    assert "denied by DENY policy app/deny-a" in m.log(m.node2.name)
    # ... and deleting it restores access
    m.ketch("delete", "authorizationpolicy", "deny-a", "-n", "app")
    m.wait("deny-a lifted", lambda: m.curl_from_a(f"http://{m.b.ip}:8080/").returncode == 0)
    r = m.curl_from_a(f"http://{vip}:80/")
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr

    # the --pods file is followed: a pod taken out is un-enrolled (its traffic then fails
    # closed, the redirection rules stay), put back it is served again
    m.pods_file(m.node1)
    m.wait("a un-enrolled", lambda: "pod app/a (Kubernetes//Pod/app/a) removed" in m.log("node1"))
    assert m.dump(m.node1)["pods"] == []
    assert m.curl_from_a(f"http://{m.b.ip}:8080/").returncode != 0
    m.pods_file(m.node1, m.a)
    m.wait("a back", lambda: m.curl_from_a(f"http://{m.b.ip}:8080/").returncode == 0)
    for node in (m.node1, m.node2):
        assert m.dump(node)["xds"]["nacks"] == 0

    # `ketch ztunnel-config` reads an xDS-fed proxy as it reads a file-fed one
    out = m.ketch("ztunnel-config", "workloads", "--netns", m.node1.netns, "-o", "json")
    doc = json.loads(out)
    rows = {w["uid"]: w for w in doc["workloads"]}
    assert rows["Kubernetes//Pod/app/a"]["protocol"] == "HBONE", rows
    assert rows["Kubernetes//Pod/app/b"]["node"] == "node2", rows


APPLIED = "xds {}: {} upserted, {} removed, {} rejected"


def test_control_plane_killed_and_restarted(mesh: Mesh) -> None:
    """SIGKILL the control plane: the proxies keep serving on their last state (new
    connections too) and stay ready. Restarted on the same state dir, both reconnect with
    `initial_resource_versions`, get nothing they already hold (one empty answer per type),
    hold exactly what the store says, and take a change made after the restart."""
    m = mesh
    vip = _bring_up(m)
    for node in (m.node1, m.node2):
        # StateApplier logs every applied response at debug: the evidence of what was resent
        m.set_log_level(node, "ketch.ztunnel.xds:debug")
    r = m.curl_from_a(f"http://{m.b.ip}:8080/", timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    held = {node.name: m.dump_names(node) for node in (m.node1, m.node2)}
    assert held["node1"] == held["node2"] == m.store_names(), held

    m.kill_plane()
    for node in (m.node1, m.node2):
        m.wait(
            f"{node.name} saw the plane go",
            lambda node=node: m.dump(node)["xds"]["connected"] is False,
            plane=False,
        )
    # the last state keeps serving: new connections by pod IP and by VIP, through HBONE
    opened = len(m.metric_lines(m.node2, 'reporter="destination"', MTLS))
    for url in (f"http://{m.b.ip}:8080/", f"http://{vip}:80/"):
        r = m.curl_from_a(url, timeout=10)
        assert (r.returncode, r.stdout) == (0, "hello from b\n"), url + r.stderr + m.logs_all()
    assert len(m.metric_lines(m.node2, 'reporter="destination"', MTLS)) >= opened
    for node in (m.node1, m.node2):
        assert m.ready(node), m.logs_all()
        dump = m.dump(node)
        assert dump["xds"]["synced"] is True
        assert dump["xds"]["lastError"], dump["xds"]  # it did notice
        assert m.dump_names(node) == held[node.name]
    responses = {n.name: m.dump(n)["xds"]["responses"] for n in (m.node1, m.node2)}
    log_at = {n.name: len(m.log(n.name)) for n in (m.node1, m.node2)}
    time.sleep(2)  # a few reconnect attempts against the dead socket, with backoff

    m.start_plane()
    for node in (m.node1, m.node2):
        m.wait(
            f"{node.name} reconnected",
            lambda node=node: (
                f"opened by node {node.name} " in m.plane_log()
                and m.dump(node)["xds"]["connected"] is True
                and m.dump(node)["xds"]["responses"] >= responses[node.name] + 2
            ),
            within=40,
        )
    time.sleep(1)  # anything (wrongly) resent would arrive right behind the first answers
    for node in (m.node1, m.node2):
        xds = m.dump(node)["xds"]
        # exactly one answer per type, both empty: the plane rebuilt the same versions and
        # sent nothing the proxy announced in initial_resource_versions
        assert xds["responses"] == responses[node.name] + 2, xds
        since = m.log(node.name)[log_at[node.name] :]
        applied = [ln for ln in since.splitlines() if "upserted" in ln]
        assert len(applied) == 2, since
        assert any(APPLIED.format("Address", 0, 0, 0) in ln for ln in applied), since
        assert any(APPLIED.format("Authorization", 0, 0, 0) in ln for ln in applied), since
        assert xds["nacks"] == 0, xds
        assert m.dump_names(node) == m.store_names(), m.dump_names(node)
        assert m.ready(node)
    # one stream per node on the new plane, both SYNCED
    status = json.loads(m.ketch("proxy-status", "--state-dir", str(m.state), "-o", "json"))
    assert sorted(row["node"] for row in status) == ["node1", "node2"], status
    for row in status:
        assert {t["status"] for t in row["types"].values()} == {"SYNCED"}, row

    # a change after the restart takes effect
    m.apply(DENY_A)
    m.wait("deny-a enforced", lambda: m.curl_from_a(f"http://{m.b.ip}:8080/").returncode != 0)
    assert m.curl_from_a(f"http://{vip}:80/").returncode != 0
    assert "denied by DENY policy app/deny-a" in m.log(m.node2.name)
    for node in (m.node1, m.node2):
        m.wait(f"{node.name} has deny-a", lambda node=node: m.dump_names(node) == m.store_names())
        assert m.store_names()["policies"] == ["app/deny-a"]


def test_rejected_resource_is_nacked_and_does_not_block_the_rest(mesh: Mesh) -> None:
    """A Pod claiming pod a's IP is translated into a workload the proxies reject (the
    address is held by a's workload): the push that carries it also carries a new Service,
    which is applied; the NACK names the workload and why, `ketch proxy-status` shows
    ERROR with that message, later pushes still apply, and deleting the clash clears it."""
    m = mesh
    _bring_up(m)
    clash = _pod(m.a, m.node1)
    clash["metadata"]["name"] = "a2"
    clash["metadata"]["labels"] = {"app": "a2"}
    web2 = {**SERVICE, "metadata": {"name": "web2", "namespace": "app"}}
    m.apply(clash, web2)  # one apply, one push
    vip2 = m.vip("web2")
    uid = "Kubernetes//Pod/app/a2"
    reason = f"{uid}: address {m.a.ip} is also claimed by Kubernetes//Pod/app/a"

    for node in (m.node1, m.node2):
        m.wait(f"{node.name} NACKed a2", lambda node=node: m.dump(node)["xds"]["nacks"] >= 1)
        xds = m.dump(node)["xds"]
        assert xds["lastNack"] == reason, xds
        names = m.dump_names(node)
        # the Service of the same push is held; a keeps its address; a2 is not held
        assert "app/web2.app.svc.cluster.local" in names["services"], names
        assert uid not in names["workloads"], names
        assert m.ready(node)  # a rejected resource after the first sync does not unready
        (a,) = [w for w in m.dump(node)["workloads"] if w["name"] == "a"]
        assert a["workloadIps"] == [m.a.ip]
        assert f"xds istio.workload.Address {uid} rejected: address {m.a.ip}" in m.log(node.name)
    r = m.curl_from_a(f"http://{vip2}:80/", timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()

    def status() -> dict[str, dict[str, dict[str, Any]]]:
        rows = json.loads(m.ketch("proxy-status", "--state-dir", str(m.state), "-o", "json"))
        return {row["node"]: row["types"] for row in rows}

    m.wait(
        "proxy-status shows the NACK",
        lambda: [t[ADDRESS]["status"] for t in status().values()] == ["ERROR", "ERROR"],
    )
    for node, types in status().items():
        assert types[ADDRESS]["error"] == reason, (node, types)
        assert types[AUTHORIZATION]["status"] == "SYNCED", (node, types)
    table = m.ketch("proxy-status", "--state-dir", str(m.state))
    assert table.count("ERROR") == 2, table

    # the NACK blocks nothing later: a policy applied now is enforced
    m.apply(DENY_A)
    m.wait("deny-a enforced", lambda: m.curl_from_a(f"http://{m.b.ip}:8080/").returncode != 0)
    # deleting the clashing pod: the plane sends the removal, the proxies ACK, SYNCED again
    m.ketch("delete", "pod", "a2", "-n", "app")
    m.wait(
        "proxy-status SYNCED again",
        lambda: [t[ADDRESS]["status"] for t in status().values()] == ["SYNCED", "SYNCED"],
    )
    for node in (m.node1, m.node2):
        assert m.dump_names(node) == m.store_names()


def test_node_revoke_ends_its_stream(mesh: Mesh) -> None:
    """`ketch node revoke node1` (another process: the plane finds out at its periodic
    revalidation, `--xds-revalidate`, 1 s here) ends node1's xDS stream; its reconnects are refused, so it gets no
    further config, and the certificate service signs nothing for its pods. node2 keeps
    its stream, its config and its certificates."""
    m = mesh
    _bring_up(m)
    # pods c (node1) and d (node2) in the store, known to both proxies, not yet enrolled
    c, d = m.fabric.add_pod(m.node1, "c"), m.fabric.add_pod(m.node2, "d")
    for p in (c, d):
        install_rules(p.netns)
    m.apply(_pod(c, m.node1), _pod(d, m.node2))
    for node in (m.node1, m.node2):
        m.wait(f"{node.name} has c, d", lambda node=node: m.dump_names(node) == m.store_names())
    held1 = m.dump_names(m.node1)

    def xds_column() -> dict[str, str]:
        out = m.ketch("node", "list", "--state-dir", str(m.state)).splitlines()[1:]
        return {line.split()[0]: line[70:].strip() for line in out}  # NAME 30, ENROLMENT 40

    listed = xds_column()
    assert listed["node1"].startswith("connected since"), listed
    assert listed["node2"].startswith("connected since"), listed

    m.ketch("node", "revoke", "node1", "--state-dir", str(m.state))
    m.wait(
        "node1's stream ended",
        lambda: "ended the xDS streams of node node1: its certificate is revoked" in m.plane_log(),
        within=10,  # --xds-revalidate 1
    )
    assert "ended the xDS streams of node node2" not in m.plane_log()
    m.wait(
        "node1 refused on reconnect",
        lambda: (m.dump(m.node1)["xds"]["lastError"] or "").startswith("UNAUTHENTICATED"),
    )
    assert m.dump(m.node1)["xds"]["connected"] is False
    rows = json.loads(m.ketch("proxy-status", "--state-dir", str(m.state), "-o", "json"))
    assert [row["node"] for row in rows] == ["node2"], rows
    assert m.dump(m.node2)["xds"]["connected"] is True
    listed = xds_column()
    assert listed["node1"] == "not connected", listed
    assert listed["node2"].startswith("connected since"), listed

    # new config reaches node2 only; node1 keeps its last state
    web3 = {**SERVICE, "metadata": {"name": "web3", "namespace": "app"}}
    m.apply(web3)
    m.wait("node2 has web3", lambda: m.dump_names(m.node2) == m.store_names())

    # certificates: d's on node2 is issued, c's on node1 is refused
    m.pods_file(m.node1, m.a, c)
    m.pods_file(m.node2, m.b, d)

    def cert_state(node: Node, sa: str) -> str | None:
        for cert in m.dump(node).get("certificates", []):
            if cert["identity"] == f"spiffe://{TD}/ns/app/sa/{sa}":
                return str(cert["state"])
        return None

    m.wait("d's certificate on node2", lambda: cert_state(m.node2, "d") == "Available")
    m.wait(
        "c's certificate refused on node1",
        lambda: (cert_state(m.node1, "c") or "").startswith("Unavailable: "),
    )
    assert "node certificate of node1 was revoked" in (cert_state(m.node1, "c") or "")
    assert cert_state(m.node1, "a") == "Available"  # the one it had stays in use
    (pc,) = [p for p in m.dump(m.node1)["pods"] if p["name"] == "c"]
    assert pc["state"] == "waiting_for_certificate", pc  # c is not served
    m.wait(
        "d served on node2",
        lambda: [p["state"] for p in m.dump(m.node2)["pods"] if p["name"] == "d"] == ["ready"],
    )

    assert m.dump_names(m.node1) == held1  # nothing new arrived on node1
    assert m.dump(m.node1)["xds"]["connected"] is False
    assert m.dump(m.node2)["xds"]["nacks"] == 0
    # the refused reconnects leave nothing behind (the request-iterator fix)
    assert "Task was destroyed but it is pending" not in m.log(m.node1.name)
