"""Starting, checking and stopping the cluster's processes by PID file.

`ketch up` starts each role detached (its own session, stdin from /dev/null, stdout and
stderr appended to `layout.process_log(role)`) and writes `layout.pid_file(role)`: a JSON
record of the PID, the process's start time in clock ticks since boot (field 22 of
/proc/<pid>/stat) and its argv. A PID alone is not an identity: after a crash or a reboot the
number can belong to another process. Before `ketch down` or `ketch status` trusts a PID, it
checks that the process with that PID started at the recorded tick (`check`); a mismatch is a
stale PID file, reported and removed, and that process is never signalled.

Roles (see docs/cluster.md):
    control-plane   `ketch control-plane run --state-dir D --xds`, root netns
    controllers     `ketch cluster controllers`, root netns
    agent-<name>    `ketch agent run --node <name>` (the mesh's node agent), in the node netns
    ztunnel-<name>  `ketch ztunnel run --control-plane ... --zds-socket ...` (the node proxy),
                    in the node netns
    node-<name>     `ketch cluster node --node <name>`, inside `layout.node_netns(name)`
The two mesh roles are left out with `ketch up --no-mesh`.

The processes run `python -m ketch.cli ...` with the interpreter running `ketch up`, so a
cluster started from a checkout runs that checkout's code.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ketch.cluster.layout import ClusterLayout
from ketch.netns.enter import nsenter_argv

CONTROL_PLANE = "control-plane"
CONTROLLERS = "controllers"
NODE_PREFIX = "node-"
AGENT_PREFIX = "agent-"
ZTUNNEL_PREFIX = "ztunnel-"
JOIN_TOKEN_ENV = "KETCH_JOIN_TOKEN"


class SupervisorError(Exception):
    """A process could not be started or stopped; the message says what to do."""


def node_role(node: str) -> str:
    return f"{NODE_PREFIX}{node}"


def agent_role(node: str) -> str:
    return f"{AGENT_PREFIX}{node}"


def ztunnel_role(node: str) -> str:
    return f"{ZTUNNEL_PREFIX}{node}"


def role_node(role: str) -> str | None:
    """The node a per-node role belongs to (None for cluster-wide roles)."""
    for prefix in (NODE_PREFIX, AGENT_PREFIX, ZTUNNEL_PREFIX):
        if role.startswith(prefix):
            return role.removeprefix(prefix)
    return None


@dataclass(frozen=True)
class ProcessSpec:
    role: str
    argv: tuple[str, ...]
    netns: str | None = None  # None: the root netns
    env: tuple[tuple[str, str], ...] = ()  # added to the supervisor's environment


def process_specs(
    layout: ClusterLayout,
    nodes: Sequence[str],
    python: str = sys.executable,
    *,
    mesh: bool = True,
) -> list[ProcessSpec]:
    """What `ketch up` runs, in start order: control plane, controllers, then per node the
    node agent and node proxy (with `mesh`) and the node process. The node agent comes
    before the node process so the kubelet's first CNI event finds it."""
    state = str(layout.state_dir)
    cli = (python, "-m", "ketch.cli")
    cluster = ("--state-dir", state, "--name", layout.name)
    store = ("--store", str(layout.store_path))
    specs = [
        ProcessSpec(CONTROL_PLANE, (*cli, "control-plane", "run", "--state-dir", state, "--xds")),
        ProcessSpec(CONTROLLERS, (*cli, "cluster", "controllers", *cluster)),
    ]
    for n in nodes:
        netns = layout.node_netns(n)
        node_argv: tuple[str, ...] = (*cli, "cluster", "node", *cluster, "--node", n)
        if mesh:
            specs.append(
                ProcessSpec(
                    agent_role(n),
                    (
                        *cli,
                        "agent",
                        "run",
                        "--node",
                        n,
                        "--state-dir",
                        state,
                        *store,
                        "--zds-socket",
                        str(layout.zds_socket(n)),
                        "--cni-socket",
                        str(layout.cni_socket(n)),
                        "--netns-template",
                        layout.netns_template(),
                    ),
                    netns,
                )
            )
            specs.append(
                ProcessSpec(
                    ztunnel_role(n),
                    (
                        *cli,
                        "ztunnel",
                        "run",
                        "--node",
                        n,
                        "--control-plane",
                        str(layout.state_dir / "ca.sock"),
                        "--node-dir",
                        str(layout.proxy_identity_dir(n)),
                        "--zds-socket",
                        str(layout.zds_socket(n)),
                        "--ready-file",
                        str(ready_file(layout, ztunnel_role(n))),
                    ),
                    netns,
                )
            )
            node_argv += ("--cni-socket", str(layout.cni_socket(n)))
        specs.append(ProcessSpec(node_role(n), node_argv, netns))
    return specs


