"""Container processes: argv and environment (pure), start, signal, and leftovers (I/O).

Each container runs as `ip netns exec <pod netns> <command> <args>`: that gives the process
the pod's network namespace and a private mount namespace with `/etc/netns/<pod netns>/*`
bind-mounted over /etc (the pod's resolv.conf and hosts), then execs the command, so the
PID we get is the container's own process. It starts in its own session and process group
(`setsid`), so a container that forks is signalled as a whole with `killpg`.

A restarted kubelet must stop what its previous run left: it records each container's PID
with the process start time from /proc/<pid>/stat (field 22, clock ticks since boot) and
only signals a PID whose start time still matches, never a recycled PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values: a defined variable is
    replaced, an undefined reference is left as written, `$$` is a literal `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, text)


def container_env(hostname: str, env: Sequence[tuple[str, str | None]]) -> dict[str, str]:
    """The container's environment: a plain base (PATH, HOME, HOSTNAME = the pod's
    hostname, as in a Kubernetes container) plus the spec's `env`, in order, each value
    expanded against the variables before it."""
    out: dict[str, str] = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": hostname}
    for name, value in env:
        out[name] = expand(value or "", out)
    return out


def pod_argv(netns: str, uts: str | os.PathLike[str] | None, argv: Sequence[str]) -> list[str]:
    """`argv` run inside the pod: its UTS namespace (hostname) when `uts` is given
    (`nsenter --uts=<file>`, which then execs), its netns and a private mount namespace with
    its /etc files (`ip netns exec`, which execs too: the PID is the command's own)."""
    inner = ["ip", "netns", "exec", netns, *argv]
    return ["nsenter", f"--uts={os.fspath(uts)}", *inner] if uts is not None else inner


def container_argv(
    command: Sequence[str], args: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    return [expand(a, env) for a in (*command, *args)]


#: exit codes of a container that could not start: as a shell reports them
NOT_FOUND = 127  # no such program
CANNOT_RUN = 128  # anything else (working directory, log file, exec failure)


def start_problem(
    argv: Sequence[str], env: Mapping[str, str], cwd: str | None
) -> tuple[int, str] | None:
    """(exit code, why) if `argv` cannot start (missing program or working directory), else
    None. Checked before `ip netns exec`, which would only print `exec of "x" failed` and
    exit 1."""
    if not argv:
        return CANNOT_RUN, "the container has no command"
    if cwd is not None and not os.path.isdir(cwd):
        return (
            CANNOT_RUN,
            f"workingDir {cwd!r} does not exist on this machine (Ketch runs host programs)",
        )
    program = argv[0]
    if "/" in program:
        path = program if os.path.isabs(program) or cwd is None else os.path.join(cwd, program)
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            return NOT_FOUND, f'exec: "{program}": no such executable file (check the path)'
        return None
    search = env.get("PATH", DEFAULT_PATH)
    if shutil.which(program, path=search) is None:
        return (
            NOT_FOUND,
            f'exec: "{program}": executable file not found in $PATH ({search}); '
            "Ketch runs programs installed on this machine",
        )
    return None


def start_ticks(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot), or None if it does not exist or
    has already exited (a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        if fields[0] in (b"Z", b"X"):  # exited, not yet reaped by its (new) parent
            return None
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def same_process(pid: int, ticks: int | None) -> bool:
    return ticks is not None and start_ticks(pid) == ticks


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to the process group; False if no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def exit_code(returncode: int) -> tuple[int, int | None]:
    """(exitCode, signal) of a finished process: killed by signal N reads as 128+N, as a
    shell and the container runtimes report it."""
    if returncode < 0:
        return 128 - returncode, -returncode
    return returncode, None


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
