"""`ServiceProxy`'s loop against a real store, with a stand-in `nft` executable that records
each script it is given (and fails on demand): applies on change only, coalesces bursts,
survives and retries a failing nft, removes its table on stop. The real nft and the data
path are in tests/integration/test_cluster_svcnet.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster.layout import ClusterLayout
from ketch.cluster.services import ServiceProxy
from ketch.store import SqliteStore
from ketch.util.tasks import spawn

FAKE_NFT = """#!/bin/sh
# records each script; fails (like nft does) while {fail} exists
n=$(ls {out} | wc -l)
cat > {out}/$(printf %04d $n).nft
if [ -e {fail} ]; then echo "Error: Could not process rule: Operation not permitted" >&2; exit 1; fi
exit 0
"""


def svc(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }


def slice_(svc: str, ips: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-x",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        "ports": [{"name": "http", "port": 8080}],
    }


@dataclass
class Rig:
    proxy: ServiceProxy
    store: SqliteStore
    out: Path
    fail: Path

    def scripts(self) -> list[str]:
        return [p.read_text() for p in sorted(self.out.iterdir())]


async def until(cond: Any, what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    out = tmp_path / "scripts"
    out.mkdir()
    fail = tmp_path / "fail"
    nft = tmp_path / "nft"
    nft.write_text(FAKE_NFT.format(out=out, fail=fail))
    nft.chmod(0o755)
    store = SqliteStore(tmp_path / "ketch.db")
    store.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": "node1"},
                "spec": {"podCIDR": "10.244.1.0/24"},
            },
            svc("web", "10.96.0.20"),
            slice_("web", ["10.244.1.2", "10.244.2.2"]),
        ]
    )
    # manage_route=False: this test runs in the root netns, where it must not add a route
    proxy = ServiceProxy(
        store, ClusterLayout(tmp_path), "node1", nft=str(nft), retry=0.2, manage_route=False
    )
    rig = Rig(proxy, store, out, fail)
    stop = asyncio.Event()
    task = spawn(proxy.run(stop), "service-proxy-test")
    try:
        yield rig
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        store.close()
    # the last script removes the table
    assert rig.scripts()[-1] == "table ip ketch-svc\ndelete table ip ketch-svc\n"


async def test_applies_initial_state_with_node_pod_cidr(rig: Rig) -> None:
    await until(lambda: rig.proxy.applies == 1, "the first apply")
    first = rig.scripts()[0]
    assert "10.244.1.2 . 8080" in first
    assert "10.244.2.2 . 8080" in first
    # the hairpin set holds only this node's pods (podCIDR from the Node object)
    assert "10.244.1.2 . 10.244.1.2" in first
    assert "10.244.2.2 . 10.244.2.2" not in first


async def test_endpoint_change_is_applied_and_unrelated_changes_are_not(rig: Rig) -> None:
    await until(lambda: rig.proxy.applies == 1, "the first apply")
    await asyncio.to_thread(rig.store.apply, [slice_("web", ["10.244.2.2"])])
    await until(lambda: rig.proxy.applies == 2, "the endpoint change")
    assert "10.244.1.2" not in rig.scripts()[-1]
    # a ConfigMap-like object of another kind, or a Service re-applied unchanged: no nft run
    before = len(rig.scripts())
    await asyncio.to_thread(
        rig.store.apply,
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}],
    )
    await asyncio.to_thread(
        rig.store.apply,
        [
            {
                **svc("web", "10.96.0.20"),
                "metadata": {"name": "web", "namespace": "shop", "labels": {"x": "y"}},
            }
        ],
    )
    await asyncio.sleep(0.5)
    assert len(rig.scripts()) == before


async def test_burst_is_coalesced(rig: Rig) -> None:
    await until(lambda: rig.proxy.applies == 1, "the first apply")
    for i in range(20):
        await asyncio.to_thread(rig.store.apply, [slice_("web", [f"10.244.1.{i + 2}"])])
    await until(lambda: "10.244.1.21:8080" in rig.scripts()[-1], "the last change")
    assert rig.proxy.applies < 21


async def test_nft_failure_is_logged_and_retried(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    await until(lambda: rig.proxy.applies == 1, "the first apply")
    rig.fail.touch()
    await asyncio.to_thread(rig.store.apply, [svc("api", "10.96.0.30")])
    await until(
        lambda: sum("Operation not permitted" in r.getMessage() for r in caplog.records) >= 2,
        "two failed attempts",
    )
    assert rig.proxy.applies == 1
    rec = next(r for r in caplog.records if "Operation not permitted" in r.getMessage())
    assert rec.levelno == logging.ERROR
    assert "retrying" in rec.getMessage()
    assert rec.exc_info is None
    rig.fail.unlink()
    await until(lambda: rig.proxy.applies == 2, "the retry after nft recovers")
    assert "10.96.0.30" in rig.scripts()[-1]


async def test_bad_object_is_skipped(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    await until(lambda: rig.proxy.applies == 1, "the first apply")
    # the store holds manifests; one that does not parse must not stop the proxy
    bad = svc("odd", "10.96.0.31")
    bad["spec"]["ports"] = [{"port": 80}, {"port": 81}]  # two unnamed ports: invalid
    await asyncio.to_thread(rig.store.apply, [bad, svc("api", "10.96.0.30")])
    await until(lambda: rig.proxy.applies == 2, "the valid change")
    assert "10.96.0.31" not in rig.scripts()[-1]
    msg = next(r.getMessage() for r in caplog.records if "does not parse" in r.getMessage())
    assert "Service shop/odd" in msg
    assert "ports[0].name" in msg  # located, in YAML names
