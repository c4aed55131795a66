"""The kubelet over the real path: a node netns (built with `Fabric`), a SQLite store with the
Node object, real pod namespaces, real processes (python http.server, sh), real probes.

Each test makes its own cluster name (`t` + 6 hex), so node netns `<name>-n-node1`, pod
netns `<name>-p-*` and /etc/netns/<name>-* are its own; the fixture removes them all.
The back-off is shortened (0.2 s doubling to 1 s) so crash loops show within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest

from ketch.cluster import process
from ketch.cluster.backoff import BackoffPolicy
from ketch.cluster.kubelet import RECORD, Kubelet
from ketch.cluster.layout import DNS_IP, ClusterLayout
from ketch.netns.fabric import Fabric, Node, cleanup_stale, ip_batch, stale_namespaces
from ketch.store.base import Manifest
from ketch.store.sqlite import SqliteStore
from ketch.util.tasks import spawn

NODE = "node1"
FAST = BackoffPolicy(base=0.2, cap=1.0, reset_after=600.0)
WEB = ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8080"]


@dataclass
class Cluster:
    layout: ClusterLayout
    store: SqliteStore
    fabric: Fabric
    node: Node

    def pod_netns(self, uid: str) -> str:
        return self.layout.pod_netns(uid)


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Expected failures (crashing apps, refused pods, failing probes) are one log line each:
    no traceback, no error from a task that died."""
    caplog.set_level(logging.INFO, logger="ketch")
    yield
    records = caplog.get_records("call")
    bad = [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    assert any(r.name == "ketch.cluster.kubelet" for r in records)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    name = f"t{secrets.token_hex(3)}"
    while stale_namespaces(name):
        name = f"t{secrets.token_hex(3)}"
    layout = ClusterLayout(tmp_path / "state", name)
    layout.state_dir.mkdir(parents=True)
    fab = Fabric(name)
    store = SqliteStore(layout.store_path, poll_interval=0.02)
    try:
        node = fab.add_node(NODE)
        # The cluster DNS address is local to every node netns (svcnet's job in a real
        # cluster). Nothing listens here, so a lookup fails at once instead of timing out
        # (python's http.server does a reverse lookup of its bind address at start).
        ip_batch(node.netns, [f"addr add {DNS_IP}/32 dev lo"])
        store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": NODE},
                    "spec": {"podCIDR": str(node.pod_cidr)},
                    "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]},
                }
            ]
        )
        yield Cluster(layout, store, fab, node)
    finally:
        store.close()
        try:
            fab.close()
        finally:
            cleanup_stale(name)
            for d in Path("/etc/netns").glob(f"{name}-*"):
                shutil.rmtree(d, ignore_errors=True)
    assert not stale_namespaces(name)


@contextlib.asynccontextmanager
async def running(kubelet: Kubelet) -> AsyncIterator[Kubelet]:
    stop = asyncio.Event()
    task = spawn(kubelet.run(stop), "test-kubelet")
    try:
        yield kubelet
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def pod(name: str, *containers: dict[str, Any], **spec: Any) -> Manifest:
    body: dict[str, Any] = {
        "nodeName": NODE,
        "terminationGracePeriodSeconds": 5,
        "containers": list(containers),
    }
    body.update(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }


def container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": command, **extra}


