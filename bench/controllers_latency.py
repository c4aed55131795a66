"""How fast the controllers follow the store: readiness -> EndpointSlice, scale -> slice.

The acceptance of issue 10 wants endpoints (and the VIP rules built from them) to follow a
scale-down within a second. This measures the controllers' share on a real SQLite store in a
temporary directory: `run_controllers` in this process, writes from a second store
connection (as `ketch scale` and the kubelets write from their own processes), polling
every 2 ms for the result.

    uv run --frozen python bench/controllers_latency.py --rounds 20

Legs (ms, p50 / p90 / max over the rounds):
    ready->slice    a pod's Ready condition flips; its endpoint's `ready` follows
    scale->slice    a Deployment goes 3 -> 1 replicas; the slice lists one endpoint
                    (Deployment -> ReplicaSet -> pod deletes -> endpoints)
    apply->bound    a 3-replica Deployment is created; all 3 pods are bound to nodes
No root needed; everything lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ketch.cluster.controllers import run_controllers
from ketch.cluster.controllers.meta import fmt_time
from ketch.store import ConflictError, Manifest, SqliteStore
from ketch.util.tasks import spawn


def _now() -> str:
    return fmt_time(dt.datetime.now(dt.UTC))


def _node(name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": _now()}]
        },
    }


def _deployment(name: str, replicas: int) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "command": ["sleep", "1d"]}]},
            },
        },
    }


def _service(name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.30", "ports": [{"port": 80}]},
    }


def _edit(store: SqliteStore, kind: str, name: str, change: Callable[[Manifest], None]) -> None:
    while True:
        m = store.get(kind, "default", name)
        change(m)
        try:
            store.apply([m])
            return
        except ConflictError:
            continue


async def _until(check: Callable[[], Any], within: float = 30.0) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > within:
            raise TimeoutError("the controllers did not get there in 30 s")
        await asyncio.sleep(0.002)
    return (time.perf_counter() - start) * 1000


def _endpoints(store: SqliteStore, svc: str) -> list[dict[str, Any]]:
    items = store.list("EndpointSlice", "default", f"kubernetes.io/service-name={svc}").items
    return [ep for s in items for ep in s["endpoints"]]


def _set_ready(store: SqliteStore, app: str, ready: bool, ip_base: int = 10) -> None:
    for i, m in enumerate(store.list("Pod", "default", f"app={app}").items):
        ip = f"10.244.1.{ip_base + i}"

        def change(pod: Manifest, ip: str = ip) -> None:
            status = pod.setdefault("status", {})
            status.update(phase="Running", podIP=ip, podIPs=[{"ip": ip}])
            status["conditions"] = [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": _now(),
                }
            ]

        _edit(store, "Pod", m["metadata"]["name"], change)


async def _one_round(store: SqliteStore, app: str, results: dict[str, list[float]]) -> None:
    store.apply([_deployment(app, 3), _service(app)])
    results["apply->bound"].append(
        await _until(
            lambda: (
                sum(
                    1
                    for p in store.list("Pod", "default", f"app={app}").items
                    if p["spec"].get("nodeName")
                )
                == 3
            )
        )
    )
    _set_ready(store, app, True)
    await _until(lambda: sum(e["conditions"]["ready"] for e in _endpoints(store, app)) == 3)
    # readiness flip of one pod
    pod = store.list("Pod", "default", f"app={app}").items[0]
    name = pod["metadata"]["name"]
    _edit(
        store,
        "Pod",
        name,
        lambda m: m["status"].update(
            conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": _now()}]
        ),
    )
    results["ready->slice"].append(
        await _until(
            lambda: any(
                e["targetRef"]["name"] == name and not e["conditions"]["ready"]
                for e in _endpoints(store, app)
            )
        )
    )
    _edit(store, "Deployment", app, lambda m: m["spec"].update(replicas=1))
    results["scale->slice"].append(await _until(lambda: len(_endpoints(store, app)) == 1))
    store.delete("Deployment", "default", app)
    store.delete("Service", "default", app)


async def bench(rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"ready->slice": [], "scale->slice": [], "apply->bound": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ketch.db"
        controllers_store, store = SqliteStore(path), SqliteStore(path)
        store.apply([_node("node1"), _node("node2")])
        stop = asyncio.Event()
        task = spawn(run_controllers(controllers_store, stop), "bench-controllers")
        try:
            for r in range(rounds):
                await _one_round(store, f"app{r}", results)
        finally:
            stop.set()
            await task
            controllers_store.close()
            store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    results = asyncio.run(bench(args.rounds))
    print(f"controllers latency, {args.rounds} rounds, SQLite store ({sys.platform})\n")
    print("| leg | p50 ms | p90 ms | max ms |")
    print("|---|---|---|---|")
    for leg, values in results.items():
        values.sort()
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(f"| {leg} | {statistics.median(values):.0f} | {p90:.0f} | {max(values):.0f} |")


if __name__ == "__main__":
    main()
