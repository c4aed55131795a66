"""Builders for the objects controller tests feed the pure cores (valid api models)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from ketch.api.core import Deployment, Node, Pod, ReplicaSet, Service
from ketch.cluster.controllers.meta import fmt_time

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
_uids = itertools.count(1)


def uid() -> str:
    return f"uid-{next(_uids)}"


def ago(seconds: float) -> str:
    return fmt_time(NOW - dt.timedelta(seconds=seconds))


def node(
    name: str,
    *,
    ready: bool = True,
    heartbeat_age: float = 5,
    labels: dict[str, str] | None = None,
    unschedulable: bool = False,
) -> Node:
    m: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": uid()},
        "spec": {"unschedulable": unschedulable} if unschedulable else {},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastHeartbeatTime": ago(heartbeat_age),
                }
            ]
        },
    }
    if labels:
        m["metadata"]["labels"] = labels
    return Node.model_validate(m)


CONTAINER = {"name": "web", "command": ["python3", "-m", "http.server", "8080"]}


def pod(
    name: str,
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    node_name: str | None = None,
    node_selector: dict[str, str] | None = None,
    owner: Any = None,
    ip: str | None = None,
    ips: list[str] | None = None,
    ready: bool = False,
    ready_for: float = 100,
    phase: str | None = None,
    created_ago: float = 100,
    restarts: int = 0,
    ports: list[dict[str, Any]] | None = None,
) -> Pod:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid(),
        "resourceVersion": "1",
        "creationTimestamp": ago(created_ago),
    }
    if labels:
        meta["labels"] = labels
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.metadata.uid,
                "controller": True,
            }
        ]
    container = dict(CONTAINER)
    if ports:
        container["ports"] = ports
    spec: dict[str, Any] = {"containers": [container]}
    if node_name:
        spec["nodeName"] = node_name
    if node_selector:
        spec["nodeSelector"] = node_selector
    status: dict[str, Any] = {}
    if phase or node_name:
        status["phase"] = phase or ("Running" if ready else "Pending")
    if ip:
        status["podIP"] = ip
    if ips:
        status["podIPs"] = [{"ip": i} for i in ips]
    status["conditions"] = [
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "lastTransitionTime": ago(ready_for),
        }
    ]
    if restarts:
        status["containerStatuses"] = [{"name": "web", "restartCount": restarts}]
    return Pod.model_validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
    )


def template(labels: dict[str, str], version: str = "v1") -> dict[str, Any]:
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{**CONTAINER, "env": [{"name": "VERSION", "value": version}]}]},
    }


def deployment(
    name: str = "web",
    *,
    replicas: int = 3,
    version: str = "v1",
    strategy: dict[str, Any] | None = None,
    history: int | None = None,
    generation: int = 1,
    status: dict[str, Any] | None = None,
) -> Deployment:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": template({"app": name}, version),
    }
    if strategy:
        spec["strategy"] = strategy
    if history is not None:
        spec["revisionHistoryLimit"] = history
    m: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"deploy-{name}",
            "generation": generation,
            "resourceVersion": "1",
        },
        "spec": spec,
    }
    if status:
        m["status"] = status
    return Deployment.model_validate(m)


def replicaset(
    name: str = "web-abc",
    *,
    replicas: int = 3,
    labels: dict[str, str] | None = None,
    min_ready: int = 0,
) -> ReplicaSet:
    labels = labels or {"app": "web", "pod-template-hash": "abc"}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [CONTAINER]}},
    }
    if min_ready:
        spec["minReadySeconds"] = min_ready
    return ReplicaSet.model_validate(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": f"rs-{name}",
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": spec,
        }
    )


def service(
    name: str = "web",
    *,
    selector: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    cluster_ip: str = "10.96.0.20",
    labels: dict[str, str] | None = None,
) -> Service:
    spec: dict[str, Any] = {"clusterIP": cluster_ip}
    if selector is not None:
        spec["selector"] = selector
    if ports is not None:
        spec["ports"] = ports
    elif cluster_ip != "None":
        spec["ports"] = [{"port": 80, "targetPort": 8080}]
    meta: dict[str, Any] = {"name": name, "namespace": "default", "uid": f"svc-{name}"}
    if labels:
        meta["labels"] = labels
    return Service.model_validate(
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    )
