"""Test prerequisites in one place: root, tools (envoy, openssl, iptables), IPv6 loopback.

A test that cannot run because the machine lacks something is *skipped* locally, with the
reason, but is a *failure* in CI: a CI run that silently skips the Envoy interop or the
network-namespace tests proves nothing. "CI" means the environment variable `CI` is set (CI
runs `CI=true bash .ci/run`) or `KETCH_REQUIRE_ALL=1`.

The decision is the pure function `decide(env, available)`; everything else gathers the facts
and acts on it:

- `require_root(what)`, `require_netns(what)`, `require_tool(name, path=...)`, `require(available, need, hint)`:
  call inside a test (or a fixture or hook); skip or fail when the prerequisite is missing.
- `have(available, need, hint)`: for an optional *part* of a test (e.g. the IPv6 half): True
  when available; locally False when missing (the part is left out); in CI a failure.
- `needs_root()`, `needs_tool(name, path=...)`: marks for `pytestmark` or a decorator; the
  root conftest checks them before the test runs (`check_marks`).
"""

from __future__ import annotations

import enum
import functools
import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

STRICT_VARS = ("CI", "KETCH_REQUIRE_ALL")
_FALSE = frozenset({"", "0", "false", "no", "off"})


class Action(enum.Enum):
    RUN = "run"
    SKIP = "skip"
    FAIL = "fail"


def strict_reason(env: Mapping[str, str]) -> str | None:
    """Which variable makes missing prerequisites failures ("CI=true"), or None (local run).

    `CI` counts when set to anything but an explicit false ("", 0, false, no, off);
    `KETCH_REQUIRE_ALL` likewise (the documented value is 1).
    """
    for var in STRICT_VARS:
        value = env.get(var)
        if value is not None and value.strip().lower() not in _FALSE:
            return f"{var}={value}"
    return None


def decide(env: Mapping[str, str], available: bool) -> Action:
    """Run when the prerequisite is there; otherwise fail in CI and skip locally."""
    if available:
        return Action.RUN
    return Action.FAIL if strict_reason(env) is not None else Action.SKIP


def message(env: Mapping[str, str], need: str, hint: str) -> str:
    """The skip or failure text: what is missing, how to get it, and why it is (not) fatal."""
    why = strict_reason(env)
    if why is None:
        return f"{need}: {hint} (skipped; CI or KETCH_REQUIRE_ALL=1 makes this a failure)"
    unset = " and ".join(STRICT_VARS)
    return f"{need}: {hint}, or unset {unset} to skip ({why} is set, so this is a failure)"


def require(available: bool, need: str, hint: str, env: Mapping[str, str] | None = None) -> None:
    """Return if `available`; else skip (local) or fail (CI) the current test."""
    env = os.environ if env is None else env
    action = decide(env, available)
    if action is Action.SKIP:
        pytest.skip(message(env, need, hint))
    if action is Action.FAIL:
        pytest.fail(message(env, need, hint), pytrace=False)


def have(available: bool, need: str, hint: str, env: Mapping[str, str] | None = None) -> bool:
    """For an optional part of a test: True if available; False locally; fails in CI."""
    env = os.environ if env is None else env
    if decide(env, available) is Action.FAIL:
        pytest.fail(message(env, need, hint), pytrace=False)
    return available


# --- facts --------------------------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


def tool_path(name: str, path: str | os.PathLike[str] | None = None) -> str | None:
    """`path` if given and executable, else `name` on PATH; None when not found."""
    if path is not None:
        p = Path(path)
        return str(p) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(name)


@functools.cache
def netns_problem() -> str | None:
    """Why a network namespace cannot be created here (None: it can). Probed once, by
    `unshare --net true` (creates and drops an anonymous one; touches nothing)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed to try"
    try:
        out = subprocess.run(
            [unshare, "--net", "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --net: {exc}"
    if out.returncode != 0:
        return f"unshare --net: {out.stderr.strip() or f'exit status {out.returncode}'}"
    return None


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- the checks tests call ----------------------------------------------------------------


def require_root(what: str = "integration test") -> None:
    require(
        is_root(),
        f"{what} needs root (network namespaces, veth, iptables)",
        "run as root",
    )


def require_netns(what: str = "integration test") -> None:
    problem = netns_problem()
    require(
        problem is None,
        f"{what} needs network namespaces ({problem})",
        "run on a host or VM, or in a privileged container",
    )


def require_tool(name: str, path: str | os.PathLike[str] | None = None) -> str:
    """The tool's path; skips (local) or fails (CI) the test when it is not installed."""
    found = tool_path(name, path)
    where = f" at {path}" if path is not None else " on PATH"
    require(found is not None, f"needs the {name} binary{where}", f"install {name}")
    assert found is not None
    return found


def require_ipv6_loopback() -> None:
    require(ipv6_loopback(), "needs IPv6 loopback (::1)", "enable IPv6 on lo")


# --- marks --------------------------------------------------------------------------------


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.prereq(kind="root")


def needs_tool(name: str, path: str | os.PathLike[str] | None = None) -> pytest.MarkDecorator:
    return pytest.mark.prereq(kind="tool", name=name, path=path)


def check_marks(item: pytest.Item) -> None:
    """Apply every `prereq` mark of `item` (called from the root conftest's setup hook)."""
    for mark in item.iter_markers("prereq"):
        kind = mark.kwargs["kind"]
        if kind == "root":
            require_root()
        elif kind == "tool":
            require_tool(mark.kwargs["name"], mark.kwargs.get("path"))
        else:  # pragma: no cover - a typo in a test file
            raise ValueError(f"unknown prereq kind {kind!r} on {item.nodeid}")