# --- PID records ------------------------------------------------------------------------


@dataclass(frozen=True)
class PidRecord:
    role: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22
    started_at: float  # wall clock (time.time()) when started
    argv: tuple[str, ...]
    netns: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PidRecord:
        """Parse a PID file; ValueError with the reason when it is not one of ours."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        try:
            rec = cls(
                role=str(raw["role"]),
                pid=int(raw["pid"]),
                start_ticks=int(raw["start_ticks"]),
                started_at=float(raw["started_at"]),
                argv=tuple(str(a) for a in raw["argv"]),
                netns=None if raw.get("netns") is None else str(raw["netns"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"missing or bad field {exc}") from None
        if rec.pid <= 1:
            raise ValueError(f"pid {rec.pid} is not a process we could have started")
        return rec


def start_ticks_of(stat: str) -> tuple[str, int]:
    """(state letter, start time in ticks) from the text of /proc/<pid>/stat. The command
    name (field 2) is in parentheses and may itself contain spaces and parentheses."""
    rest = stat.rpartition(")")[2].split()
    # rest[0] is field 3 (state); field 22 (starttime) is rest[19]
    return rest[0], int(rest[19])


class ProcState(enum.Enum):
    RUNNING = "running"
    EXITED = "exited"  # gone (or a zombie nobody reaped yet)
    REPLACED = "replaced"  # the PID now belongs to another process: the PID file is stale


def read_stat(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read()
    except OSError:
        return None


def check(rec: PidRecord, stat_of: Callable[[int], str | None] = read_stat) -> ProcState:
    """Whether the process of `rec` still runs; never trusts the PID alone."""
    stat = stat_of(rec.pid)
    if stat is None:
        return ProcState.EXITED
    try:
        state, ticks = start_ticks_of(stat)
    except (IndexError, ValueError):
        return ProcState.EXITED
    if ticks != rec.start_ticks:
        return ProcState.REPLACED
    if state in ("Z", "X"):
        return ProcState.EXITED
    return ProcState.RUNNING


@dataclass(frozen=True)
class PidFile:
    """A PID file as found on disk: its record, or why it is unusable."""

    role: str
    path: Path
    record: PidRecord | None
    problem: str | None = None


def read_pid_files(layout: ClusterLayout) -> list[PidFile]:
    run = layout.pid_file("x").parent
    found = []
    for path in sorted(run.glob("*.pid")) if run.is_dir() else []:
        role = path.name.removesuffix(".pid")
        try:
            found.append(PidFile(role, path, PidRecord.from_json(path.read_text())))
        except (OSError, ValueError) as exc:
            found.append(PidFile(role, path, None, f"unreadable PID file {path}: {exc}"))
    return found


def read_pid_file(layout: ClusterLayout, role: str) -> PidRecord | None:
    try:
        return PidRecord.from_json(layout.pid_file(role).read_text())
    except (OSError, ValueError):
        return None


def write_pid_file(layout: ClusterLayout, rec: PidRecord) -> None:
    _write_atomic(layout.pid_file(rec.role), rec.to_json())


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- start ------------------------------------------------------------------------------


def start(layout: ClusterLayout, spec: ProcessSpec) -> PidRecord:
    """Start `spec` detached and write its PID file. The process outlives the caller."""
    log_path = layout.process_log(spec.role)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv: list[str] = list(spec.argv)
    if spec.netns is not None:
        argv, _ = nsenter_argv(spec.netns, argv)  # nsenter execs: the PID stays the same
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(log_path, "a") as log:
        log.write(f"--- {stamp} ketch up starts {spec.role}: {' '.join(argv)}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(spec.env)
    try:
        # posix_spawn rather than Popen: nothing in this process waits for the child, and
        # a Popen dropped while its child runs is a ResourceWarning.
        pid = os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            # Python ignores SIGPIPE and SIGXFSZ; exec keeps "ignored", so undo it.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM),
        )
    except OSError as exc:
        raise SupervisorError(f"cannot start {spec.role} ({argv[0]}): {exc}") from exc
    stat = read_stat(pid)
    if stat is None:
        raise SupervisorError(f"{spec.role} (pid {pid}) exited at once; see {log_path}")
    rec = PidRecord(spec.role, pid, start_ticks_of(stat)[1], time.time(), tuple(argv), spec.netns)
    _write_atomic(layout.pid_file(spec.role), rec.to_json())
    return rec


def log_tail(layout: ClusterLayout, role: str, lines: int = 15) -> str:
    try:
        text = layout.process_log(role).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(
    layout: ClusterLayout,
    rec: PidRecord,
    ready: Callable[[], bool],
    timeout: float,
    what: str,
) -> None:
    """Poll `ready()` until true; SupervisorError (with the log's tail) if the process
    exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if check(rec) is not ProcState.RUNNING:
            _reap(rec.pid)
            raise SupervisorError(
                f"{rec.role} exited before it was ready ({what}); last lines of "
                f"{layout.process_log(rec.role)}:\n{log_tail(layout, rec.role)}"
            )
        try:
            if ready():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SupervisorError(
                f"{rec.role} (pid {rec.pid}) is not ready after {timeout:.0f}s ({what}); "
                f"see {layout.process_log(rec.role)}:\n{log_tail(layout, rec.role)}"
            )
        time.sleep(0.2)


def _reap(pid: int) -> None:
    """Collect our own child if it exited (a zombie otherwise, until we exit)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# --- stop -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopResult:
    role: str
    pid: int
    outcome: str  # "stopped", "killed", "not running", "stale pid file"


def stop_all(
    layout: ClusterLayout, records: Sequence[PidRecord], grace: float = 30.0
) -> list[StopResult]:
    """SIGTERM every process of `records` that is still the one we started, wait up to
    `grace` seconds for all of them, SIGKILL the rest; remove their PID files."""
    results: list[StopResult] = []
    waiting: list[PidRecord] = []
    for rec in records:
        state = check(rec)
        if state is ProcState.RUNNING:
            try:
                os.kill(rec.pid, signal.SIGTERM)
                waiting.append(rec)
                continue
            except ProcessLookupError:
                state = ProcState.EXITED
        results.append(
            StopResult(
                rec.role,
                rec.pid,
                "stale pid file" if state is ProcState.REPLACED else "not running",
            )
        )
    deadline = time.monotonic() + grace
    while waiting and time.monotonic() < deadline:
        for rec in list(waiting):
            _reap(rec.pid)
            if check(rec) is not ProcState.RUNNING:
                waiting.remove(rec)
                results.append(StopResult(rec.role, rec.pid, "stopped"))
        if waiting:
            time.sleep(0.1)
    for rec in waiting:
        if check(rec) is ProcState.RUNNING:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            results.append(StopResult(rec.role, rec.pid, "killed"))
        else:
            results.append(StopResult(rec.role, rec.pid, "stopped"))
        _reap(rec.pid)
    for rec in records:
        current = read_pid_file(layout, rec.role)
        if current is None or current.pid == rec.pid:
            layout.pid_file(rec.role).unlink(missing_ok=True)
            ready_file(layout, rec.role).unlink(missing_ok=True)
    return results


def uptime(rec: PidRecord, now: float | None = None) -> float:
    return max(0.0, (time.time() if now is None else now) - rec.started_at)


def ready_file(layout: ClusterLayout, role: str) -> Path:
    return layout.pid_file(role).with_suffix(".ready")


def mark_ready(layout: ClusterLayout, role: str) -> None:
    """Called by a supervised process once it serves: `ketch up` waits for this file to
    name the PID it started."""
    _write_atomic(ready_file(layout, role), f"{os.getpid()}\n")


def is_marked_ready(layout: ClusterLayout, rec: PidRecord) -> bool:
    try:
        return int(ready_file(layout, rec.role).read_text().strip()) == rec.pid
    except (OSError, ValueError):
        return False
