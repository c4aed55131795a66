"""The standalone node proxy's readiness tasks, as ztunnel names them (no pods, no netns)."""

from __future__ import annotations

from pathlib import Path

from ketch.standalone.run import StandaloneOptions, StandaloneProxy


async def test_pending_tasks_through_start_and_drain(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("workloads: []\n")
    opts = StandaloneOptions(config, tmp_path / "ca", metrics=None, readiness=None, admin=None)
    p = StandaloneProxy(opts)
    assert p.pending() == ["proxy", "state manager"]
    assert not p.is_ready()
    await p.start()
    try:
        assert p.pending() == []
        assert p.is_ready()
        dump = p.config_dump()
        assert dump["ready"] is True
        assert dump["pods"] == []
        assert dump["workloadState"] == {}
        assert p.zt is not None
        await p.zt.drain(0.0)
        assert p.pending() == ["proxy"]  # draining: 500 "not ready, pending: proxy"
    finally:
        await p.close()


async def test_ready_file_names_this_process_once_ready(tmp_path: Path) -> None:
    """`ketch restart` learns that a new node proxy is ready from this file (15021 still
    belongs to the old process during the handover)."""
    import asyncio
    import os

    config = tmp_path / "mesh.yaml"
    config.write_text("workloads: []\n")
    ready = tmp_path / "run" / "ztunnel-n.ready"
    ready.parent.mkdir()
    opts = StandaloneOptions(
        config,
        tmp_path / "ca",
        metrics=None,
        readiness=None,
        admin=None,
        ready_file=ready,
        reload_interval=0.05,
    )
    p = StandaloneProxy(opts)
    p._mark_ready()
    assert not ready.exists()  # not ready before start
    await p.start()
    runner = asyncio.ensure_future(p.run())
    try:
        for _ in range(100):
            if ready.exists():
                break
            await asyncio.sleep(0.02)
        assert ready.read_text() == f"{os.getpid()}\n"
        assert not list(ready.parent.glob(".*.tmp"))
    finally:
        p.request_stop()
        await runner
