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
