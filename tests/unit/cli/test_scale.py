"""`ketch scale` and the `get` tables of the controller-made kinds, as a real process over a
real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.store import SqliteStore
from tests.unit.cli.test_cli import Ketch
from tests.unit.cluster.controllers.sim import deployment_manifest


@pytest.fixture
def ketch(tmp_path: Path) -> Ketch:
    return Ketch(tmp_path / "ketch.db")


@pytest.fixture
def store(tmp_path: Path, ketch: Ketch) -> SqliteStore:
    ketch("version")
    s = SqliteStore(tmp_path / "ketch.db")
    s.apply([deployment_manifest("web", replicas=3), deployment_manifest("api", replicas=2)])
    return s


def replicas(store: SqliteStore, name: str) -> int:
    return int(store.get("Deployment", "default", name)["spec"]["replicas"])


def test_scale_both_spellings(ketch: Ketch, store: SqliteStore) -> None:
    assert ketch("scale", "deployment/web", "--replicas", "5").stdout == "deployment/web scaled\n"
    assert replicas(store, "web") == 5
    proc = ketch("scale", "deploy", "web", "api", "--replicas", "0")
    assert proc.stdout.splitlines() == ["deployment/web scaled", "deployment/api scaled"]
    assert (replicas(store, "web"), replicas(store, "api")) == (0, 0)
    generation = store.get("Deployment", "default", "web")["metadata"]["generation"]
    ketch("scale", "deployments/web", "--replicas", "0")  # unchanged: no write
    assert store.get("Deployment", "default", "web")["metadata"]["generation"] == generation


def test_current_replicas_precondition(ketch: Ketch, store: SqliteStore) -> None:
    proc = ketch("scale", "deploy/web", "--replicas", "1", "--current-replicas", "2", ok=False)
    assert proc.returncode == 1
    assert "has 3 replicas, not 2" in proc.stderr
    assert replicas(store, "web") == 3
    ketch("scale", "deploy/web", "--replicas", "1", "--current-replicas", "3")
    assert replicas(store, "web") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy/web", "--replicas", "-1"], "--replicas must be 0 or more"),
        (["deploy/web"], "scale needs --replicas"),
        (["deploy/nope", "--replicas", "1"], 'deployments "nope" not found in namespace default'),
        (["pod/x", "--replicas", "1"], "pods cannot be scaled"),
        (["widget/x", "--replicas", "1"], "unknown resource type 'widget'"),
        (["deploy", "--replicas", "1"], "name the object"),
        (["--replicas", "1"], "scale needs what to scale"),
        (["deploy/web", "api", "--replicas", "1"], "expected TYPE/NAME"),
    ],
)
def test_errors(ketch: Ketch, store: SqliteStore, args: list[str], message: str) -> None:
    proc = ketch("scale", *args, ok=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert replicas(store, "web") == 3


def test_scaling_an_owned_replicaset_warns(ketch: Ketch, store: SqliteStore) -> None:
    d = store.get("Deployment", "default", "web")
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "web-abc",
            "namespace": "default",
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": "web",
                    "uid": d["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": d["spec"]["template"],
        },
        "status": {"replicas": 3, "readyReplicas": 2},
    }
    store.apply([rs])
    proc = ketch("scale", "rs", "web-abc", "--replicas", "1")
    assert "controlled by deployment/web" in proc.stderr
    assert store.get("ReplicaSet", "default", "web-abc")["spec"]["replicas"] == 1
    table = ketch("get", "rs").stdout.splitlines()
    assert table[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert table[1].split()[:4] == ["web-abc", "1", "3", "2"]


def test_get_endpointslices_table(ketch: Ketch, store: SqliteStore) -> None:
    store.apply(
        [
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "web-x",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "web"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [f"10.244.1.{i}"]} for i in range(2, 7)],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        ]
    )
    table = ketch("get", "endpointslices").stdout.splitlines()
    assert table[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert table[1].split()[:6] == [
        "web-x",
        "IPv4",
        "8080",
        "10.244.1.2,10.244.1.3,10.244.1.4",
        "+",
        "2",
    ]
