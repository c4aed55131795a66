"""Where the agent finds a pod's netns: the CNI event's path (kept across restarts), else
the template; and a re-created namespace under the same path is told apart by inode."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ketch.agent.agent import NetnsLocator, _same_file, uid_hash
from ketch.agent.enrollment import PodView

POD = PodView("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "web-1", "app")


def test_recorded_path_wins_and_survives_a_restart(tmp_path: Path) -> None:
    f = tmp_path / "agent" / "netns.json"
    loc = NetnsLocator(f, "/run/netns/ketch-p-{uidhash}")
    assert loc.path(POD) == f"/run/netns/ketch-p-{uid_hash(POD.uid)}"
    assert uid_hash(POD.uid) == hashlib.sha256(POD.uid.encode()).hexdigest()[:12]
    loc.record(POD.uid, "/run/netns/from-cni")
    assert NetnsLocator(f, None).path(POD) == "/run/netns/from-cni"  # a new agent process
    loc.prune(set())
    assert NetnsLocator(f, None).path(POD) is None


def test_template_fields(tmp_path: Path) -> None:
    loc = NetnsLocator(tmp_path / "n.json", "/run/netns/{namespace}-{name}-{uid}")
    assert loc.path(POD) == f"/run/netns/app-web-1-{POD.uid}"


def test_corrupt_file_is_not_fatal(tmp_path: Path) -> None:
    f = tmp_path / "n.json"
    f.write_text("{not json")
    assert NetnsLocator(f, None).path(POD) is None


def test_same_file_compares_inodes(tmp_path: Path) -> None:
    p = tmp_path / "ns"
    p.write_text("x")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert _same_file(str(p), fd)
        p.unlink()
        p.write_text("y")  # same path, another file
        assert not _same_file(str(p), fd)
        assert not _same_file(str(tmp_path / "missing"), fd)
    finally:
        os.close(fd)
