"""A deterministic, single-threaded cluster for controller tests: a MemoryStore, the real
`sync_*` functions called in a fixed order, and a fake kubelet that makes bound pods Ready
(at most `ready_per_round` per round, so rollouts take several steps)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from ketch.cluster.controllers import sync
from ketch.cluster.controllers.meta import fmt_time
from ketch.store import Manifest, MemoryStore

Check = Callable[["Sim"], None]


def node_manifest(name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": fmt_time(dt.datetime.now(dt.UTC)),
                }
            ]
        },
    }


class Sim:
    def __init__(self, nodes: int = 2, ready_per_round: int = 1) -> None:
        self.store = MemoryStore()
        self.ready_per_round = ready_per_round
        self.store.apply([node_manifest(f"node{i}") for i in range(1, nodes + 1)])
        self.checks: list[Check] = []
        self.steps = 0
        self._ips = 10

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def pods(self, namespace: str = "default") -> list[Manifest]:
        return self.store.list("Pod", namespace).items

    def kinds(self, kind: str, namespace: str = "default") -> list[Manifest]:
        return self.store.list(kind, namespace).items

    def _check(self) -> None:
        self.steps += 1
        for check in self.checks:
            check(self)

    def kubelet(self) -> None:
        made = 0
        for m in self.pods():
            if made >= self.ready_per_round:
                break
            status = m.get("status") or {}
            if not (m["spec"].get("nodeName")) or status.get("phase") == "Running":
                continue
            self._ips += 1
            status.update(
                {
                    "phase": "Running",
                    "podIP": f"10.244.1.{self._ips}",
                    "podIPs": [{"ip": f"10.244.1.{self._ips}"}],
                    "conditions": [
                        c for c in status.get("conditions") or [] if c["type"] != "Ready"
                    ]
                    + [
                        {
                            "type": "Ready",
                            "status": "True",
                            "lastTransitionTime": fmt_time(self.now()),
                        }
                    ],
                }
            )
            m["status"] = status
            self.store.apply([m])
            made += 1
        self._check()

    def round(self) -> None:
        for d in self.kinds("Deployment"):
            sync.sync_deployment(self.store, "default", d["metadata"]["name"], self.now())
            self._check()
        for rs in self.kinds("ReplicaSet"):
            sync.sync_replicaset(self.store, "default", rs["metadata"]["name"], self.now())
            self._check()
        sync.sync_scheduler(self.store, self.now())
        self._check()
        self.kubelet()
        sync.sync_endpoints(self.store, "default")
        sync.sync_gc(self.store, "default")
        self._check()

    def settle(self, max_rounds: int = 100) -> int:
        """Rounds until nothing changes any more (fails if it never settles)."""
        for i in range(max_rounds):
            before = self.store.revision()
            self.round()
            if self.store.revision() == before:
                return i
        raise AssertionError(f"the cluster did not settle in {max_rounds} rounds")

    def create(self, *manifests: Manifest) -> None:
        self.store.apply(list(manifests))

    def edit(self, kind: str, name: str, change: Callable[[Manifest], None]) -> None:
        """Change a stored object in place (as `ketch apply` of an edited file would)."""
        m = self.store.get(kind, "default", name)
        change(m)
        self.store.apply([m])


def deployment_manifest(
    name: str = "web",
    *,
    replicas: int = 3,
    version: str = "v1",
    strategy: dict[str, Any] | None = None,
    history: int | None = None,
) -> Manifest:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "command": ["python3", "-m", "http.server", "8080"],
                        "env": [{"name": "VERSION", "value": version}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ]
            },
        },
    }
    if strategy:
        spec["strategy"] = strategy
    if history is not None:
        spec["revisionHistoryLimit"] = history
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def version_of(pod: Manifest) -> str:
    env = pod["spec"]["containers"][0].get("env") or []
    return str(env[0]["value"]) if env else ""


def is_ready(pod: Manifest) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )
