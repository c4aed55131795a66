"""Node agent benchmark: how long the kubelet waits for a pod to join the mesh, and how long
a running pod takes to join after its namespace is labelled. Needs root.

    uv run --frozen python bench/node_agent.py            # 20 pods
    uv run --frozen python bench/node_agent.py --pods 50

Real parts: a `ketch control-plane run --xds` process, one fabric node netns with N pod
netns, `ketch agent run` and `ketch ztunnel run --control-plane ... --zds-socket` in the
node netns, the store written through the `ketch` CLI.

1. CNI add: N pods (label `istio.io/dataplane-mode=ambient`, not running yet) are created
   in the store; for each, `POST /cmdadd` on the agent's socket as the kubelet does, timed
   from the request to the 200 (in-pod rules + ZDS add + node proxy ack + annotation).
2. Label: N more running pods in a plain namespace; the namespace is labelled; timed until
   every pod's annotation says `enabled` (the reconcile loop, serial enrolments).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ketch.netns.fabric import Fabric, Node, Pod  # noqa: E402

KETCH = str(Path(sys.executable).with_name("ketch"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ketch(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    r = subprocess.run(
        [KETCH, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )
    if r.returncode != 0:
        raise SystemExit(f"ketch {' '.join(args)}: {r.stderr}")
    return r.stdout


def pod_doc(p: Pod, node: Node, ns: str, running: bool, labels: dict[str, str]) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Pending"}
    if running:
        status = {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": p.name, "namespace": ns, "labels": {"app": p.name, **labels}},
        "spec": {
            "nodeName": node.name,
            "containers": [{"name": "main", "command": ["sleep", "infinity"]}],
        },
        "status": status,
    }


def wait(what: str, cond: Any, within: float = 60) -> None:
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"{what}: not within {within}s")
        time.sleep(0.05)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, iptables)")
    state = Path(tempfile.mkdtemp(prefix="kb-"))
    env = {**os.environ, "KETCH_STORE": str(state / "ketch.db")}
    fab = Fabric(f"kb{secrets.token_hex(3)}")
    procs: list[subprocess.Popen[Any]] = []
    try:
        node = fab.add_node("node1")
        logf = open(state / "plane.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [KETCH, "control-plane", "run", "--xds", "--state-dir", str(state)],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        )
        wait("control plane", lambda: (state / "xds.sock").exists())
        token = ketch(env, "node", "token", "create", "node1").strip()
        agent_dir = state / "agent" / "node1"
        node.exec(
            [
                KETCH,
                "agent",
                "run",
                "--node",
                "node1",
                "--state-dir",
                str(state),
                "--store",
                str(state / "ketch.db"),
                "--pod-cidr",
                str(node.pod_cidr),
                "--netns-template",
                f"/run/netns/{fab.prefix}-p-{{name}}",
            ],
            stdout=open(state / "agent.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait("agent", lambda: (agent_dir / "ztunnel.sock").exists())
        node.exec(
            [
                KETCH,
                "ztunnel",
                "run",
                "--control-plane",
                f"unix://{state / 'ca.sock'}",
                "--node",
                "node1",
                "--node-ip",
                node.ip,
                "--token",
                token,
                "--node-dir",
                str(state / "node"),
                "--zds-socket",
                str(agent_dir / "ztunnel.sock"),
            ],
            stdout=open(state / "proxy.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            r = node.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
                check=False,
            )
            return r.stdout == "200"

        wait("node proxy ready", ready)
        namespaces = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
            for n in ("cni", "label")
        ]
        ketch(env, "apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in namespaces))

        # 1. CNI add
        log(f"creating {args.pods} pods and timing their CNI add ...")
        pods = [fab.add_pod(node, f"c{i}") for i in range(args.pods)]
        docs = [
            pod_doc(p, node, "cni", False, {"istio.io/dataplane-mode": "ambient"}) for p in pods
        ]
        ketch(env, "apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))
        cni: list[float] = []
        for p in pods:
            uid = json.loads(ketch(env, "get", "pod", p.name, "-n", "cni", "-o", "json"))[
                "metadata"
            ]["uid"]
            body = json.dumps(
                {"Netns": p.netns_path, "PodName": p.name, "PodNamespace": "cni"}
                | {"PodUID": uid, "IPs": [p.ip]}
            )
            t0 = time.perf_counter()
            r = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "--unix-socket",
                    str(agent_dir / "pluginevent.sock"),
                    "-d",
                    body,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://unix/cmdadd",
                ],
                capture_output=True,
                text=True,
            )
            cni.append(time.perf_counter() - t0)
            if r.stdout != "200":
                raise SystemExit(f"cmdadd {p.name}: {r.stdout} {r.stderr}")

        # 2. label a namespace of running pods
        log(f"{args.pods} running pods, then labelling their namespace ...")
        more = [fab.add_pod(node, f"l{i}") for i in range(args.pods)]
        docs = [pod_doc(p, node, "label", True, {}) for p in more]
        ketch(env, "apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))
        t0 = time.perf_counter()
        ketch(env, "label", "ns", "label", "istio.io/dataplane-mode=ambient")

        def all_enabled() -> bool:
            items = json.loads(ketch(env, "get", "pods", "-n", "label", "-o", "json"))["items"]
            return all(
                (i["metadata"].get("annotations") or {}).get("ambient.istio.io/redirection")
                == "enabled"
                for i in items
            )

        wait("label enrolment", all_enabled, within=300)
        label_total = time.perf_counter() - t0

        ms = [x * 1000 for x in cni]
        print(
            json.dumps(
                {
                    "pods": args.pods,
                    "cni_add_ms": {
                        "p50": round(statistics.median(ms), 1),
                        "p95": round(pct(ms, 0.95), 1),
                        "max": round(max(ms), 1),
                    },
                    "label_to_all_enabled_s": round(label_total, 2),
                    "label_per_pod_ms": round(label_total * 1000 / args.pods, 1),
                },
                indent=1,
            )
        )
    finally:
        fab.close()
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
