"""The node process's composition: roles found by name, a failing role restarted, the
heartbeat always on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ketch.cluster import node as node_mod
from ketch.cluster import nodes
from ketch.cluster.layout import ClusterLayout
from ketch.store import MemoryStore, Store

LAYOUT = ClusterLayout(Path("/tmp/x"), "t")


def test_default_roles_hand_the_cni_socket_to_the_kubelet() -> None:
    store = MemoryStore()
    roles = node_mod.default_roles(store, LAYOUT, "node1", cni_socket=Path("/tmp/x/cni.sock"))
    assert list(roles) == ["kubelet", "service-proxy", "dns"]
    kubelet = roles["kubelet"]()
    assert kubelet.cni_event_socket == Path("/tmp/x/cni.sock")  # type: ignore[attr-defined]


async def test_supervise_restarts_a_failing_role(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    stop = asyncio.Event()

    class Flaky:
        async def run(self, stop_: asyncio.Event) -> None:
            runs.append(1)
            if len(runs) < 3:
                raise RuntimeError(f"crash {len(runs)}")
            await stop_.wait()

    caplog.set_level(logging.ERROR, "ketch.cluster.node")
    task = asyncio.ensure_future(
        node_mod.supervise("flaky", Flaky, stop, backoff_start=0.01, backoff_max=0.02)
    )
    for _ in range(500):
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(runs) == 3
    stop.set()
    await asyncio.wait_for(task, 5)
    assert "role flaky failed: RuntimeError: crash 1" in caplog.text


async def test_supervise_restarts_a_role_that_returns_early() -> None:
    runs: list[int] = []
    stop = asyncio.Event()

    class Quitter:
        async def run(self, stop_: asyncio.Event) -> None:
            runs.append(1)
            if len(runs) >= 2:
                stop.set()

    await asyncio.wait_for(node_mod.supervise("q", Quitter, stop, backoff_start=0.01), 5)
    assert len(runs) == 2


async def test_run_node_runs_heartbeat_and_roles() -> None:
    store = MemoryStore()
    nodes.ensure_nodes(store, LAYOUT, 1)
    seen: list[tuple[str, str]] = []
    stop = asyncio.Event()

    class Role:
        def __init__(self, s: Store, layout: ClusterLayout, node_name: str) -> None:
            assert s is store
            assert layout is LAYOUT
            seen.append(("start", node_name))

        async def run(self, stop_: asyncio.Event) -> None:
            await stop_.wait()
            seen.append(("stop", "x"))

    task = asyncio.ensure_future(
        node_mod.run_node(
            store, LAYOUT, "node1", stop, roles={"kubelet": lambda: Role(store, LAYOUT, "node1")}
        )
    )
    for _ in range(500):
        if nodes.is_ready(store.get("Node", "", "node1")) and seen:
            break
        await asyncio.sleep(0.01)
    assert nodes.is_ready(store.get("Node", "", "node1"))
    stop.set()
    ran = await asyncio.wait_for(task, 5)
    assert ran == ["heartbeat", "kubelet"]
    assert seen == [("start", "node1"), ("stop", "x")]
    cond = nodes.ready_condition(store.get("Node", "", "node1"))
    assert cond is not None
    assert cond["status"] == "False"


def test_check_netns_refuses_the_wrong_netns() -> None:
    with pytest.raises(node_mod.NodeProcessError, match="does not exist"):
        node_mod.check_netns(ClusterLayout(Path("/tmp/x"), "tnone"), "node1")
