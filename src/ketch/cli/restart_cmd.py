"""`ketch restart ROLE`: restart one process of the local cluster (docs/cluster.md).

A node proxy (`ztunnel-<node>`) is upgraded in place without refusing a connection: the new
process starts beside the old one (it binds every pod's ports with SO_REUSEPORT and gets the
node agent's snapshot over ZDS; new pods go to it), `ketch restart` waits until it is ready
(it writes its PID to its ready file: 15021 still belongs to the old process, which holds
the node ports until it drains), then SIGTERMs the old one and waits for it to drain. The
new process takes the node ports (15020/15021/15000) over as soon as the old one lets them
go. Any other role is stopped, then started again.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ketch.cli import cluster_cmd
from ketch.cli.common import err, fail, out
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import DEFAULT_NAME, ClusterLayout
from ketch.store import Store

DRAIN_GRACE = 45.0  # the node proxy drains for up to 30 s (--drain-timeout), then exits
PORTS_TIMEOUT = 10.0


def _spec(layout: ClusterLayout, role: str) -> sv.ProcessSpec:
    node = sv.role_node(role)
    mesh = sv.read_pid_file(layout, sv.agent_role(node)) is not None if node else True
    if role.startswith((sv.AGENT_PREFIX, sv.ZTUNNEL_PREFIX)):
        mesh = True
    for spec in sv.process_specs(layout, [node] if node else [], mesh=mesh):
        if spec.role == role:
            return spec
    fail(f"unknown role {role!r}: the roles are the ones `ketch status` lists")


def restart(
    role: Annotated[str, typer.Argument(help="The role `ketch status` shows, e.g. ztunnel-node1.")],
    name: cluster_cmd.NameOpt = DEFAULT_NAME,
    state_dir: cluster_cmd.StateDirOpt = None,
) -> None:
    """Restart one process of the cluster. A node proxy (ztunnel-NODE) is replaced without
    refusing a connection: the new one starts beside the old, which drains once the new one
    is ready. Other roles are stopped, then started."""
    cluster_cmd._need_root("ketch restart")
    layout = cluster_cmd._layout(state_dir, name)
    old = sv.read_pid_file(layout, role)
    if old is None:
        fail(
            f"{role} has no PID file in {layout.pid_file(role).parent}: is the cluster up, "
            "and is the role one `ketch status` lists? (`ketch up` starts what is missing)"
        )
    spec = _spec(layout, role)
    with cluster_cmd._store(layout) as store:
        if sv.check(old) is not sv.ProcState.RUNNING:
            err.print(f"  [yellow]![/] {role} (pid {old.pid}) is not running; starting it")
            layout.pid_file(role).unlink(missing_ok=True)
            _start(layout, store, spec)
        elif role.startswith(sv.ZTUNNEL_PREFIX):
            _hand_over(layout, spec, old)
        else:
            for r in sv.stop_all(layout, [old], grace=cluster_cmd.STOP_GRACE):
                err.print(f"  [green]✓[/] {r.role} (pid {r.pid}): {r.outcome}")
            _start(layout, store, spec)
    new = sv.read_pid_file(layout, role)
    out.print(f"{role} restarted (pid {new.pid if new else '?'})")


def _start(layout: ClusterLayout, store: Store, spec: sv.ProcessSpec) -> sv.PidRecord:
    try:
        rec = sv.start(layout, spec)
        cluster_cmd._wait_role(layout, store, rec)
    except sv.SupervisorError as e:
        fail(f"{e}\n(ketch status shows what runs; ketch up starts what is missing)")
    err.print(f"  [green]✓[/] {spec.role} started (pid {rec.pid})")
    return rec


def _hand_over(layout: ClusterLayout, spec: sv.ProcessSpec, old: sv.PidRecord) -> None:
    node = spec.role.removeprefix(sv.ZTUNNEL_PREFIX)
    try:
        new = sv.start(layout, spec)  # the PID file names the new process from now on
    except sv.SupervisorError as e:
        fail(f"{e}\n(the old node proxy, pid {old.pid}, still runs)")
    err.print(f"  [green]✓[/] new {spec.role} started beside pid {old.pid} (pid {new.pid})")
    try:
        sv.wait_ready(
            layout,
            new,
            lambda: sv.is_marked_ready(layout, new),
            cluster_cmd.PROCESS_TIMEOUT,
            f"waiting for it to write {sv.ready_file(layout, spec.role)}",
        )
    except sv.SupervisorError as e:
        sv.stop_all(layout, [new], grace=cluster_cmd.STOP_GRACE)
        sv.write_pid_file(layout, old)  # the old process keeps serving: point the PID file back
        fail(f"{e}\nthe old node proxy (pid {old.pid}) keeps serving; nothing changed")
    err.print(f"  [green]✓[/] pid {new.pid} is ready; draining pid {old.pid}")
    for r in sv.stop_all(layout, [old], grace=DRAIN_GRACE):
        err.print(f"  [green]✓[/] old {r.role} (pid {r.pid}): {r.outcome}")
    deadline = time.monotonic() + PORTS_TIMEOUT
    while not cluster_cmd._proxy_ready(layout, node):
        if time.monotonic() > deadline:
            err.print(
                f"  [yellow]![/] pid {new.pid} has not taken over 15021 yet; see "
                f"{layout.process_log(spec.role)}"
            )
            return
        time.sleep(0.2)
    err.print(f"  [green]✓[/] pid {new.pid} serves the node ports (15021 ready)")
