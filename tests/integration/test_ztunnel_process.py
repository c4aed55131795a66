"""`ketch ztunnel run` as real processes, one per node, over real network namespaces:
standalone config with in-pod capture, the HTTP endpoints (15020/15021/15000), live config
reload (policy and a bad file), SIGTERM drain, and a zero-refusal upgrade: while a client
opens a new connection every 20 ms, a second proxy starts next to the first and the first
is SIGTERMed — on both nodes in turn — and every connection succeeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ketch.netns.fabric import Fabric, Node, Pod
from tests.integration.conftest import node_http, two_enrolled_nodes_with_web, unique_prefix

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KETCH = str(Path(sys.executable).with_name("ketch"))
TD = "cluster.local"


@dataclass
class Cluster:
    fabric: Fabric
    node1: Node
    node2: Node
    a: Pod
    b: Pod
    config: Path
    ca_dir: Path
    logs: Path
    procs: list[subprocess.Popen[Any]]

    def write_config(
        self, policies: list[dict[str, Any]] | None = None, *, enroll_a: bool = True
    ) -> None:
        doc: dict[str, Any] = {
            "trustDomain": TD,
            "workloads": [
                {
                    "name": "a",
                    "namespace": "app",
                    "serviceAccount": "a",
                    "addresses": [self.a.ip],
                    "node": "node1",
                    "netns": self.a.netns,
                },
                {
                    "name": "b",
                    "namespace": "app",
                    "serviceAccount": "b",
                    "addresses": [self.b.ip],
                    "node": "node2",
                    "netns": self.b.netns_path,
                },
            ],
            "policies": policies or [],
        }
        if not enroll_a:
            del doc["workloads"][0]["netns"]
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, self.config)  # atomic, as an editor or config management does

    def start_proxy(self, node: Node, tag: str, *extra: str) -> subprocess.Popen[Any]:
        log = open(self.logs / f"{node.name}-{tag}.log", "wb")  # noqa: SIM115
        proc = node.exec(
            [
                KETCH,
                "ztunnel",
                "run",
                "--config",
                str(self.config),
                "--ca-dir",
                str(self.ca_dir),
                "--node",
                node.name,
                "--reload-interval",
                "0.2",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, node: Node, tag: str) -> str:
        return (self.logs / f"{node.name}-{tag}.log").read_text(errors="replace")

    def http(self, node: Node, port: int, path: str, *curl: str) -> tuple[int, str]:
        return node_http(node, port, path, *curl)

    def wait_ready(
        self, node: Node, proc: subprocess.Popen[Any], tag: str, port: int = 15021
    ) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"proxy {tag} on {node.name} exited {proc.returncode}:\n" + self.log(node, tag)
                )
            if self.http(node, port, "/healthz/ready")[0] == 200:
                return
            time.sleep(0.1)
        pytest.fail(f"proxy {tag} on {node.name} not ready:\n" + self.log(node, tag))

    def curl_b(self, timeout: float = 5) -> subprocess.CompletedProcess[str]:
        return self.a.run(
            ["curl", "-sS", "--max-time", str(timeout), f"http://{self.b.ip}:8080/"],
            check=False,
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    fab = Fabric(unique_prefix("p"))
    try:
        n1, n2, a, b = two_enrolled_nodes_with_web(fab, tmp_path / "www")
        logs = tmp_path / "logs"
        logs.mkdir()
        c = Cluster(fab, n1, n2, a, b, tmp_path / "mesh.yaml", tmp_path / "ca", logs, [])
        c.write_config()
        yield c
    finally:
        fab.close()  # stops every process started in it (the proxies too), by PID


def _sigterm(proc: subprocess.Popen[Any], within: float = 20) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=within)


DENY_A = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "deny-a", "namespace": "app"},
    "spec": {
        "action": "DENY",
        "rules": [{"from": [{"source": {"principals": [f"{TD}/ns/app/sa/a"]}}]}],
    },
}


def test_standalone_processes_serve_reload_and_drain(cluster: Cluster) -> None:
    c = cluster
    p1 = c.start_proxy(c.node1, "p1")
    p2 = c.start_proxy(c.node2, "p2", "--log-format", "json")
    c.wait_ready(c.node1, p1, "p1")
    c.wait_ready(c.node2, p2, "p2")
    # the CA was created once and shared: one root, key private
    assert sorted(f.name for f in c.ca_dir.iterdir() if not f.name.startswith(".")) == [
        "root-cert.pem",
        "root-key.pem",
    ]
    assert (c.ca_dir / "root-key.pem").stat().st_mode & 0o777 == 0o600

    r = c.curl_b()
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr + c.log(c.node1, "p1")

    # metrics on 15020 (both paths) count it with Istio's names and the right principals
    code, text = c.http(c.node2, 15020, "/metrics")
    assert code == 200
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("istio_tcp_connections_opened_total{") and 'reporter="destination"' in ln
    )
    assert f'source_principal="spiffe://{TD}/ns/app/sa/a"' in line
    assert f'destination_principal="spiffe://{TD}/ns/app/sa/b"' in line
    assert 'connection_security_policy="mutual_tls"' in line
    assert line.endswith(" 1.0")
    assert c.http(c.node1, 15020, "/stats/prometheus")[0] == 200

    # the JSON access log line of the finished connection, on the destination side
    def inbound_records() -> list[dict[str, Any]]:
        marker = "ketch.ztunnel.access: "
        recs = [
            json.loads(ln.split(marker, 1)[1])
            for ln in c.log(c.node2, "p2").splitlines()
            if marker in ln
        ]
        return [r for r in recs if r.get("direction") == "inbound"]

    deadline = time.monotonic() + 10
    while not inbound_records():
        assert time.monotonic() < deadline, c.log(c.node2, "p2")
        time.sleep(0.1)
    rec = inbound_records()[0]
    assert rec["src.identity"] == f"spiffe://{TD}/ns/app/sa/a"
    assert rec["dst.workload"] == "b"
    assert rec["bytes_recv"] > 0

    # admin on localhost: config_dump with pods and certificates; logging; bad requests
    code, body = c.http(c.node1, 15000, "/config_dump")
    assert code == 200
    dump = json.loads(body)
    assert [p["name"] for p in dump["pods"]] == ["a"]
    assert dump["pods"][0]["state"] == "ready"
    assert {x["identity"] for x in dump["certificates"]} == {f"spiffe://{TD}/ns/app/sa/a"}
    # ztunnel's shape, as istioctl ztunnel-config reads it
    (cert,) = dump["certificates"]
    assert cert["state"] == "Available"
    assert int(cert["certChain"][0]["serialNumber"]) > 0
    assert cert["rootCerts"]
    assert [(s["info"]["name"], s["state"]) for s in dump["workloadState"].values()] == [
        ("a", "Up")
    ]
    assert {w["name"]: w["protocol"] for w in dump["workloads"]}["a"] == "HBONE"
    assert all("workloadIps" in w and "status" in w for w in dump["workloads"])
    # the same through the CLI, from the root netns into the node's
    r = subprocess.run(
        [KETCH, "ztunnel-config", "certificates", "--netns", c.node1.netns],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()
    assert head.split()[:3] == ["IDENTITY", "STATE", "SERIAL"]
    assert row.split()[:2] == [f"spiffe://{TD}/ns/app/sa/a", "Available"]
    r = subprocess.run(
        [KETCH, "ztunnel-config", "pods", "--netns", c.node2.netns, "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert [p["name"] for p in json.loads(r.stdout)["pods"]] == ["b"]
    assert c.http(c.node1, 15000, "/logging?level=bogus", "-X", "POST")[0] == 400
    code, body = c.http(c.node1, 15000, "/logging?level=ketch.ztunnel:debug", "-X", "POST")
    assert code == 200
    assert json.loads(body)["ketch.ztunnel"] == "DEBUG"
    assert c.http(c.node1, 15000, "/nope")[0] == 404
    assert c.http(c.node1, 15000, "/quitquitquit")[0] == 405  # GET must not stop a proxy
    # the admin port is localhost only: not reachable from a pod through the node address
    r = c.a.run(["curl", "-sS", "--max-time", "2", f"http://{c.node1.gateway}:15000/"], check=False)
    assert r.returncode != 0

    # a policy change is picked up live and denies a's new connections
    c.write_config([DENY_A])
    deadline = time.monotonic() + 10
    while c.curl_b(2).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert c.curl_b(2).returncode != 0
    # ... because of that policy: the destination says which, and counts a DENY
    assert "denied by DENY policy app/deny-a" in c.log(c.node2, "p2")
    _code, text = c.http(c.node2, 15020, "/metrics")
    assert [
        ln
        for ln in text.splitlines()
        if ln.startswith("istio_tcp_connections_failed_total{")
        and 'response_flags="DENY"' in ln
        and 'reporter="destination"' in ln
    ]
    # a broken file is rejected with its reason; the last good config (the DENY) stays
    c.config.write_text("workloads: [{name: x, addresses: [not-an-ip]}]\n")
    deadline = time.monotonic() + 10
    while "keeping the last good config" not in c.log(c.node2, "p2"):
        assert time.monotonic() < deadline, c.log(c.node2, "p2")
        time.sleep(0.1)
    assert "workloads[0].addresses[0]" in c.log(c.node2, "p2")
    assert c.curl_b(2).returncode != 0
    assert p1.poll() is None
    assert p2.poll() is None
    c.write_config()  # policy removed again: allowed
    deadline = time.monotonic() + 10
    while c.curl_b(2).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    # taking a's netns out of the file un-enrolls it live: its listeners close, and with the
    # redirection rules still in place its traffic fails closed; putting it back re-enrolls
    c.write_config(enroll_a=False)
    deadline = time.monotonic() + 10
    while "pod app/a (app/a) removed" not in c.log(c.node1, "p1"):
        assert time.monotonic() < deadline, c.log(c.node1, "p1")
        time.sleep(0.1)
    r = c.curl_b(2)
    assert r.returncode != 0
    assert "hello" not in r.stdout
    assert json.loads(c.http(c.node1, 15000, "/config_dump")[1])["pods"] == []
    c.write_config()
    deadline = time.monotonic() + 10
    while [
        (p["name"], p["state"])
        for p in json.loads(c.http(c.node1, 15000, "/config_dump")[1])["pods"]
    ] != [("a", "ready")]:
        assert time.monotonic() < deadline, c.log(c.node1, "p1")
        time.sleep(0.1)
    r = c.curl_b()
    assert (r.returncode, r.stdout) == (0, "hello from b\n"), r.stderr

    # SIGTERM drains and exits 0; afterwards the pod fails closed (no plaintext leak)
    assert _sigterm(p1) == 0, c.log(c.node1, "p1")
    assert "node proxy exited" in c.log(c.node1, "p1")
    r = c.curl_b(2)
    assert r.returncode != 0
    assert "hello" not in r.stdout
    assert _sigterm(p2) == 0


def test_bad_config_and_flags_fail_clearly(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads:\n- name: a\n  addresses: [10.0.0.300]\n")
    r = c.node1.run(
        [KETCH, "ztunnel", "run", "--config", str(bad), "--ca-dir", str(c.ca_dir)], check=False
    )
    assert r.returncode == 1
    assert "invalid config" in r.stderr
    assert "workloads[0].addresses[0]" in r.stderr
    assert "Traceback" not in r.stderr
    r = c.node1.run(
        [
            KETCH,
            "ztunnel",
            "run",
            "--config",
            str(c.config),
            "--ca-dir",
            str(c.ca_dir),
            "--admin-addr",
            "localhost",
        ],
        check=False,
    )
    assert r.returncode == 1
    assert "--admin-addr: expected HOST:PORT" in r.stderr
    # a CA directory with half a root: clear refusal, no traceback
    broken = tmp_path / "broken-ca"
    broken.mkdir()
    (broken / "root-cert.pem").write_text("x")
    r = c.node1.run(
        [KETCH, "ztunnel", "run", "--config", str(c.config), "--ca-dir", str(broken)],
        check=False,
    )
    assert r.returncode == 1
    assert "has only one of root-cert.pem/root-key.pem" in r.stderr
    assert "Traceback" not in r.stderr
    # a pod whose netns does not exist (yet) is reported, retried, and keeps it not ready
    c.config.write_text(
        yaml.safe_dump(
            {"workloads": [{"name": "ghost", "addresses": ["10.244.9.9"], "netns": "kp-none"}]}
        )
    )
    p = c.start_proxy(c.node1, "ghost")
    deadline = time.monotonic() + 10
    while "not enrolled (will retry)" not in c.log(c.node1, "ghost"):
        assert time.monotonic() < deadline, c.log(c.node1, "ghost")
        assert p.poll() is None, c.log(c.node1, "ghost")
        time.sleep(0.1)
    code, body = c.http(c.node1, 15021, "/healthz/ready")
    assert (code, body) == (500, "not ready, pending: workload manager\n")
    code, body = c.http(c.node1, 15000, "/config_dump")
    ghost = json.loads(body)["pods"][0]
    assert (ghost["name"], ghost["state"]) == ("ghost", "not_enrolled")
    assert _sigterm(p) == 0


CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ok = failed = 0
    errors = []
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if data.endswith(b"hello from b\\n"):
                ok += 1
            else:
                failed += 1
                errors.append(repr(data[-80:]))
        except OSError as e:
            failed += 1
            errors.append(f"{e!r} at t+{t - start:.2f}s")
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
    print(ok, failed)
    print("\\n".join(errors[:20]))
    """
)


