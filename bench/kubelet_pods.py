"""How fast one kubelet brings pods up and tears them down, on the real path.

    sudo uv run --frozen python bench/kubelet_pods.py [--pods 20] [--rounds 3]

Builds one node netns (`Fabric`), a SQLite store with its Node object, runs a `Kubelet`
in-process, applies `--pods` Pods at once (each `sleep 3600`, no probes) and measures: time
from the apply until every pod's status says Running and Ready (sandbox + process + status
write), and time from deleting them all until every pod netns is gone. Needs root; makes
only its own namespaces (prefix `kkl` + random hex) and removes them.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ketch.cluster.backoff import BackoffPolicy
from ketch.cluster.kubelet import Kubelet
from ketch.cluster.layout import DNS_IP, ClusterLayout
from ketch.netns.fabric import Fabric, cleanup_stale, ip_batch, stale_namespaces
from ketch.store.sqlite import SqliteStore
from ketch.util.tasks import spawn


def pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p{i}", "namespace": "default"},
        "spec": {
            "nodeName": "node1",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "c", "command": ["sleep", "3600"]}],
        },
    }


def ready_count(store: SqliteStore) -> int:
    n = 0
    for p in store.list("Pod").items:
        conds = (p.get("status") or {}).get("conditions") or []
        n += any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
    return n


async def round_trip(store: SqliteStore, layout: ClusterLayout, pods: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    store.apply([pod(i) for i in range(pods)])
    await asyncio.to_thread(poll, lambda: ready_count(store) == pods)
    up = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(pods):
        store.delete("Pod", "default", f"p{i}")
    await asyncio.to_thread(
        poll, lambda: not [n for n in stale_namespaces(layout.name) if "-p-" in n]
    )
    down = time.perf_counter() - t0
    return up, down


def poll(done: Callable[[], bool], limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"not done within {limit}s")
        time.sleep(0.01)


def remove_etc(name: str) -> None:
    for d in Path("/etc/netns").glob(f"{name}-*"):
        shutil.rmtree(d, ignore_errors=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    name = f"kkl{secrets.token_hex(3)}"
    tmp = Path(tempfile.mkdtemp(prefix="kbench-"))
    layout = ClusterLayout(tmp, name)
    fab = Fabric(name)
    store = SqliteStore(layout.store_path)
    try:
        node = fab.add_node("node1")
        ip_batch(node.netns, [f"addr add {DNS_IP}/32 dev lo"])
        store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": "node1"},
                    "spec": {"podCIDR": str(node.pod_cidr)},
                    "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]},
                }
            ]
        )
        stop = asyncio.Event()
        task = spawn(Kubelet(store, layout, "node1", backoff=BackoffPolicy()).run(stop), "kubelet")
        ups, downs = [], []
        for _ in range(args.rounds):
            up, down = await round_trip(store, layout, args.pods)
            ups.append(up)
            downs.append(down)
            print(f"{args.pods} pods: all Ready after {up:.2f}s, all gone {down:.2f}s after delete")
        stop.set()
        await task
        print(
            f"median over {args.rounds} rounds: up {statistics.median(ups):.2f}s "
            f"({statistics.median(ups) / args.pods * 1000:.0f} ms/pod), "
            f"down {statistics.median(downs):.2f}s"
        )
    finally:
        store.close()
        fab.close()
        cleanup_stale(name)
        remove_etc(name)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