async def until(
    what: str, check: Callable[[], Any], within: float = 20.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def get(c: Cluster, name: str) -> Manifest | None:
    items = [p for p in c.store.list("Pod", "default").items if p["metadata"]["name"] == name]
    return items[0] if items else None


def status(c: Cluster, name: str) -> dict[str, Any]:
    p = get(c, name)
    return (p or {}).get("status") or {}


def cstatus(c: Cluster, name: str, cname: str | None = None) -> dict[str, Any]:
    for cs in status(c, name).get("containerStatuses") or []:
        if cname is None or cs["name"] == cname:
            return dict(cs)
    return {}


def condition(c: Cluster, name: str, ctype: str) -> str | None:
    for cond in status(c, name).get("conditions") or []:
        if cond["type"] == ctype:
            return str(cond["status"])
    return None


def netns_exists(netns: str) -> bool:
    return os.path.exists(f"/run/netns/{netns}")


def record(c: Cluster, name: str, uid: str) -> dict[str, Any]:
    path = c.layout.pod_dir("default", name, uid) / RECORD
    return dict(json.loads(path.read_text()))


def pid_of(c: Cluster, name: str, uid: str, cname: str) -> int | None:
    """The recorded PID of a container, None while there is none (or no record)."""
    try:
        entry = record(c, name, uid)["processes"].get(cname)
    except (OSError, ValueError):
        return None
    return None if entry is None else int(entry["pid"])


async def run(argv: list[str]) -> bytes:
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, check=True)
    return done.stdout


async def http_from_node(node: Node, ip: str, port: int) -> str:
    """GET / from the node netns (where the kubelet and its probes live)."""
    done = await asyncio.to_thread(
        node.run,
        [
            sys.executable,
            "-c",
            "import urllib.request,sys;"
            f"print(urllib.request.urlopen('http://{ip}:{port}/', timeout=5).status)",
        ],
    )
    return done.stdout.strip()


async def test_web_pod_runs_ready_reachable_and_is_cleaned_up_on_delete(cluster: Cluster) -> None:
    c = cluster
    c.store.apply(
        [
            pod(
                "web",
                container(
                    "web",
                    WEB,
                    ports=[{"name": "http", "containerPort": 8080}],
                    readinessProbe={"httpGet": {"port": "http"}, "periodSeconds": 1},
                    env=[{"name": "GREETING", "value": "hi"}],
                ),
            )
        ]
    )
    async with running(Kubelet(c.store, c.layout, NODE, backoff=FAST)) as kubelet:
        await until("web Ready", lambda: condition(c, "web", "Ready") == "True")
        st = status(c, "web")
        assert st["phase"] == "Running"
        assert st["hostIP"] == c.node.ip
        assert st["hostIPs"] == [{"ip": c.node.ip}]
        ip = st["podIP"]
        assert st["podIPs"] == [{"ip": ip}]
        assert ip in [str(a) for a in c.node.pod_cidr.hosts()]
        assert ip != c.node.gateway
        cs = cstatus(c, "web")
        assert cs["ready"] is True
        assert cs["started"] is True
        assert "running" in cs["state"]
        assert {x["type"] for x in st["conditions"]} == {
            "PodScheduled",
            "Initialized",
            "ContainersReady",
            "Ready",
        }
        assert all(x["lastTransitionTime"] for x in st["conditions"])

        assert await http_from_node(c.node, ip, 8080) == "200"
        uid = get(c, "web")["metadata"]["uid"]  # type: ignore[index]
        netns = c.pod_netns(uid)
        out = (
            await run(["ip", "netns", "exec", netns, "cat", "/etc/resolv.conf", "/etc/hosts"])
        ).decode()
        assert "nameserver 10.96.0.10" in out
        assert "search default.svc.cluster.local svc.cluster.local cluster.local" in out
        assert f"{ip}\tweb" in out
        pid = record(c, "web", uid)["processes"]["web"]["pid"]
        env = (await run(["ip", "netns", "exec", netns, "cat", f"/proc/{pid}/environ"])).split(
            b"\0"
        )
        assert b"HOSTNAME=web" in env
        assert b"GREETING=hi" in env
        log_file = c.layout.container_log("default", "web", uid, "web", 0)
        await until("access log line", lambda: b"GET / " in log_file.read_bytes())

        c.store.delete("Pod", "default", "web")
        await until(
            "pod directory gone", lambda: not c.layout.pod_dir("default", "web", uid).exists()
        )
        assert process.start_ticks(pid) is None
        assert not netns_exists(netns)
        assert not c.layout.etc_dir(netns).exists()
        assert kubelet.ipam is not None
        assert kubelet.ipam.get(uid) is None


