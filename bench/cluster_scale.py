"""Scale-down, end to end on a real local cluster: how soon the EndpointSlice and the VIP follow.

    sudo uv run --frozen python bench/cluster_scale.py [--rounds 5]

Issue 10 wants "scale down -> endpoints and VIP follow within a second". This measures it
over the whole path: `ketch up --nodes 2 --no-mesh --no-sample` (random cluster name, tmp
state dir), `examples/cluster-demo.yaml` (web x3 behind Service web, 2 clients), then per
round:

- a client pod (via `ketch exec`) sends one HTTP GET every 10 ms to the Service's cluster IP
  (a new connection each, so each is load-balanced by the node netns' nftables rules) and
  prints `<unix time> <which pod answered | FAIL>`;
- the bench writes `spec.replicas: 1` to the web Deployment in the store (what `ketch scale`
  does) at time t0 and polls the EndpointSlice every 2 ms;
- `slice`: t0 -> the slice lists one endpoint (controllers: Deployment -> ReplicaSet -> pod
  deletes -> endpoints);
- `vip`: t0 -> the last request answered by (or failing on) any other pod; after it every
  answer came from the one left (service proxy: watch -> render -> `nft -f`, on both nodes;
  plus the deleted pods' own shutdown: a request can still reach a pod being stopped).
- then back to 3 replicas, all ready and answering, before the next round.

Prints p50 / max over the rounds in ms. Needs root; removes its cluster at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ketch.cluster import fabric
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import ClusterLayout
from ketch.store.base import ConflictError
from ketch.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[1]
NS = "demo"
PROBE = """
import http.client, sys, time
ip, end = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < end:
    t = time.time()
    try:
        c = http.client.HTTPConnection(ip, 80, timeout=0.5)
        c.request("GET", "/")
        who = c.getresponse().read().decode().split()[-1]
        c.close()
    except OSError:
        who = "FAIL"
    print(f"{t:.4f} {who}", flush=True)
    time.sleep(0.01)
"""


def ketch(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "ketch.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250", **(env or {})},
        check=False,
        timeout=180,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ketch {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def wait(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def endpoints(store: SqliteStore, ready_only: bool = False) -> list[dict[str, Any]]:
    return [
        ep
        for sl in store.list("EndpointSlice", NS).items
        if (sl["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == "web"
        for ep in sl.get("endpoints") or []
        if not ready_only or (ep.get("conditions") or {}).get("ready")
    ]


def set_replicas(store: SqliteStore, n: int) -> None:
    while True:
        d = store.get("Deployment", NS, "web")
        d["spec"]["replicas"] = n
        try:
            store.apply([d])
            return
        except ConflictError:
            continue


def one_round(store: SqliteStore, opts: list[str], client: str, vip: str) -> tuple[float, float]:
    probe = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ketch.cli",
            "exec",
            *opts,
            "-n",
            NS,
            client,
            "--",
            "python3",
            "-c",
            PROBE,
            vip,
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.5)  # the probe is running
    t0 = time.time()
    set_replicas(store, 1)
    wait(lambda: len(endpoints(store)) == 1, 10, "one endpoint")
    slice_s = time.time() - t0
    left = endpoints(store)[0]["targetRef"]["name"]
    out, _ = probe.communicate(timeout=30)
    stamps = [(float(t), who) for t, who in (line.split() for line in out.splitlines())]
    after = [(t, who) for t, who in stamps if t >= t0]
    if not after or after[-1][1] != left:
        raise SystemExit(f"the VIP did not settle on {left}: {after[-5:]}")
    stray = [t for t, who in after if who != left]
    vip_s = (max(stray) - t0) if stray else 0.0
    set_replicas(store, 3)
    wait(lambda: len(endpoints(store, ready_only=True)) == 3, 60, "3 ready endpoints", 0.1)
    return slice_s, vip_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (it runs a local cluster)")
    state = Path(tempfile.mkdtemp(prefix="k", dir="/tmp"))
    name = "b" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(5))
    layout = ClusterLayout(state, name)
    opts = ["--name", name, "--state-dir", str(state)]
    store_opt = ["--store", str(layout.store_path)]
    try:
        ketch("up", "--nodes", "2", "--no-mesh", "--no-sample", *opts)
        ketch(*store_opt, "apply", "-f", str(REPO / "examples" / "cluster-demo.yaml"))
        store = SqliteStore(layout.store_path)
        wait(lambda: len(endpoints(store, ready_only=True)) == 3, 60, "3 ready endpoints", 0.1)
        svc = store.get("Service", NS, "web")
        vip = svc["spec"]["clusterIP"]
        clients = sorted(
            p["metadata"]["name"]
            for p in store.list("Pod", NS).items
            if p["metadata"]["name"].startswith("client-")
        )
        slices, vips = [], []
        for i in range(args.rounds):
            s, v = one_round(store, opts, clients[i % len(clients)], vip)
            slices.append(s * 1000)
            vips.append(v * 1000)
            print(f"round {i + 1}: slice {s * 1000:.0f} ms, vip {v * 1000:.0f} ms", flush=True)
        store.close()
        print(f"\nscale 3 -> 1 over {args.rounds} rounds (ms, p50 / max)")
        print(f"  slice  {statistics.median(slices):6.0f} / {max(slices):6.0f}")
        print(f"  vip    {statistics.median(vips):6.0f} / {max(vips):6.0f}")
    finally:
        subprocess.run(
            [sys.executable, "-m", "ketch.cli", "down", *opts], capture_output=True, check=False
        )
        for pf in sv.read_pid_files(layout):
            if pf.record is not None and sv.check(pf.record) is sv.ProcState.RUNNING:
                os.kill(pf.record.pid, signal.SIGKILL)
        fabric.destroy(layout, kill_grace=1.0)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
