"""PID records of supervised processes: parsing, identity checks, the argv `ketch up` runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ketch.cluster import supervisor as sv
from ketch.cluster.layout import ClusterLayout

LAYOUT = ClusterLayout(Path("/var/lib/k"), "t")


def _stat(state: str = "S", ticks: int = 4242, comm: str = "python") -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice threads itrealvalue starttime ...
    fields = [state, *["1"] * 18, str(ticks), "123", "456"]
    return f"77 ({comm}) " + " ".join(fields) + "\n"


REC = sv.PidRecord("node-node1", 77, 4242, 1000.0, ("python", "-m", "ketch.cli"), "t-n-node1")


@pytest.mark.parametrize("comm", ["python", "a b", "x) S 1 2 (y", "(("])
def test_start_ticks_of_survives_odd_command_names(comm: str) -> None:
    assert sv.start_ticks_of(_stat("R", 99, comm)) == ("R", 99)


@pytest.mark.parametrize(
    ("stat", "state"),
    [
        (_stat("S", 4242), sv.ProcState.RUNNING),
        (_stat("R", 4242), sv.ProcState.RUNNING),
        (_stat("Z", 4242), sv.ProcState.EXITED),  # a zombie is dead
        (None, sv.ProcState.EXITED),
        (_stat("S", 4243), sv.ProcState.REPLACED),  # same PID, another process
        ("garbage", sv.ProcState.EXITED),
    ],
)
def test_check_never_trusts_the_pid_alone(stat: str | None, state: sv.ProcState) -> None:
    assert sv.check(REC, lambda pid: stat if pid == 77 else None) is state


def test_check_real_process() -> None:
    stat = sv.read_stat(os.getpid())
    assert stat is not None
    me = sv.PidRecord("x", os.getpid(), sv.start_ticks_of(stat)[1], 0.0, ())
    assert sv.check(me) is sv.ProcState.RUNNING
    assert sv.check(sv.PidRecord("x", os.getpid(), 1, 0.0, ())) is sv.ProcState.REPLACED


def test_pid_record_round_trip() -> None:
    assert sv.PidRecord.from_json(REC.to_json()) == REC


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not JSON"),
        ("1234\n", "not a JSON object"),  # an old-style bare PID file
        ("[1]", "not a JSON object"),
        ('{"pid": 5}', "missing or bad field"),
        ('{"role":"r","pid":"x","start_ticks":1,"started_at":1,"argv":[]}', "bad field"),
        ('{"role":"r","pid":1,"start_ticks":1,"started_at":1,"argv":[]}', "pid 1"),
        ('{"role":"r","pid":0,"start_ticks":1,"started_at":1,"argv":[]}', "pid 0"),
        ('{"role":"r","pid":-5,"start_ticks":1,"started_at":1,"argv":[]}', "pid -5"),
    ],
)
def test_pid_record_rejects_bad_files(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sv.PidRecord.from_json(text)


def test_read_pid_files_reports_bad_ones(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path, "t")
    run = layout.pid_file("x").parent
    run.mkdir(parents=True)
    layout.pid_file("controllers").write_text(REC.to_json())
    layout.pid_file("node-node2").write_text("garbage")
    found = {pf.role: pf for pf in sv.read_pid_files(layout)}
    assert found["controllers"].record == REC
    assert found["node-node2"].record is None
    assert "unreadable PID file" in (found["node-node2"].problem or "")


def test_process_specs_without_the_mesh() -> None:
    specs = sv.process_specs(LAYOUT, ["node1", "node2"], python="/py", mesh=False)
    assert [s.role for s in specs] == ["control-plane", "controllers", "node-node1", "node-node2"]
    cp, ctl, n1, _ = specs
    assert cp.argv == (
        "/py",
        "-m",
        "ketch.cli",
        "control-plane",
        "run",
        "--state-dir",
        "/var/lib/k",
        "--xds",
    )
    assert cp.netns is None
    assert ctl.netns is None
    assert ctl.argv[3:] == ("cluster", "controllers", "--state-dir", "/var/lib/k", "--name", "t")
    assert n1.netns == "t-n-node1"
    assert n1.argv[-2:] == ("--node", "node1")


def test_process_specs_with_the_mesh_start_the_agent_before_the_node() -> None:
    specs = sv.process_specs(LAYOUT, ["node1"], python="/py")
    assert [s.role for s in specs] == [
        "control-plane",
        "controllers",
        "agent-node1",
        "ztunnel-node1",
        "node-node1",
    ]
    agent, zt, node = specs[2:]
    assert {agent.netns, zt.netns, node.netns} == {"t-n-node1"}
    cni = str(LAYOUT.cni_socket("node1"))
    zds = str(LAYOUT.zds_socket("node1"))
    # the kubelet posts to the socket the agent serves; the proxy talks ZDS to the agent
    assert agent.argv[agent.argv.index("--cni-socket") + 1] == cni
    assert node.argv[node.argv.index("--cni-socket") + 1] == cni
    assert agent.argv[agent.argv.index("--zds-socket") + 1] == zds
    assert zt.argv[zt.argv.index("--zds-socket") + 1] == zds
    assert agent.argv[agent.argv.index("--netns-template") + 1] == "/run/netns/t-p-{uidhash}"
    assert zt.argv[zt.argv.index("--control-plane") + 1] == "/var/lib/k/ca.sock"
    assert not zt.env  # the join token is added by `ketch up` only when needed
    # the node proxy says when it is ready in the file `ketch restart` waits on
    assert zt.argv[zt.argv.index("--ready-file") + 1] == str(sv.ready_file(LAYOUT, "ztunnel-node1"))
    assert sv.role_node("ztunnel-node1") == "node1"
    assert sv.role_node("controllers") is None


def test_start_stop_real_process(tmp_path: Path) -> None:
    """A real detached child: PID file written, log captured, SIGTERM stops it, the PID
    file is removed; stopping again is harmless."""
    layout = ClusterLayout(tmp_path, "t")
    spec = sv.ProcessSpec(
        "controllers",
        (sys.executable, "-c", "import time; print('hel' + 'lo', flush=True); time.sleep(60)"),
    )
    rec = sv.start(layout, spec)
    try:
        assert sv.read_pid_file(layout, "controllers") == rec
        assert sv.check(rec) is sv.ProcState.RUNNING
        assert os.getsid(rec.pid) == rec.pid  # its own session
        sv.wait_ready(
            layout, rec, lambda: "\nhello" in layout.process_log("controllers").read_text(), 30, "x"
        )
        results = sv.stop_all(layout, [rec], grace=10)
        assert [r.outcome for r in results] == ["stopped"]
        assert sv.check(rec) is sv.ProcState.EXITED
        assert not layout.pid_file("controllers").exists()
        assert [r.outcome for r in sv.stop_all(layout, [rec])] == ["not running"]
    finally:
        if sv.check(rec) is sv.ProcState.RUNNING:
            os.kill(rec.pid, 9)


def test_stop_ignores_sigterm_then_kills(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path, "t")
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ar' + 'med', flush=True); time.sleep(60)"
    )
    rec = sv.start(layout, sv.ProcessSpec("stubborn", (sys.executable, "-c", code)))
    try:
        sv.wait_ready(
            layout, rec, lambda: "\narmed" in layout.process_log("stubborn").read_text(), 30, "x"
        )
        assert [r.outcome for r in sv.stop_all(layout, [rec], grace=0.5)] == ["killed"]
    finally:
        if sv.check(rec) is sv.ProcState.RUNNING:
            os.kill(rec.pid, 9)


def test_stale_pid_file_is_never_signalled(tmp_path: Path) -> None:
    """A PID file naming a live process that is not ours (start time differs): reported as
    stale, and that process is left alone."""
    layout = ClusterLayout(tmp_path, "t")
    stale = sv.PidRecord("node-x", os.getpid(), 1, 0.0, ("old",))
    assert [r.outcome for r in sv.stop_all(layout, [stale], grace=0.1)] == ["stale pid file"]


def test_wait_ready_reports_early_exit_with_log(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path, "t")
    code = "import sys; print('bo' + 'om: bad config', file=sys.stderr); sys.exit(3)"
    rec = sv.start(layout, sv.ProcessSpec("controllers", (sys.executable, "-c", code)))
    with pytest.raises(
        sv.SupervisorError, match=r"(?s)exited before it was ready.*\nboom: bad config"
    ):
        sv.wait_ready(layout, rec, lambda: False, 30, "waiting")


def test_ready_file(tmp_path: Path) -> None:
    layout = ClusterLayout(tmp_path, "t")
    rec = sv.PidRecord("controllers", os.getpid(), 1, 0.0, ())
    assert not sv.is_marked_ready(layout, rec)
    sv.mark_ready(layout, "controllers")
    assert sv.is_marked_ready(layout, rec)
    other = sv.PidRecord("controllers", os.getpid() + 1, 1, 0.0, ())
    assert not sv.is_marked_ready(layout, other)
