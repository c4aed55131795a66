"""tests/prereq.py: a missing prerequisite skips locally and fails in CI, never the reverse.

The decision table covers the pure function; the end-to-end cases run pytest on a tiny suite
(with root faked away) to prove the root conftest's hook applies it to `integration` tests
and `needs_tool` marks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import prereq
from tests.prereq import Action

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("env", "available", "action"),
    [
        ({}, True, Action.RUN),
        ({}, False, Action.SKIP),
        ({"CI": "true"}, True, Action.RUN),
        ({"CI": "true"}, False, Action.FAIL),
        ({"CI": "1"}, False, Action.FAIL),
        ({"CI": "yes-any-value"}, False, Action.FAIL),
        ({"CI": "false"}, False, Action.SKIP),
        ({"CI": "0"}, False, Action.SKIP),
        ({"CI": ""}, False, Action.SKIP),
        ({"KETCH_REQUIRE_ALL": "1"}, False, Action.FAIL),
        ({"KETCH_REQUIRE_ALL": "1"}, True, Action.RUN),
        ({"KETCH_REQUIRE_ALL": "0"}, False, Action.SKIP),
        ({"CI": "false", "KETCH_REQUIRE_ALL": "1"}, False, Action.FAIL),
        ({"GITHUB_ACTIONS": "true"}, False, Action.SKIP),  # only CI / KETCH_REQUIRE_ALL count
    ],
)
def test_decision_table(env: dict[str, str], available: bool, action: Action) -> None:
    assert prereq.decide(env, available) is action


def test_messages_say_what_is_missing_and_how_to_change_the_outcome() -> None:
    local = prereq.message({}, "integration test needs root", "run as root")
    assert local.startswith("integration test needs root: run as root")
    assert "skipped" in local
    ci = prereq.message({"CI": "true"}, "integration test needs root", "run as root")
    assert ci.startswith("integration test needs root: run as root, or unset CI")
    assert "CI=true is set" in ci


def test_require_and_have_act_on_the_decision() -> None:
    prereq.require(True, "x", "y", env={"CI": "true"})  # available: nothing happens
    assert prereq.have(True, "x", "y", env={"CI": "true"}) is True
    with pytest.raises(pytest.skip.Exception, match="needs x: get x"):
        prereq.require(False, "needs x", "get x", env={})
    with pytest.raises(pytest.fail.Exception, match="needs x: get x, or unset CI"):
        prereq.require(False, "needs x", "get x", env={"CI": "true"})
    assert prereq.have(False, "needs x", "get x", env={}) is False
    with pytest.raises(pytest.fail.Exception, match="KETCH_REQUIRE_ALL=1 is set"):
        prereq.have(False, "needs x", "get x", env={"KETCH_REQUIRE_ALL": "1"})


CASES = [
    ({}, True, Action.RUN),
    ({}, False, Action.SKIP),
    ({"CI": "true"}, True, Action.RUN),
    ({"CI": "true"}, False, Action.FAIL),
    ({"KETCH_REQUIRE_ALL": "1"}, False, Action.FAIL),
]


def _outcome(check: Callable[[], object]) -> Action:
    try:
        check()
    except pytest.skip.Exception:
        return Action.SKIP
    except pytest.fail.Exception:
        return Action.FAIL
    return Action.RUN


@pytest.mark.parametrize(("env", "is_root", "action"), CASES)
def test_require_root(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], is_root: bool, action: Action
) -> None:
    for var in prereq.STRICT_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(prereq, "is_root", lambda: is_root)
    assert _outcome(prereq.require_root) is action


@pytest.mark.parametrize(("env", "tool_found", "action"), CASES)
def test_require_tool(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    env: dict[str, str],
    tool_found: bool,
    action: Action,
) -> None:
    for var in prereq.STRICT_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    tool = tmp_path / "envoy"
    if tool_found:
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    assert _outcome(lambda: prereq.require_tool("envoy", tool)) is action


def test_tool_path(tmp_path: Path) -> None:
    assert prereq.tool_path("sh") is not None
    assert prereq.tool_path("ketch-no-such-tool-here") is None
    tool = tmp_path / "tool"
    assert prereq.tool_path("tool", tool) is None  # absent
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o644)
    assert prereq.tool_path("tool", tool) is None  # not executable
    tool.chmod(0o755)
    assert prereq.tool_path("tool", tool) == str(tool)


SUITE = """
import pytest
from tests.prereq import needs_tool

@pytest.mark.integration
def test_needs_root():
    pass

@needs_tool("ketch-no-such-tool-here")
def test_needs_tool():
    pass

def test_plain():
    pass
"""

CONFTEST = """
from tests import prereq
from tests.conftest import pytest_runtest_setup

import os
if os.environ["FAKE"] == "noroot":
    prereq.is_root = lambda: False  # as an unprivileged user
else:
    prereq.is_root = lambda: True  # root in a container that may not create namespaces
    prereq.netns_problem = lambda: "unshare failed: Operation not permitted"

def pytest_configure(config):
    config.addinivalue_line("markers", "integration: x")
    config.addinivalue_line("markers", "prereq: x")
"""


def _run_suite(
    tmp_path: Path, fake: str = "noroot", **extra_env: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    env = {k: v for k, v in os.environ.items() if k not in prereq.STRICT_VARS}
    env.update(extra_env, PYTHONPATH=str(REPO), FAKE=fake)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_locally_missing_prerequisites_skip_with_the_reason(tmp_path: Path) -> None:
    out = _run_suite(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 2 skipped" in out.stdout
    assert "integration test needs root (network namespaces, veth, iptables)" in out.stdout
    assert "needs the ketch-no-such-tool-here binary on PATH" in out.stdout


@pytest.mark.parametrize("var", [{"CI": "true"}, {"KETCH_REQUIRE_ALL": "1"}])
def test_in_ci_missing_prerequisites_fail(tmp_path: Path, var: dict[str, str]) -> None:
    out = _run_suite(tmp_path, **var)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 passed, 2 errors" in out.stdout
    assert "skipped" not in out.stdout
    assert (
        "integration test needs root (network namespaces, veth, iptables): run as root, or unset CI and KETCH_REQUIRE_ALL to skip"
        in out.stdout
    )
    assert "needs the ketch-no-such-tool-here binary on PATH: install" in out.stdout


@pytest.mark.parametrize(("env", "outcome"), [({}, "2 skipped"), ({"CI": "true"}, "2 errors")])
def test_root_without_network_namespaces_is_a_missing_prerequisite(
    tmp_path: Path, env: dict[str, str], outcome: str
) -> None:
    out = _run_suite(tmp_path, fake="nonetns", **env)
    assert f"1 passed, {outcome}" in out.stdout, out.stdout + out.stderr
    assert (
        "integration test needs network namespaces (unshare failed: Operation not permitted)"
        in out.stdout
    )
