"""`ServiceWatch`: list + watch into parsed objects; relists when it fell behind history."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ketch.cluster.watch import ServiceWatch
from ketch.store import SqliteStore


def svc(name: str, ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }


async def test_follows_adds_updates_deletes_and_ignores_other_kinds(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ketch.db")
    store.apply([svc("a", "10.96.0.1")])
    changes = 0

    def bump() -> None:
        nonlocal changes
        changes += 1

    w = ServiceWatch(store, on_change=bump)
    await w.start()
    try:
        assert [s.name for s in w.snapshot()[0]] == ["a"]  # listed before start returns
        await asyncio.to_thread(store.apply, [svc("b", "10.96.0.2"), svc("a", "10.96.0.9")])
        await asyncio.to_thread(
            store.apply, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}]
        )
        await asyncio.to_thread(store.delete, "Service", "shop", "b")
        deadline = time.monotonic() + 10
        while changes < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert changes == 3  # the Namespace did not count
        services, slices = w.snapshot()
        assert [(s.name, s.spec.cluster_ip) for s in services] == [("a", "10.96.0.9")]
        assert slices == []
    finally:
        await w.stop()
        store.close()


async def test_relists_when_behind_the_store_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "ketch.db", history=3)
    for i in range(10):
        store.apply([svc(f"s{i}", f"10.96.0.{i + 1}")])
    notified = threading.Event()
    w = ServiceWatch(store, on_change=notified.set)
    w._loop = asyncio.get_running_loop()
    thread = threading.Thread(target=w._watch, args=(0,), daemon=True)  # revision 0 is gone
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not notified.is_set():
            assert time.monotonic() < deadline, "no relist after RevisionTooOldError"
            await asyncio.sleep(0.02)
        assert sorted(s.name for s in w.snapshot()[0]) == [f"s{i}" for i in range(10)]
        assert any("listing again" in r.getMessage() for r in caplog.records)
    finally:
        w._halt.set()
        await asyncio.to_thread(thread.join, 5)
        store.close()
