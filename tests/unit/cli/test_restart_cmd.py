"""`ketch restart ROLE`: which command it starts for a role, and its errors (no cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.cli.common import CliError
from ketch.cli.restart_cmd import _spec
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import ClusterLayout

LAYOUT = ClusterLayout(Path("/var/lib/k"), "t")


def test_node_proxy_restarts_with_the_ready_file_in_its_node() -> None:
    spec = _spec(LAYOUT, "ztunnel-node3")
    assert spec.netns == "t-n-node3"
    assert spec.argv[spec.argv.index("--ready-file") + 1] == str(
        sv.ready_file(LAYOUT, "ztunnel-node3")
    )
    assert _spec(LAYOUT, "control-plane").netns is None
    assert _spec(LAYOUT, "controllers").argv[3:5] == ("cluster", "controllers")


def test_node_process_keeps_the_cni_socket_when_the_mesh_runs(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path, "t")
    assert "--cni-socket" not in _spec(layout, "node-node1").argv  # no agent: --no-mesh
    rec = sv.PidRecord("agent-node1", 4242, 1, 0.0, ("x",), "t-n-node1")
    sv.write_pid_file(layout, rec)
    assert "--cni-socket" in _spec(layout, "node-node1").argv


@pytest.mark.parametrize("role", ["nope", "ztunnel-", "kubelet-node1"])
def test_unknown_role(role: str) -> None:
    with pytest.raises(CliError, match="unknown role"):
        _spec(LAYOUT, role)


@pytest.mark.skipif(os.geteuid() != 0, reason="ketch restart needs root")
def test_no_pid_file_says_what_to_do(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ketch.cli", "restart", "ztunnel-node1",
         "--state-dir", str(tmp_path), "--name", "t"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert "has no PID file" in r.stderr
    assert "ketch status" in r.stderr
    assert "Traceback" not in r.stderr
