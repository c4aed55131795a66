"""Container log files: which one `logs` reads, `--previous`, and `-f` across restarts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ketch.cluster import podlogs


def _files(d: Path, *names: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_text(f"{n}\n")


def test_log_files_sorted_numerically(tmp_path: Path) -> None:
    _files(tmp_path, "0.log", "10.log", "2.log", "x.log", "3.txt", "4.log.tmp")
    assert [n for n, _ in podlogs.log_files(tmp_path)] == [0, 2, 10]
    assert podlogs.log_files(tmp_path / "missing") == []


def test_pick_current_and_previous(tmp_path: Path) -> None:
    _files(tmp_path, "0.log", "1.log")
    files = podlogs.log_files(tmp_path)
    assert podlogs.pick(files, previous=False) == tmp_path / "1.log"
    assert podlogs.pick(files, previous=True) == tmp_path / "0.log"
    assert podlogs.pick(files[:1], previous=True) is None
    assert podlogs.pick([], previous=False) is None


def test_follow_moves_on_after_a_restart(tmp_path: Path) -> None:
    _files(tmp_path)
    (tmp_path / "0.log").write_text("run0 line1\n")
    got: list[bytes] = []
    done = threading.Event()

    def writer() -> None:
        time.sleep(0.1)
        with open(tmp_path / "0.log", "a") as f:
            f.write("run0 line2\n")
        time.sleep(0.1)
        (tmp_path / "1.log").write_text("run1 line1\n")
        time.sleep(0.2)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    podlogs.follow(tmp_path, tmp_path / "0.log", got.append, lambda: not done.is_set(), poll=0.02)
    t.join()
    assert b"".join(got) == b"run0 line1\nrun0 line2\nrun1 line1\n"
