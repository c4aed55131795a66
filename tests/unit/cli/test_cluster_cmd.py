"""`ketch logs` and `ketch status` over a real store file and real log files (no namespaces
needed: the kubelet's files are written by the test)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch.cluster.layout import ClusterLayout
from ketch.store.sqlite import SqliteStore


def _ketch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ketch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


@pytest.fixture
def layout(tmp_path: Path) -> ClusterLayout:
    lay = ClusterLayout(tmp_path, "tlogs")
    store = SqliteStore(lay.store_path)
    try:
        store.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "web", "namespace": "demo"},
                    "spec": {"containers": [{"name": "app", "command": ["x"]}]},
                },
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "two", "namespace": "demo"},
                    "spec": {
                        "containers": [
                            {"name": "a", "command": ["x"]},
                            {"name": "b", "command": ["x"]},
                        ]
                    },
                },
            ]
        )
        uid = store.get("Pod", "demo", "web")["metadata"]["uid"]
    finally:
        store.close()
    for restart, text in ((0, "first run\n"), (1, "second run\n")):
        path = lay.container_log("demo", "web", uid, "app", restart)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return lay


def _opts(layout: ClusterLayout) -> list[str]:
    return ["--state-dir", str(layout.state_dir), "--name", layout.name, "-n", "demo"]


def test_logs_current_and_previous(layout: ClusterLayout) -> None:
    r = _ketch("logs", *_opts(layout), "web")
    assert (r.returncode, r.stdout) == (0, "second run\n")
    r = _ketch("logs", *_opts(layout), "web", "--previous")
    assert (r.returncode, r.stdout) == (0, "first run\n")
    r = _ketch("logs", *_opts(layout), "web", "-c", "app")
    assert r.stdout == "second run\n"


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["nope"], 'pod "nope" not found in namespace demo'),
        (["web", "-c", "sidecar"], 'container "sidecar" is not in pod web'),
        (["two"], "pod two has containers a, b: choose one with -c"),
        (["two", "-c", "a"], 'container "a" of pod two has no log yet'),
        (["two", "-c", "a", "--previous"], 'previous terminated container "a"'),
    ],
)
def test_logs_errors(layout: ClusterLayout, args: list[str], msg: str) -> None:
    r = _ketch("logs", *_opts(layout), *args)
    assert r.returncode == 1
    assert msg in r.stderr
    assert "Traceback" not in r.stderr


def test_logs_follow_sees_a_restart_and_ends_when_the_pod_goes(layout: ClusterLayout) -> None:
    store = SqliteStore(layout.store_path)
    uid = store.get("Pod", "demo", "web")["metadata"]["uid"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ketch.cli", "logs", *_opts(layout), "web", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        with open(layout.container_log("demo", "web", uid, "app", 1), "a") as f:
            f.write("more of run 1\n")
        layout.container_log("demo", "web", uid, "app", 2).write_text("third run\n")
        time.sleep(1.0)
        store.delete("Pod", "demo", "web")
        out, err = proc.communicate(timeout=30)
    finally:
        store.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "second run\nmore of run 1\nthird run\n"


def test_logs_without_a_store(tmp_path: Path) -> None:
    r = _ketch("logs", "--state-dir", str(tmp_path / "none"), "web")
    assert r.returncode == 1
    assert "no store at" in r.stderr


def test_status_of_a_cluster_that_is_not_up(tmp_path: Path) -> None:
    r = _ketch("status", "--state-dir", str(tmp_path), "--name", "tnotup")
    assert r.returncode == 3
    assert "cluster tnotup is not up" in r.stdout


def test_bad_cluster_name(tmp_path: Path) -> None:
    r = _ketch("status", "--state-dir", str(tmp_path), "--name", "Bad_Name")
    assert r.returncode == 1
    assert "must be 1-12 lowercase letters" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the root check comes first")
def test_up_names_missing_tools(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ketch.cli", "up", "--state-dir", str(tmp_path), "--name", "tt"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(tmp_path / "empty")},
        check=False,
    )
    assert r.returncode == 1
    for tool in ("`ip`", "`nft`", "`nsenter`"):
        assert tool in r.stderr
    assert "apt-get install" in r.stderr
    assert not (tmp_path / "ketch.db").exists()  # refused before touching anything


def test_logs_of_a_deployment_picks_its_best_pod(layout: ClusterLayout) -> None:
    store = SqliteStore(layout.store_path)
    try:
        for name, status in (("web", {"phase": "Running"}), ("two", {"phase": "Pending"})):
            m = store.get("Pod", "demo", name)
            m["metadata"]["labels"] = {"app": "web"}
            m["status"] = status
            store.apply([m])
        store.apply(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "webd", "namespace": "demo"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {
                            "metadata": {"labels": {"app": "web"}},
                            "spec": {"containers": [{"name": "app", "command": ["x"]}]},
                        },
                    },
                },
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "empty", "namespace": "demo"},
                    "spec": {
                        "selector": {"matchLabels": {"app": "none"}},
                        "template": {
                            "metadata": {"labels": {"app": "none"}},
                            "spec": {"containers": [{"name": "app", "command": ["x"]}]},
                        },
                    },
                },
            ]
        )
    finally:
        store.close()
    for ref in ("deploy/webd", "deployment/webd", "deployments.apps/webd"):
        r = _ketch("logs", *_opts(layout), ref)
        assert (r.returncode, r.stdout) == (0, "second run\n"), r.stderr
        assert "Found 2 pods, using pod/web" in r.stderr  # Running before Pending
    r = _ketch("logs", *_opts(layout), "pod/web", "--previous")
    assert (r.returncode, r.stdout) == (0, "first run\n")
    for ref, msg in (
        ("deploy/nope", "deployment/nope not found in namespace demo"),
        ("deploy/empty", "deployment/empty has no pods yet"),
        ("svc/webd", "cannot pick a pod of a 'svc'"),
    ):
        r = _ketch("logs", *_opts(layout), ref)
        assert r.returncode == 1, ref
        assert msg in r.stderr
        assert "Traceback" not in r.stderr