async def test_restarts_with_backoff_and_reports_bad_pods(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    workdir = tmp_path / "work"
    workdir.mkdir()
    c.store.apply(
        [
            pod(
                "wd",
                container(
                    "main",
                    ["sh", "-c"],
                    args=['echo "$(GREETING) from $HOSTNAME in $(pwd)"'],
                    env=[{"name": "GREETING", "value": "hello"}],
                    workingDir=str(workdir),
                ),
                restartPolicy="Never",
            ),
            pod("crash", container("main", ["sh", "-c", "echo started; exit 3"])),
            pod(
                "nocmd",
                container("main", ["no-such-program-ketch", "--flag"]),
                restartPolicy="Never",
            ),
            pod("done", container("main", ["true"]), restartPolicy="OnFailure"),
            pod("hostnet", container("main", ["sleep", "100"]), hostNetwork=True),
            pod("imageonly", {"name": "main", "image": "nginx:1.27"}),
            pod(
                "nul",
                container("main", ["true"], env=[{"name": "X", "value": "a\x00b"}]),
                restartPolicy="Never",
            ),
            pod("elsewhere", container("main", ["sleep", "100"]), nodeName="node9"),
        ]
    )
    async with running(Kubelet(c.store, c.layout, NODE, backoff=FAST)):
        await until("3 restarts", lambda: cstatus(c, "crash").get("restartCount", 0) >= 3)
        cs = cstatus(c, "crash")
        last = cs["lastState"]["terminated"]
        assert last["exitCode"] == 3
        assert last["reason"] == "Error"
        assert last["startedAt"]
        assert last["finishedAt"]
        assert status(c, "crash")["phase"] == "Running"  # Always: it keeps being restarted
        await until(
            "CrashLoopBackOff",
            lambda: (
                cstatus(c, "crash")["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"
            ),
        )
        uid = get(c, "crash")["metadata"]["uid"]  # type: ignore[index]
        logs = sorted((c.layout.pod_dir("default", "crash", uid) / "main").glob("*.log"))
        assert len(logs) >= 3
        assert logs[0].read_text() == "started\n"

        await until("nocmd Failed", lambda: status(c, "nocmd").get("phase") == "Failed")
        term = cstatus(c, "nocmd")["state"]["terminated"]
        assert term["exitCode"] == 127
        assert term["reason"] == "StartError"
        assert "no-such-program-ketch" in term["message"]

        await until("done Succeeded", lambda: status(c, "done").get("phase") == "Succeeded")
        assert cstatus(c, "done")["state"]["terminated"]["reason"] == "Completed"
        assert condition(c, "done", "Ready") == "False"

        await until("hostnet Failed", lambda: status(c, "hostnet").get("phase") == "Failed")
        assert status(c, "hostnet")["reason"] == "HostNetworkUnsupported"
        assert "hostNetwork" in status(c, "hostnet")["message"]

        await until("imageonly Failed", lambda: status(c, "imageonly").get("phase") == "Failed")
        assert status(c, "imageonly")["reason"] == "InvalidPod"
        assert "cannot pull images" in status(c, "imageonly")["message"]
        assert status(c, "elsewhere") == {}  # another node's pod: not ours to touch

        await until("nul Failed", lambda: status(c, "nul").get("phase") == "Failed")
        nul = cstatus(c, "nul")["state"]["terminated"]
        assert nul["reason"] == "StartError"
        assert "null byte" in nul["message"]

        await until("wd Succeeded", lambda: status(c, "wd").get("phase") == "Succeeded")
        wd_uid = get(c, "wd")["metadata"]["uid"]  # type: ignore[index]
        wd_log = c.layout.container_log("default", "wd", wd_uid, "main", 0)
        # $(GREETING) is Kubernetes' expansion; $HOSTNAME and $(pwd) are the shell's
        assert wd_log.read_text() == f"hello from wd in {workdir}\n"
        done_rv = get(c, "done")["metadata"]["resourceVersion"]  # type: ignore[index]
        crash_restarts = cstatus(c, "crash")["restartCount"]

    # The node comes back: finished pods stay finished, the others run again.
    async with running(Kubelet(c.store, c.layout, NODE, backoff=FAST)):
        await until(
            "crash restarted by the new kubelet",
            lambda: cstatus(c, "crash").get("restartCount", 0) > crash_restarts,
        )
        assert get(c, "done")["metadata"]["resourceVersion"] == done_rv  # type: ignore[index]
        assert status(c, "wd")["phase"] == "Succeeded"
        assert not c.layout.container_log("default", "wd", wd_uid, "main", 1).exists()


async def test_readiness_and_liveness_probes(cluster: Cluster) -> None:
    c = cluster
    c.store.apply(
        [
            pod(
                "unready",
                container(
                    "web",
                    WEB,
                    readinessProbe={"httpGet": {"port": 9999}, "periodSeconds": 1},
                ),
            ),
            pod(
                "execready",
                container(
                    "main",
                    ["sleep", "100"],
                    readinessProbe={
                        "exec": {"command": ["grep", "-q", "10.96.0.10", "/etc/resolv.conf"]},
                        "periodSeconds": 1,
                    },
                ),
            ),
            pod(
                "unlive",
                container(
                    "web",
                    WEB,
                    livenessProbe={
                        "tcpSocket": {"port": 9999},
                        "periodSeconds": 1,
                        "failureThreshold": 2,
                    },
                ),
                terminationGracePeriodSeconds=2,
            ),
        ]
    )
    async with running(Kubelet(c.store, c.layout, NODE, backoff=FAST)):
        await until("execready Ready", lambda: condition(c, "execready", "Ready") == "True")
        await until(
            "unready running",
            lambda: "running" in (cstatus(c, "unready").get("state") or {}),
        )
        await asyncio.sleep(2.5)  # several failed readiness probes
        assert condition(c, "unready", "Ready") == "False"
        assert condition(c, "unready", "ContainersReady") == "False"
        assert cstatus(c, "unready")["ready"] is False
        assert status(c, "unready")["phase"] == "Running"

        await until("liveness restart", lambda: cstatus(c, "unlive").get("restartCount", 0) >= 1)
        last = cstatus(c, "unlive")["lastState"]["terminated"]
        assert "Liveness probe failed" in last["message"]
        assert last["exitCode"] == 128 + signal.SIGTERM
        assert last["signal"] == signal.SIGTERM


async def test_cni_event_gates_the_sandbox(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    sock_path = tmp_path / "cni.sock"
    received: list[dict[str, Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        received.append(json.loads(body))
        code = 503 if len(received) == 1 else 200
        text = b"no ztunnel connection" if code == 503 else b""
        writer.write(
            conn.send(h11.Response(status_code=code, headers=[("Content-Length", str(len(text)))]))
            + conn.send(h11.Data(data=text))
            + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(sock_path))
    statuses: list[dict[str, Any]] = []
    try:
        c.store.apply([pod("meshed", container("main", ["sleep", "100"]))])
        kubelet = Kubelet(
            c.store, c.layout, NODE, cni_event_socket=sock_path, backoff=BackoffPolicy(1.0, 1.0)
        )
        async with running(kubelet):

            def seen() -> bool:
                statuses.append(cstatus(c, "meshed"))
                return "running" in (statuses[-1].get("state") or {})

            await until("meshed running", seen)
    finally:
        server.close()
        await server.wait_closed()
    assert len(received) == 2
    uid = received[0]["PodUID"]
    assert received[0] == {
        "Netns": f"/run/netns/{c.pod_netns(uid)}",
        "PodName": "meshed",
        "PodNamespace": "default",
        "PodUID": uid,
        "IPs": [received[0]["IPs"][0]],
    }
    waiting = [s["state"]["waiting"] for s in statuses if "waiting" in (s.get("state") or {})]
    assert any(
        w["reason"] == "ContainerCreating" and "503" in w.get("message", "") for w in waiting
    )


KUBELET_PROCESS = """
import asyncio, logging, sys
from pathlib import Path
from ketch.cluster.backoff import BackoffPolicy
from ketch.cluster.kubelet import Kubelet
from ketch.cluster.layout import DNS_IP, ClusterLayout
from ketch.store.sqlite import SqliteStore

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
layout = ClusterLayout(Path(sys.argv[1]), sys.argv[2])
store = SqliteStore(layout.store_path)
asyncio.run(Kubelet(store, layout, sys.argv[3], backoff=BackoffPolicy(0.2, 1.0)).run(asyncio.Event()))
"""


async def test_grace_period_stop_and_restart_after_a_crash(cluster: Cluster) -> None:
    c = cluster
    # ignores SIGTERM, and forks a child that would outlive it if only the shell were killed
    stubborn = ["sh", "-c", "trap '' TERM; sleep 300 & while :; do sleep 0.2; done"]
    c.store.apply(
        [
            pod(
                "web",
                container(
                    "web", WEB, readinessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1}
                ),
            ),
            pod("stubborn", container("main", stubborn), terminationGracePeriodSeconds=1),
        ]
    )
    # 1. a kubelet in its own process, in the node netns, killed with SIGKILL (a crash)
    proc = c.node.exec(
        [sys.executable, "-c", KUBELET_PROCESS, str(c.layout.state_dir), c.layout.name, NODE],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await until("web running", lambda: "running" in (cstatus(c, "web").get("state") or {}))
        await until(
            "stubborn running", lambda: "running" in (cstatus(c, "stubborn").get("state") or {})
        )
    finally:
        proc.kill()
        _, err = await asyncio.to_thread(proc.communicate)
    assert b"Traceback" not in err, err.decode()
    web = get(c, "web")
    assert web is not None
    uid, old_ip = web["metadata"]["uid"], web["status"]["podIP"]
    old = record(c, "web", uid)["processes"]["web"]
    assert process.same_process(old["pid"], old["start"])  # the crash left it running

    # 2. a new kubelet stops the leftovers and runs the pods again, on the same IP
    async with running(Kubelet(c.store, c.layout, NODE, backoff=FAST)):
        await until(
            "old process stopped", lambda: not process.same_process(old["pid"], old["start"])
        )
        await until(
            "web running again",
            lambda: (
                pid_of(c, "web", uid, "web") not in (None, old["pid"])
                and cstatus(c, "web").get("restartCount") == 1
                and "running" in cstatus(c, "web")["state"]
            ),
        )
        assert status(c, "web")["podIP"] == old_ip
        await until("web Ready again", lambda: condition(c, "web", "Ready") == "True")
        assert await http_from_node(c.node, old_ip, 8080) == "200"

        # 3. SIGTERM is ignored: SIGKILL after terminationGracePeriodSeconds
        sid = get(c, "stubborn")["metadata"]["uid"]  # type: ignore[index]
        spid = pid_of(c, "stubborn", sid, "main")
        in_pod = [int(p) for p in (await run(["ip", "netns", "pids", c.pod_netns(sid)])).split()]
        assert len(in_pod) >= 2  # the shell and its background sleep
        started = time.monotonic()
        c.store.delete("Pod", "default", "stubborn")
        assert spid is not None
        await until("stubborn gone", lambda: process.start_ticks(spid) is None, within=15)
        assert time.monotonic() - started >= 0.9  # it was given its grace period
        await until("stubborn netns gone", lambda: not netns_exists(c.pod_netns(sid)))
        assert [p for p in in_pod if process.start_ticks(p) is not None] == []
        wpid = record(c, "web", uid)["processes"]["web"]["pid"]
        wnetns = c.pod_netns(uid)

    # 4. stop: every pod terminated and its sandbox removed; the Pod stays in the store
    assert process.start_ticks(wpid) is None
    assert not netns_exists(wnetns)
    assert not c.layout.etc_dir(wnetns).exists()
    assert get(c, "web") is not None
    assert not [n for n in stale_namespaces(c.layout.name) if "-p-" in n]
