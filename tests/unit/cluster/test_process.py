"""Container argv/env (pure) and the process helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.cluster.process import (
    DEFAULT_PATH,
    container_argv,
    container_env,
    exit_code,
    expand,
    pod_argv,
    same_process,
    start_problem,
    start_ticks,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x-$(A)-$(B)", "x-1-two"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$A", "$A"),
        ("$(", "$("),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == expected


def test_env_has_a_base_and_spec_env_in_order() -> None:
    env = container_env("web-1", [("A", "1"), ("B", "$(A)-x"), ("PATH", "/opt/bin"), ("E", None)])
    assert env == {
        "PATH": "/opt/bin",
        "HOME": "/root",
        "HOSTNAME": "web-1",
        "A": "1",
        "B": "1-x",
        "E": "",
    }
    assert container_env("p", [])["PATH"] == DEFAULT_PATH


def test_argv_is_command_then_args_expanded() -> None:
    assert container_argv(["sh", "-c"], ["echo $(MSG)"], {"MSG": "hi"}) == [
        "sh",
        "-c",
        "echo hi",
    ]


@pytest.mark.parametrize(
    ("argv", "cwd", "problem"),
    [
        (["sh"], None, None),
        ([sys.executable], None, None),
        (
            ["no-such-program-ketch"],
            None,
            'exec: "no-such-program-ketch": executable file not found',
        ),
        (["/no/such/file"], None, "no such executable file"),
        (["sh"], "/no/such/dir", "workingDir '/no/such/dir' does not exist"),
        ([], None, "no command"),
    ],
)
def test_start_problem(argv: list[str], cwd: str | None, problem: str | None) -> None:
    found = start_problem(argv, {"PATH": DEFAULT_PATH}, cwd)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        code, why = found
        assert problem in why
        assert code == (127 if "executable" in problem else 128)


def test_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    found = start_problem([str(script)], {}, None)
    assert found is not None
    assert found[0] == 127
    assert "no such executable file" in found[1]


@pytest.mark.parametrize(
    ("returncode", "expected"), [(0, (0, None)), (3, (3, None)), (-9, (137, 9)), (-15, (143, 15))]
)
def test_exit_code(returncode: int, expected: tuple[int, int | None]) -> None:
    assert exit_code(returncode) == expected


def test_start_ticks_tell_processes_apart() -> None:
    mine = start_ticks(os.getpid())
    assert mine is not None
    assert same_process(os.getpid(), mine)
    assert not same_process(os.getpid(), mine + 1)
    assert not same_process(os.getpid(), None)
    child = subprocess.Popen(["sleep", "10"])
    try:
        ticks = start_ticks(child.pid)
        assert ticks is not None
        child.kill()
        # exited but not reaped (a zombie): no longer "the same process"
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert start_ticks(child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert start_ticks(child.pid) is None


def test_pod_argv_enters_the_pods_uts_then_its_netns() -> None:
    assert pod_argv("t-p-1", "/run/ketch/uts/t-p-1", ["hostname"]) == [
        "nsenter",
        "--uts=/run/ketch/uts/t-p-1",
        "ip",
        "netns",
        "exec",
        "t-p-1",
        "hostname",
    ]
    assert pod_argv("t-p-1", None, ["sh", "-c", "x"]) == [
        "ip",
        "netns",
        "exec",
        "t-p-1",
        "sh",
        "-c",
        "x",
    ]
