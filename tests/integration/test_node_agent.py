"""The node agent end to end: label a namespace and running pods join the mesh with no
restart; unlabel it and they leave; the node proxy killed fails closed and recovers from
the agent's snapshot; the agent restarted loses no enrollment; the kubelet's CNI event
enrolls a new pod before it starts (and is refused while no node proxy can take it).

Real parts throughout: a control plane process with xDS, two node netns with one pod each
(Python's http.server in pod b), one `ketch agent run` and one `ketch ztunnel run
--control-plane ... --zds-socket` per node, the store written with the `ketch` CLI. The
harness is test_control_plane_xds's `Mesh`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.netns import host_rules_installed, rules_installed
from ketch.netns.fabric import Fabric, Node, Pod
from tests.integration.conftest import unique_prefix
from tests.integration.test_control_plane_xds import KETCH, MTLS, NAMESPACE, SERVICE, TD, Mesh
from tests.integration.test_control_plane_xds import _pod as _annotated_pod

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REDIRECTION = "ambient.istio.io/redirection"


def _pod(p: Pod, node: Node, **labels: str) -> dict[str, Any]:
    doc = _annotated_pod(p, node)
    del doc["metadata"]["annotations"]  # the agent sets it, nobody else
    doc["metadata"]["labels"].update(labels)
    return doc


class AmbientMesh(Mesh):
    agents: dict[str, subprocess.Popen[Any]]

    def agent_dir(self, node: Node) -> Path:
        return self.state / "agent" / node.name

    def start_agent(self, node: Node) -> None:
        log = open(self.logs / f"agent-{node.name}.log", "ab")  # noqa: SIM115
        self.agents[node.name] = node.exec(
            [
                KETCH,
                "agent",
                "run",
                "--node",
                node.name,
                "--state-dir",
                str(self.state),
                "--store",
                str(self.state / "ketch.db"),
                "--netns-template",
                f"/run/netns/{self.fabric.prefix}-p-{{name}}",
                "--pod-cidr",
                str(node.pod_cidr),
                "--resync",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def start_zds_proxy(self, node: Node, token: str | None) -> None:
        log = open(self.logs / f"{node.name}.log", "ab")  # noqa: SIM115
        argv = [
            KETCH,
            "ztunnel",
            "run",
            "--control-plane",
            f"unix://{self.state / 'ca.sock'}",
            "--node",
            node.name,
            "--node-ip",
            node.ip,
            "--node-dir",
            str(self.state / f"node-{node.name}"),
            "--zds-socket",
            str(self.agent_dir(node) / "ztunnel.sock"),
        ]
        if token:
            argv += ["--token", token]
        self.proxies[node.name] = node.exec(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def logs_all(self) -> str:
        names = ["plane", self.node1.name, self.node2.name]
        names += [f"agent-{n}" for n in (self.node1.name, self.node2.name)]
        return "\n".join(f"===== {n}\n{self.log(n)[-5000:]}" for n in names)

    def annotation(self, pod: Pod) -> str | None:
        obj = json.loads(self.ketch("get", "pod", pod.name, "-n", "app", "-o", "json"))
        return (obj["metadata"].get("annotations") or {}).get(REDIRECTION)

    def served(self, node: Node) -> list[tuple[str, str]]:
        return sorted((p["name"], p["state"]) for p in self.dump(node).get("pods", []))

    def protocol(self, node: Node, name: str) -> str | None:
        for w in self.dump(node).get("workloads", []):
            if w["name"] == name:
                return str(w["protocol"])
        return None

    def mtls_in(self, node: Node) -> int:
        """Connections node's proxy accepted over HBONE (destination side, mutual TLS)."""
        total = 0
        for line in self.metric_lines(node, 'reporter="destination"', MTLS):
            total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def cmdadd(self, node: Node, pod: Pod) -> tuple[int, str]:
        """What the kubelet does while starting a pod: POST /cmdadd on the agent's socket."""
        uid = json.loads(self.ketch("get", "pod", pod.name, "-n", "app", "-o", "json"))["metadata"][
            "uid"
        ]
        body = json.dumps(
            {
                "Netns": pod.netns_path,
                "PodName": pod.name,
                "PodNamespace": "app",
                "PodUID": uid,
                "IPs": [pod.ip],
            }
        )
        r = subprocess.run(
            [
                "curl",
                "-sS",
                "--max-time",
                "30",
                "--unix-socket",
                str(self.agent_dir(node) / "pluginevent.sock"),
                "-H",
                "content-type: application/json",
                "-d",
                body,
                "-w",
                "\n%{http_code}",
                "http://unix/cmdadd",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out, _, code = r.stdout.rpartition("\n")
        return int(code or 0), out


@pytest.fixture
def ambient(tmp_path: Path) -> Iterator[AmbientMesh]:
    state = Path(tempfile.mkdtemp(prefix="kz-"))  # unix socket paths are short
    fab = Fabric(unique_prefix("z"))
    m: AmbientMesh | None = None
    try:
        n1, n2 = fab.add_node("node1"), fab.add_node("node2")
        a, b = fab.add_pod(n1, "a"), fab.add_pod(n2, "b")
        www = tmp_path / "www"
        www.mkdir()
        (www / "index.html").write_text("hello from b\n")
        logs = tmp_path / "logs"
        logs.mkdir()
        env = {**os.environ, "KETCH_STORE": str(state / "ketch.db")}
        m = AmbientMesh(fab, n1, n2, a, b, state, logs, env)
        m.agents = {}
        yield m
    finally:
        fab.close()  # agents and node proxies first (started in the fabric), by PID
        if m is not None:
            m.stop_plane()
        shutil.rmtree(state, ignore_errors=True)


def _bring_up(m: AmbientMesh) -> subprocess.Popen[Any]:
    """Control plane, pods a and b (http.server in b) and Service web in the store, an agent
    and a ZDS-fed node proxy per node, all ready; nothing enrolled yet. Returns b's server
    process."""
    m.start_plane()
    tokens = {
        n.name: m.ketch("node", "token", "create", n.name).strip() for n in (m.node1, m.node2)
    }
    m.apply(NAMESPACE, _pod(m.a, m.node1), _pod(m.b, m.node2), SERVICE)
    server = m.b.exec(
        ["python3", "-m", "http.server", "8080", "--directory", str(m.logs.parent / "www")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    m.b.wait_for_tcp("127.0.0.1", 8080)
    url = f"http://{m.b.ip}:8080/"

    for node in (m.node1, m.node2):
        m.start_agent(node)
        m.wait(
            f"agent on {node.name} up",
            lambda node=node: "node agent for node" in m.log(f"agent-{node.name}"),
        )
        assert host_rules_installed(node.netns)  # the probe SNAT for the node's pod CIDR
        m.start_zds_proxy(node, tokens[node.name])
    for node in (m.node1, m.node2):
        m.wait(f"{node.name} ready", lambda node=node: m.ready(node))
        zds = m.dump(node)["zds"]
        assert zds["connected"] is True, zds
        assert zds["snapshotReceived"] is True, zds
        assert m.served(node) == []

    # not in the mesh yet: plaintext, the workloads are TCP
    r = m.curl_from_a(url, timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    assert m.protocol(m.node1, "b") == "TCP"
    assert m.mtls_in(m.node2) == 0

    return server


def test_label_enrolls_running_pods_without_restart(ambient: AmbientMesh) -> None:
    m = ambient
    server = _bring_up(m)
    app_pid = server.pid
    url = f"http://{m.b.ip}:8080/"

    # ---- label the namespace: both running pods are enrolled, nothing restarted
    m.ketch("label", "ns", "app", "istio.io/dataplane-mode=ambient")
    for pod, node in ((m.a, m.node1), (m.b, m.node2)):
        m.wait(f"{pod.name} enrolled", lambda pod=pod: m.annotation(pod) == "enabled")
        m.wait(
            f"{pod.name} served", lambda node=node, pod=pod: m.served(node) == [(pod.name, "ready")]
        )
        assert rules_installed(pod.netns)
    m.wait(
        "HBONE advertised", lambda: m.protocol(m.node1, "b") == m.protocol(m.node2, "a") == "HBONE"
    )
    r = m.curl_from_a(url, timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    (line,) = m.metric_lines(m.node2, 'reporter="destination"', MTLS)
    assert f'source_principal="spiffe://{TD}/ns/app/sa/a"' in line
    assert f'destination_principal="spiffe://{TD}/ns/app/sa/b"' in line
    assert server.poll() is None
    assert server.pid == app_pid  # the app was never restarted

    # ---- the node proxy of node1 dies: a's new connections fail (fail closed) ...
    proxy1 = m.proxies.pop(m.node1.name)
    proxy1.send_signal(signal.SIGKILL)
    proxy1.wait(timeout=10)
    before = m.mtls_in(m.node2)
    r = m.curl_from_a(url, timeout=3)
    assert r.returncode != 0, r.stdout
    assert m.mtls_in(m.node2) == before
    # ... and a new pod cannot start outside the mesh: its CNI add is refused
    c = m.fabric.add_pod(m.node1, "c")
    m.apply(
        _pod(c, m.node1, **{"istio.io/dataplane-mode": "ambient"})
        | {"status": {"phase": "Pending"}}
    )
    code, body = m.cmdadd(m.node1, c)
    assert code == 503, body
    assert "no node proxy" in body
    assert m.annotation(c) == "pending"
    assert rules_installed(c.netns)  # captured already: nothing leaves c in plaintext

    # ---- restarted, it gets every pod back from the agent's snapshot
    m.start_zds_proxy(m.node1, None)
    m.wait("node1 back", lambda: m.ready(m.node1), within=30)
    m.wait("a served again", lambda: ("a", "ready") in m.served(m.node1))
    r = m.curl_from_a(url, timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    assert m.mtls_in(m.node2) == before + 1
    code, body = m.cmdadd(m.node1, c)  # the kubelet's retry now succeeds, synchronously
    assert code == 200, body
    assert ("c", "ready") in m.served(m.node1) or any(
        p["name"] == "c" for p in m.dump(m.node1)["pods"]
    )
    assert m.annotation(c) == "enabled"

    # ---- the agent restarts: no enrollment lost, the node proxy reconnects
    agent1 = m.agents[m.node1.name]
    agent1.send_signal(signal.SIGTERM)
    assert agent1.wait(timeout=20) == 0, m.log("agent-node1")
    connects = m.dump(m.node1)["zds"]["connects"]
    m.start_agent(m.node1)
    m.wait(
        "agent restored 2 pods",
        lambda: "2 pod(s) restored" in m.log("agent-node1"),
    )
    m.wait("node proxy reconnected", lambda: m.dump(m.node1)["zds"]["connects"] > connects)
    m.wait("node1 ready again", lambda: m.ready(m.node1))
    assert m.annotation(m.a) == m.annotation(c) == "enabled"
    assert {n for n, _ in m.served(m.node1)} == {"a", "c"}
    r = m.curl_from_a(url, timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()

    # ---- remove the label: plaintext again, same app process
    m.ketch("delete", "pod", "c", "-n", "app")
    m.ketch("label", "ns", "app", "istio.io/dataplane-mode-")
    for pod, node in ((m.a, m.node1), (m.b, m.node2)):
        m.wait(f"{pod.name} removed", lambda pod=pod: m.annotation(pod) is None)
        m.wait(f"{node.name} serves nothing", lambda node=node: m.served(node) == [])
        assert not rules_installed(pod.netns)
    m.wait("TCP advertised", lambda: m.protocol(m.node1, "b") == "TCP")
    mtls = m.mtls_in(m.node2)
    r = m.curl_from_a(url, timeout=10)
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + m.logs_all()
    assert m.mtls_in(m.node2) == mtls  # not through the mesh any more
    assert server.poll() is None
    assert server.pid == app_pid
    for name in ("agent-node1", "agent-node2", "node1", "node2"):
        assert "Traceback" not in m.log(name), m.log(name)


LOADGEN = """
import json, socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
ok = failed = 0
errors = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        with socket.create_connection((host, 8080), timeout=20) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        if b"hello from b" in data:
            ok += 1
        else:
            failed += 1
            errors.append(repr(data[:80]))
    except OSError as e:
        failed += 1
        errors.append(repr(e))
    time.sleep(0.01)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:5]}))
"""


def test_node_proxy_upgrade_beside_the_old_one(ambient: AmbientMesh) -> None:
    """A second node proxy connects to the agent beside the first, gets the pods from the
    snapshot and binds next to the old listeners; the old one is then stopped (SIGTERM,
    drain) while pod a opens connection after connection: none fails."""
    m = ambient
    _bring_up(m)
    m.ketch("label", "ns", "app", "istio.io/dataplane-mode=ambient")
    for pod, node in ((m.a, m.node1), (m.b, m.node2)):
        m.wait(
            f"{pod.name} served", lambda node=node, pod=pod: m.served(node) == [(pod.name, "ready")]
        )
    m.wait("HBONE advertised", lambda: m.protocol(m.node1, "b") == "HBONE")
    before = m.mtls_in(m.node2)

    load = m.a.exec(["python3", "-c", LOADGEN, m.b.ip, "8"], stdout=subprocess.PIPE, text=True)
    old = m.proxies.pop(m.node1.name)
    m.start_zds_proxy(m.node1, None)  # the new one: same node credentials
    m.wait(
        "the new node proxy took the snapshot",
        lambda: (
            "node proxy connection 2: hello; sending a snapshot of 1 pod(s)" in m.log("agent-node1")
        ),
    )
    time.sleep(2)  # its xDS and a's certificate
    old.send_signal(signal.SIGTERM)
    assert old.wait(timeout=60) == 0
    out, _ = load.communicate(timeout=60)
    result = json.loads(out)
    assert result["ok"] > 10, result
    assert result["failed"] == 0, str(result) + m.logs_all()
    m.wait("the new node proxy serves a", lambda: m.served(m.node1) == [("a", "ready")])
    assert m.ready(m.node1)
    assert m.mtls_in(m.node2) >= before + result["ok"]  # all of it through HBONE