def test_upgrade_with_a_second_proxy_refuses_no_connection(cluster: Cluster) -> None:
    c = cluster
    old1 = c.start_proxy(c.node1, "old")
    old2 = c.start_proxy(c.node2, "old")
    c.wait_ready(c.node1, old1, "old")
    c.wait_ready(c.node2, old2, "old")
    assert c.curl_b().returncode == 0

    client = c.a.exec(
        [sys.executable, "-c", CLIENT, c.b.ip, "8080", "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    # node1 (the client's side): the new proxy binds next to the old one, then the old goes
    # (its own readiness address, to know when *it* is ready; the node ports 15020/15000
    # pass to it when the old one lets go of them)
    new1 = c.start_proxy(c.node1, "new", "--readiness-addr", "127.0.0.1:15121")
    c.wait_ready(c.node1, new1, "new", 15121)
    assert _sigterm(old1) == 0, c.log(c.node1, "old")
    time.sleep(1.0)
    # node2 (the server's side)
    new2 = c.start_proxy(c.node2, "new", "--readiness-addr", "127.0.0.1:15121")
    c.wait_ready(c.node2, new2, "new", 15121)
    assert _sigterm(old2) == 0, c.log(c.node2, "old")

    out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    first, _, errors = out.partition("\n")
    ok, failed = map(int, first.split())
    logs = "\n".join(
        f"{n.name}-{t}: {ln}"
        for n in (c.node1, c.node2)
        for t in ("old", "new")
        for ln in c.log(n, t).splitlines()
        if "ketch.ztunnel.access" not in ln or ("error=" in ln and "error=-" not in ln)
    )
    assert failed == 0, f"{failed} of {ok + failed} connections failed: {errors}\n{logs}"
    assert ok >= 200  # ~9 s at one connection every 20 ms, minus request time
    # the new proxies carried traffic after the handoff
    assert c.curl_b().returncode == 0
    _code, text = c.http(c.node1, 15020, "/metrics")
    opened = [
        ln
        for ln in text.splitlines()
        if ln.startswith("istio_tcp_connections_opened_total{") and 'reporter="source"' in ln
    ]
    assert opened
    assert float(opened[0].rsplit(" ", 1)[1]) >= 1
    assert "_created" not in text  # ztunnel exports no *_created series
    assert 'istio_tcp_sockets_open{reporter="source"}' in text
    assert "metrics: took over 0.0.0.0:15020" in c.log(c.node1, "new")
    assert c.http(c.node1, 15000, "/config_dump")[0] == 200
    assert _sigterm(new1) == 0
    assert _sigterm(new2) == 0


ECHO_SERVER = textwrap.dedent(
    """
    import socket, threading
    srv = socket.create_server(("0.0.0.0", 9000), reuse_port=False)
    def serve(c):
        with c:
            while data := c.recv(65536):
                c.sendall(data)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """
)

PINGER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], 9000), timeout=5)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        try:
            s.sendall(b"ping")
            if s.recv(4) != b"ping":
                print("closed", time.time(), flush=True)
                break
        except OSError as e:
            print("error", time.time(), type(e).__name__, flush=True)
            break
        print("ok", time.time(), flush=True)
        time.sleep(0.1)
    """
)


def test_sigterm_lets_open_connections_finish_until_the_drain_deadline(cluster: Cluster) -> None:
    c = cluster
    c.b.exec([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.DEVNULL)
    c.b.wait_for_tcp("127.0.0.1", 9000)
    p1 = c.start_proxy(c.node1, "p1", "--drain-timeout", "2")
    p2 = c.start_proxy(c.node2, "p2")
    c.wait_ready(c.node1, p1, "p1")
    c.wait_ready(c.node2, p2, "p2")
    pinger = c.a.exec(
        [sys.executable, "-c", PINGER, c.b.ip, "15"], stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.0)
    signalled = time.time()
    p1.send_signal(signal.SIGTERM)
    assert p1.wait(timeout=15) == 0
    out, _ = pinger.communicate(timeout=20)
    events = [ln.split() for ln in out.splitlines()]
    oks = [float(e[1]) for e in events if e[0] == "ok"]
    assert oks, out
    assert oks[0] < signalled  # it was open before the signal...
    assert any(t > signalled + 1.0 for t in oks), out  # ...kept working while draining...
    assert events[-1][0] in ("closed", "error"), out  # ...and was closed at the deadline
    assert "force-closing 1 connection(s)" in c.log(c.node1, "p1")
