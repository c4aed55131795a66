"""The local cluster's lifecycle: `ketch up`, `down`, `status`, `exec`, `logs`, and the
processes `ketch up` supervises (`ketch cluster controllers`, `ketch cluster node`).

See docs/cluster.md. Every command finds the cluster by `--state-dir` and `--name`
(`ketch.cluster.layout.ClusterLayout`); the store is `<state-dir>/ketch.db`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import http.client
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ketch.cli.common import err, fail, out, state
from ketch.cli.output import format_table
from ketch.cluster import fabric as cluster_fabric
from ketch.cluster import nodes as cluster_nodes
from ketch.cluster import supervisor as sv
from ketch.cluster.layout import DEFAULT_NAME, ClusterLayout, default_state_dir
from ketch.store import Manifest, NotFoundError, Store, StoreError

cluster_app = typer.Typer(
    help="Processes of the local cluster (started by `ketch up`).",
    no_args_is_help=True,
    hidden=True,
)

StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the cluster keeps its store, logs and PID files. "
        "Default: $KETCH_HOME, else /var/lib/ketch as root.",
        show_default=False,
    ),
]
NameOpt = Annotated[
    str,
    typer.Option("--name", help="Cluster name: prefixes its network namespaces."),
]
NsOpt = Annotated[str, typer.Option("--namespace", "-n", help="The pod's namespace.")]

CP_TIMEOUT = 90.0
PROCESS_TIMEOUT = 60.0
NODE_STOP_GRACE = 40.0  # the kubelet stops pods gracefully (terminationGracePeriodSeconds)
STOP_GRACE = 10.0


def register(app: typer.Typer) -> None:
    """Add the cluster commands to the `ketch` app."""
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("exec")(exec_)
    app.command("logs")(logs)
    app.add_typer(cluster_app, name="cluster")


# ---------------------------------------------------------------------------- helpers


def _layout(state_dir: Path | None, name: str) -> ClusterLayout:
    try:
        return ClusterLayout((state_dir or default_state_dir()).absolute(), name)
    except ValueError as e:
        fail(f"--name: {e}")


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root: it creates network namespaces (run it with sudo)")


def _need_tools(tools: dict[str, str]) -> None:
    missing = [f"`{t}` ({why})" for t, why in tools.items() if shutil.which(t) is None]
    if missing:
        fail(
            "missing tools: "
            + ", ".join(missing)
            + "; on Debian/Ubuntu: apt-get install iproute2 nftables util-linux"
        )


@contextlib.contextmanager
def _store(layout: ClusterLayout, *, create: bool = False) -> Iterator[Store]:
    from ketch.store.sqlite import SqliteStore

    if not layout.store_path.exists() and not create:
        fail(f"no store at {layout.store_path}: is the cluster up? (ketch up --state-dir ...)")
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    s = SqliteStore(layout.store_path)
    try:
        yield s
    finally:
        s.close()


def _duration(secs: float) -> str:
    secs = int(secs)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "m" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _unix_connects(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _heartbeat_since(store: Store, node: str, since: float) -> bool:
    try:
        m = store.get("Node", "", node)
    except NotFoundError:
        return False
    cond = cluster_nodes.ready_condition(m) or {}
    beat = cluster_nodes.parse_time(cond.get("lastHeartbeatTime"))
    return cond.get("status") == "True" and beat is not None and beat.timestamp() >= int(since) - 1


def _proxy_ready(layout: ClusterLayout, node: str) -> bool:
    """The node proxy's readiness (15021, inside the node netns): synced and captured."""
    from ketch.netns.enter import in_netns

    def probe() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", 15021, timeout=1.0)
        try:
            conn.request("GET", "/healthz/ready")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return in_netns(layout.node_netns(node), probe)


def _in_netns(rec: sv.PidRecord) -> bool:
    """Whether the process still runs in its node netns (not in one a repair replaced)."""
    if rec.netns is None:
        return True
    try:
        a = os.stat(f"/proc/{rec.pid}/ns/net")
        b = os.stat(f"/run/netns/{rec.netns}")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ---------------------------------------------------------------------------- up


def up(
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes", min=1, max=254, help="Nodes node1..nodeN (existing Nodes are kept)."
        ),
    ] = 2,
    name: NameOpt = DEFAULT_NAME,
    state_dir: StateDirOpt = None,
    mesh: Annotated[
        bool,
        typer.Option(
            "--mesh/--no-mesh",
            help="Run the ambient mesh on every node (node agent and node proxy). "
            "--no-mesh: a plain cluster.",
        ),
    ] = True,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample/--no-sample",
            help="Apply the sample app (examples/sample: namespace shop, labelled ambient).",
        ),
    ] = True,
) -> None:
    """Start the local cluster in the background: network namespaces for the nodes, the
    control plane, the controllers, and per node the node agent, the node proxy and the
    node process (kubelet, Service VIPs, DNS); then the sample app. Running it again
    repairs what is missing and restarts processes that died."""
    _need_root("ketch up")
    _need_tools(
        {
            "ip": "iproute2: namespaces, links, routes",
            "nft": "nftables: Service VIPs",
            "nsenter": "util-linux: processes in node namespaces",
            "unshare": "util-linux: each pod's hostname (UTS namespace)",
        }
    )
    layout = _layout(state_dir, name)
    layout.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    err.print(f"[bold]cluster {layout.name}[/] (state {layout.state_dir})")
    previous = {pf.role: pf for pf in sv.read_pid_files(layout)}
    running: dict[str, sv.PidRecord] = {}
    for role, pf in previous.items():
        if pf.record is None:
            err.print(f"  [yellow]![/] {pf.problem}: removed")
            pf.path.unlink(missing_ok=True)
            continue
        st = sv.check(pf.record)
        if st is sv.ProcState.RUNNING:
            running[role] = pf.record
        else:
            why = (
                "its PID now belongs to another process (stale PID file)"
                if st is sv.ProcState.REPLACED
                else "it is not running"
            )
            err.print(f"  [yellow]![/] {role} (pid {pf.record.pid}): {why}; starting it again")
            pf.path.unlink(missing_ok=True)

    with _store(layout, create=True) as store, err.status("starting") as progress:
        progress.update("writing Node objects")
        try:
            cnodes = cluster_nodes.ensure_nodes(store, layout, nodes)
        except cluster_nodes.NodeError as e:
            fail(str(e))
        from ketch.control.admission import ensure_builtin_namespaces

        ensure_builtin_namespaces(store)
        names = [n.name for n in cnodes]
        extra = [n for n in names if n not in cluster_nodes.wanted_names(nodes)]
        if extra:
            err.print(f"  also starting {', '.join(extra)} (Node objects in the store)")
        err.print(f"  [green]✓[/] nodes {', '.join(f'{n.name} (#{n.index})' for n in cnodes)}")

        progress.update("building the network namespaces")
        try:
            report = cluster_fabric.ensure(
                layout, [cluster_fabric.FabricNode(n.name, n.index) for n in cnodes]
            )
        except cluster_fabric.ClusterFabricError as e:
            fail(f"{e}\n(ketch down removes a half-built fabric)")
        if report.changed and (running or previous):
            what = ", ".join(report.created_netns + report.created_links)
            err.print(f"  [yellow]![/] fabric: created {what} (missing)")
        err.print(f"  [green]✓[/] fabric: {len(cluster_fabric.existing_netns(layout))} namespaces")

        specs = sv.process_specs(layout, names, mesh=mesh)
        pending: list[sv.PidRecord] = []  # node processes start together, then are awaited
        for spec in specs:
            if spec.role.startswith(sv.ZTUNNEL_PREFIX) and spec.role not in running:
                spec = _with_join_token(layout, spec)
            rec = running.get(spec.role)
            if rec is not None and not _in_netns(rec):
                err.print(f"  [yellow]![/] {spec.role}: its netns was re-created; restarting it")
                sv.stop_all(layout, [rec], grace=STOP_GRACE)
                rec = None
            if rec is not None:
                err.print(f"  [green]✓[/] {spec.role} already running (pid {rec.pid})")
                continue
            progress.update(f"starting {spec.role}")
            try:
                rec = sv.start(layout, spec)
                if spec.netns is None:
                    _wait_role(layout, store, rec)
                    err.print(f"  [green]✓[/] {spec.role} started (pid {rec.pid})")
                else:
                    pending.append(rec)
            except sv.SupervisorError as e:
                fail(f"{e}\n(ketch status shows what runs; ketch down stops it all)")
        for rec in pending:
            progress.update(f"waiting for {rec.role}")
            try:
                _wait_role(layout, store, rec)
            except sv.SupervisorError as e:
                fail(f"{e}\n(ketch status shows what runs; ketch down stops it all)")
            err.print(f"  [green]✓[/] {rec.role} started (pid {rec.pid})")

        if sample:
            progress.update("applying the sample app")
            _apply_sample(store, layout)

    store_hint = ""
    if state.store_path.absolute() != layout.store_path:
        store_hint = f"--store {layout.store_path} "
    cluster_opts = _cluster_opts(layout)
    what = "with the ambient mesh" if mesh else "without the mesh (--no-mesh)"
    out.print(f"\ncluster [bold]{layout.name}[/] is up: {len(cnodes)} nodes, {what}. Try:")
    state_opt = (
        f" --state-dir {layout.state_dir}"
        if layout.state_dir != default_state_dir().absolute()
        else ""
    )
    hints: list[tuple[str, str]] = []
    if sample:
        hints += [
            (f"ketch {store_hint}get pods -n shop -o wide", "the sample app, on both nodes"),
            (
                f"ketch logs{cluster_opts} -n shop deploy/loadgen -f",
                "the load generator's counters",
            ),
            (
                f"ketch exec{cluster_opts} -n shop deploy/loadgen -- curl -s http://frontend:8080/",
                "",
            ),
        ]
    else:
        hints += [
            (f"ketch {store_hint}apply -f examples/cluster-demo.yaml", "a plain demo app"),
            (f"ketch {store_hint}get pods -A -o wide", ""),
            (
                f"ketch exec{cluster_opts} -n demo deploy/client -- "
                "curl -s http://web.demo.svc.cluster.local/",
                "",
            ),
        ]
    if mesh:
        node = names[0]
        hints += [
            (
                f"ketch ztunnel-config workloads --node {node}{cluster_opts}",
                "pods the node proxy serves (HBONE)",
            ),
            (f"ketch proxy-status{state_opt}", "node proxies and their xDS sync"),
            (
                f"ip netns exec {layout.node_netns(node)} curl -s localhost:15020/metrics",
                f"{node}'s node proxy metrics (Istio's names)",
            ),
        ]
        where = sample_dir()
        if sample and where is not None:
            hints.append(
                (
                    f"ketch {store_hint}apply -f {where / 'policy.yaml'}",
                    "only reviews may call ratings",
                )
            )
    hints += [(f"ketch status{cluster_opts}", ""), (f"ketch down{cluster_opts}", "")]
    width = max(len(cmd) for cmd, _ in hints)
    lines = [f"{cmd.ljust(width)}   # {why}" if why else cmd for cmd, why in hints]
    for line in lines:
        out.print(f"  {line}", markup=False)


def _with_join_token(layout: ClusterLayout, spec: sv.ProcessSpec) -> sv.ProcessSpec:
    """A node proxy without a node certificate yet joins with a fresh one-time token,
    passed in its environment (never on the command line)."""
    from ketch.control import plane
    from ketch.identity.errors import IdentityError

    node = spec.role.removeprefix(sv.ZTUNNEL_PREFIX)
    if (layout.proxy_identity_dir(node) / "node-cert.pem").exists():
        return spec
    try:
        token = plane.token_store(layout.state_dir).create(node, dt.timedelta(minutes=10))
    except IdentityError as e:
        fail(f"cannot create a join token for {node}'s node proxy: {e}")
    return dataclasses.replace(spec, env=(*spec.env, (sv.JOIN_TOKEN_ENV, token)))


def sample_dir() -> Path | None:
    """examples/sample of the checkout this `ketch` runs from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "sample"
        if (candidate / "sample.yaml").is_file():
            return candidate
    return None


def _apply_sample(store: Store, layout: ClusterLayout) -> None:
    from ketch.api.errors import ResourceError
    from ketch.api.loader import apply_namespace_defaults, load_text, to_manifest
    from ketch.control import admission

    where = sample_dir()
    if where is None:
        err.print("  [yellow]![/] sample app not found (examples/sample): skipped")
        return
    text = (where / "sample.yaml").read_text().replace("@SAMPLE_DIR@", str(where))
    try:
        result = load_text(text, str(where / "sample.yaml"))
    except ResourceError as e:
        fail(f"the sample app does not load: {e}")
    manifests = [to_manifest(o) for o in apply_namespace_defaults(result.objects, None)]
    try:
        outcomes = admission.apply(store, manifests, service_cidr=state.service_cidr)
    except (StoreError, admission.AdmissionError) as e:
        fail(f"cannot apply the sample app: {e}")
    changed = sum(1 for o in outcomes if o.action.value != "unchanged")
    err.print(
        f"  [green]✓[/] sample app (namespace shop, {len(outcomes)} objects, {changed} changed)"
        f" from {where}"
    )


def _wait_role(layout: ClusterLayout, store: Store, rec: sv.PidRecord) -> None:
    """Wait until a started role is ready: the control plane's xDS socket accepts, the
    controllers wrote their ready file, a node's heartbeat is in the store."""
    if rec.role == sv.CONTROL_PLANE:
        sock = layout.state_dir / "ca.sock"

        def ready() -> bool:
            return _unix_connects(sock)

        sv.wait_ready(layout, rec, ready, CP_TIMEOUT, f"waiting for {sock}")
    elif rec.role == sv.CONTROLLERS:

        def ready() -> bool:
            return sv.is_marked_ready(layout, rec)

        sv.wait_ready(layout, rec, ready, PROCESS_TIMEOUT, "waiting for it to report ready")
    elif rec.role.startswith(sv.AGENT_PREFIX):
        node = rec.role.removeprefix(sv.AGENT_PREFIX)

        def ready() -> bool:
            return _unix_connects(layout.cni_socket(node))

        sv.wait_ready(layout, rec, ready, PROCESS_TIMEOUT, f"waiting for {layout.cni_socket(node)}")
    elif rec.role.startswith(sv.ZTUNNEL_PREFIX):
        node = rec.role.removeprefix(sv.ZTUNNEL_PREFIX)

        def ready() -> bool:
            return _proxy_ready(layout, node)

        sv.wait_ready(layout, rec, ready, PROCESS_TIMEOUT, "waiting for its /healthz/ready")
    else:
        node = rec.role.removeprefix(sv.NODE_PREFIX)

        def ready() -> bool:
            return _heartbeat_since(store, node, rec.started_at)

        sv.wait_ready(layout, rec, ready, PROCESS_TIMEOUT, f"waiting for Node {node}'s heartbeat")


def _cluster_opts(layout: ClusterLayout) -> str:
    opts = ""
    if layout.state_dir != default_state_dir().absolute():
        opts += f" --state-dir {layout.state_dir}"
    if layout.name != DEFAULT_NAME:
        opts += f" --name {layout.name}"
    return opts


# ---------------------------------------------------------------------------- down


def down(
    name: NameOpt = DEFAULT_NAME,
    state_dir: StateDirOpt = None,
    keep_state: Annotated[
        bool,
        typer.Option(
            "--keep-state/--purge",
            help="Keep the cluster's files (logs, pod directories) or delete them. The "
            "store is kept either way (ketch up brings the same pods back).",
        ),
    ] = True,
    purge_store: Annotated[
        bool, typer.Option("--purge-store", help="With --purge: delete the store too.")
    ] = False,
) -> None:
    """Stop the cluster: its processes (by PID), then every network namespace it made."""
    _need_root("ketch down")
    _need_tools({"ip": "iproute2: removing namespaces"})
    layout = _layout(state_dir, name)
    pidfiles = sv.read_pid_files(layout)
    records = [pf.record for pf in pidfiles if pf.record is not None]
    for pf in pidfiles:
        if pf.record is None:
            err.print(f"  [yellow]![/] {pf.problem}: removed")
            pf.path.unlink(missing_ok=True)
    netns_before = cluster_fabric.existing_netns(layout)
    if not records and not netns_before:
        err.print(f"cluster {layout.name} is not up (no processes, no namespaces)")
    with err.status("stopping") as progress:
        nodes_rec = [r for r in records if r.role.startswith(sv.NODE_PREFIX)]
        others = [r for r in records if not r.role.startswith(sv.NODE_PREFIX)]
        progress.update("stopping node processes (their pods first)")
        results = sv.stop_all(layout, nodes_rec, grace=NODE_STOP_GRACE)
        progress.update("stopping controllers and control plane")
        results += sv.stop_all(layout, others, grace=STOP_GRACE)
        for r in results:
            mark = "[green]✓[/]" if r.outcome in ("stopped", "not running") else "[yellow]![/]"
            err.print(f"  {mark} {r.role} (pid {r.pid}): {r.outcome}")
        if layout.store_path.exists() and (records or netns_before):
            try:
                with _store(layout) as store:
                    marked = cluster_nodes.mark_stopped(
                        store, [n.name for n in cluster_nodes.cluster_nodes(store)]
                    )
                if marked:
                    err.print(f"  [green]✓[/] nodes marked not ready: {', '.join(marked)}")
            except (StoreError, cluster_nodes.NodeError) as e:
                err.print(f"  [yellow]![/] could not mark nodes not ready: {e}")
        progress.update("removing network namespaces")
        report = cluster_fabric.destroy(layout)
    if report.killed:
        err.print(
            f"  [green]✓[/] stopped {len(report.killed)} leftover processes in the namespaces"
        )
    if report.netns:
        err.print(f"  [green]✓[/] removed {len(report.netns)} namespaces: {' '.join(report.netns)}")
    if report.etc_dirs:
        err.print(f"  [green]✓[/] removed {' '.join(report.etc_dirs)}")
    if report.uts:
        err.print(f"  [green]✓[/] removed {len(report.uts)} pod UTS namespaces (hostnames)")
    if not keep_state:
        shutil.rmtree(layout.cluster_dir, ignore_errors=True)
        err.print(f"  [green]✓[/] removed {layout.cluster_dir}")
        if purge_store:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{layout.store_path}{suffix}").unlink(missing_ok=True)
            err.print(f"  [green]✓[/] removed the store {layout.store_path}")
    for problem in report.errors:
        err.print(f"error: {problem}")
    if report.errors:
        raise typer.Exit(1)
    out.print(f"cluster {layout.name} is down" + (" (store kept)" if not purge_store else ""))


# ---------------------------------------------------------------------------- status


def status(name: NameOpt = DEFAULT_NAME, state_dir: StateDirOpt = None) -> None:
    """What runs: processes (PID, alive, uptime) and nodes (Ready, heartbeat, pods).
    Exit code: 0 up and healthy, 1 something died or is missing, 3 not up."""
    layout = _layout(state_dir, name)
    out.print(f"cluster:   {layout.name}")
    out.print(f"state dir: {layout.state_dir}")
    out.print(f"store:     {layout.store_path}", markup=False)
    pidfiles = sv.read_pid_files(layout)
    netns = cluster_fabric.existing_netns(layout)
    if not pidfiles and not netns:
        out.print(f"\ncluster {layout.name} is not up (start it with ketch up)")
        raise typer.Exit(3)
    problems: list[str] = []
    rows: list[list[str]] = []
    for pf in pidfiles:
        if pf.record is None:
            rows.append([pf.role, "-", "bad-pid-file", "-", str(pf.path)])
            problems.append(pf.problem or f"bad PID file {pf.path}")
            continue
        st = sv.check(pf.record)
        if st is sv.ProcState.RUNNING:
            state_txt, up_txt = "running", _duration(sv.uptime(pf.record))
        elif st is sv.ProcState.REPLACED:
            state_txt, up_txt = "stale-pid-file", "-"
            problems.append(f"{pf.role}: PID {pf.record.pid} is another process now")
        else:
            state_txt, up_txt = "exited", "-"
            problems.append(f"{pf.role} (pid {pf.record.pid}) exited")
        rows.append(
            [pf.role, str(pf.record.pid), state_txt, up_txt, str(layout.process_log(pf.role))]
        )
    out.print("\nprocesses", markup=False)
    out.print(
        format_table(["ROLE", "PID", "STATE", "UPTIME", "LOG"], rows).rstrip("\n"),
        markup=False,
        soft_wrap=True,
    )
    if layout.store_path.exists():
        with _store(layout) as store:
            cnodes = cluster_nodes.cluster_nodes(store)
            manifests = {m["metadata"]["name"]: m for m in store.list("Node").items}
            pods = store.list("Pod").items
        node_rows: list[list[str]] = []
        for n in cnodes:
            m = manifests[n.name]
            cond = cluster_nodes.ready_condition(m) or {}
            beat = cluster_nodes.parse_time(cond.get("lastHeartbeatTime"))
            ago = _duration(time.time() - beat.timestamp()) + " ago" if beat else "never"
            ready = cluster_nodes.is_ready(m)
            running_pods = sum(1 for p in pods if (p.get("spec") or {}).get("nodeName") == n.name)
            has_ns = layout.node_netns(n.name) in netns
            if not has_ns:
                problems.append(f"netns {layout.node_netns(n.name)} is missing")
            if ready:
                node_state = "Ready"
            elif cond.get("status") == "True":
                node_state = "NotReady(no-heartbeat)"
            else:
                node_state = f"NotReady({cond.get('reason', '?')})"
            node_rows.append(
                [
                    n.name,
                    node_state,
                    ago,
                    str(layout.node_ip(n.index)),
                    str(layout.pod_cidr(n.index)),
                    str(running_pods),
                    "yes" if has_ns else "missing",
                ]
            )
        out.print("\nnodes", markup=False)
        out.print(
            format_table(
                ["NAME", "STATUS", "HEARTBEAT", "INTERNAL-IP", "POD-CIDR", "PODS", "NETNS"],
                node_rows,
            ).rstrip("\n"),
            markup=False,
            soft_wrap=True,
        )
    if problems:
        for p in problems:
            err.print(f"problem: {p}")
        err.print("run `ketch up` to restart what died (it repairs and keeps what runs)")
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- exec / logs


def _pod(store: Store, namespace: str, ref: str) -> Manifest:
    """The pod `ref` names: `NAME`, `pod/NAME`, or `deploy/NAME` (its best pod, as kubectl
    picks one; "Found N pods, using pod/X" on stderr when there is a choice)."""
    from ketch.api.base import LabelSelector
    from ketch.cluster import podref

    try:
        target = podref.parse(ref)
    except podref.PodRefError as e:
        fail(str(e))
    if target.kind == "Pod":
        try:
            return store.get("Pod", namespace, target.name)
        except NotFoundError:
            fail(
                f'pod "{target.name}" not found in namespace {namespace} '
                f"(ketch get pods -n {namespace})"
            )
    what = f"{target.kind.lower()}/{target.name}"
    try:
        owner = store.get(target.kind, namespace, target.name)
    except NotFoundError:
        fail(
            f"{what} not found in namespace {namespace} (ketch get {target.kind.lower()}s -n {namespace})"
        )
    try:
        selector = LabelSelector.model_validate((owner.get("spec") or {}).get("selector") or {})
    except ValueError as e:
        fail(f"{what} has an unusable spec.selector: {e}")
    if selector.is_empty():
        fail(f"{what} has an empty spec.selector: it names no pods")
    pods = [
        p
        for p in store.list("Pod", namespace).items
        if selector.matches((p.get("metadata") or {}).get("labels") or {})
    ]
    best = podref.best_pod(pods)
    if best is None:
        fail(f"{what} has no pods yet (ketch get pods -n {namespace} -o wide)")
    if len(pods) > 1:
        err.print(f"Found {len(pods)} pods, using pod/{best['metadata']['name']}", markup=False)
    return dict(best)


def _container(m: Manifest, container: str | None, pod: str) -> dict[str, Any]:
    containers = (m.get("spec") or {}).get("containers") or []
    names = [c.get("name") for c in containers]
    if container is None:
        if len(containers) == 1:
            return dict(containers[0])
        fail(f"pod {pod} has containers {', '.join(map(str, names))}: choose one with -c")
    for c in containers:
        if c.get("name") == container:
            return dict(c)
    fail(
        f'container "{container}" is not in pod {pod} (its containers: '
        f"{', '.join(map(str, names)) or 'none'})"
    )


def exec_(
    pod: Annotated[
        str, typer.Argument(help="Pod name, pod/NAME, or deploy/NAME (one of its pods).")
    ],
    command: Annotated[list[str], typer.Argument(help="The command, after `--`.")],
    namespace: NsOpt = "default",
    container: Annotated[
        str | None, typer.Option("--container", "-c", help="Container (its env and workingDir).")
    ] = None,
    stdin: Annotated[
        bool, typer.Option("--stdin", "-i", help="Pass stdin to the command.")
    ] = False,
    tty: Annotated[
        bool, typer.Option("--tty", "-t", help="Keep the terminal (use with -i).")
    ] = False,
    name: NameOpt = DEFAULT_NAME,
    state_dir: StateDirOpt = None,
) -> None:
    """Run a command in a pod's network and mount namespaces, e.g.
    `ketch exec -n demo client -- curl -s http://web/`. Its exit code is ketch's."""
    if os.geteuid() != 0:
        fail("ketch exec needs root: it enters the pod's network namespace")
    layout = _layout(state_dir, name)
    with _store(layout) as store:
        m = _pod(store, namespace, pod)
    pod = str(m["metadata"]["name"])
    spec_c = _container(m, container, pod)
    phase = (m.get("status") or {}).get("phase", "Pending")
    if phase != "Running":
        fail(
            f"pod {pod} is {phase}, not Running: nothing to exec into (ketch describe pod {pod} -n {namespace})"
        )
    uid = str(m["metadata"].get("uid", ""))
    spec = m.get("spec") or {}
    if spec.get("hostNetwork") and spec.get("nodeName"):
        netns = layout.node_netns(str(spec["nodeName"]))  # the node's network, like the kubelet
    else:
        netns = layout.pod_netns(uid)
    if not os.path.exists(f"/run/netns/{netns}"):
        fail(
            f"pod {pod}'s network namespace {netns} does not exist: is the cluster up? (ketch status)"
        )
    if tty and not stdin:
        err.print("Warning: -t without -i: stdin is not passed to the command")
    from ketch.cluster.podnet import pod_hostname

    env = {k: v for k in ("PATH", "TERM", "LANG") if (v := os.environ.get(k))}
    env["HOSTNAME"] = pod_hostname(pod, spec.get("hostname"))  # as in its containers
    for e in spec_c.get("env") or []:
        if isinstance(e, dict) and e.get("value") is not None:
            env[str(e["name"])] = str(e["value"])
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        fail("ketch exec needs a command after `--`, e.g. ketch exec POD -- sh")
    from ketch.cluster.process import pod_argv

    uts = layout.pod_uts(netns)  # the pod's hostname (the kubelet's sandbox made it)
    argv = pod_argv(netns, uts if uts.exists() else None, command)
    wd = spec_c.get("workingDir")
    if wd and os.path.isdir(wd):
        os.chdir(wd)
    if not stdin:
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)  # the command's exit code becomes ours
    except OSError as e:
        fail(f"cannot run {argv[0]}: {e}")


def logs(
    pod: Annotated[
        str, typer.Argument(help="Pod name, pod/NAME, or deploy/NAME (one of its pods).")
    ],
    namespace: NsOpt = "default",
    container: Annotated[str | None, typer.Option("--container", "-c", help="Container.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing, across restarts.")
    ] = False,
    previous: Annotated[
        bool, typer.Option("--previous", "-p", help="The previous run's log.")
    ] = False,
    name: NameOpt = DEFAULT_NAME,
    state_dir: StateDirOpt = None,
) -> None:
    """Print a container's output (stdout and stderr) from the kubelet's log files."""
    from ketch.cluster import podlogs

    layout = _layout(state_dir, name)
    with _store(layout) as store:
        m = _pod(store, namespace, pod)
    pod = str(m["metadata"]["name"])
    spec_c = _container(m, container, pod)
    uid = str(m["metadata"].get("uid", ""))
    cdir = layout.pod_dir(namespace, pod, uid) / str(spec_c["name"])
    files = podlogs.log_files(cdir)
    path = podlogs.pick(files, previous)
    if path is None:
        if previous:
            fail(f'previous terminated container "{spec_c["name"]}" in pod "{pod}" not found')
        fail(
            f'container "{spec_c["name"]}" of pod {pod} has no log yet (not started? ketch get pod {pod} -n {namespace})'
        )

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)

    if not follow or previous:
        with open(path, "rb") as f:
            podlogs.copy_rest(f, write)
        sys.stdout.flush()
        return

    def pod_still_there() -> bool:
        sys.stdout.flush()
        with contextlib.suppress(StoreError), _store(layout) as s:
            try:
                return str(s.get("Pod", namespace, pod)["metadata"].get("uid")) == uid
            except NotFoundError:
                return False
        return True

    checker = _Every(2.0, pod_still_there)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        podlogs.follow(cdir, path, write, checker)
        sys.stdout.flush()


class _Every:
    """Calls `fn` at most every `interval` seconds; remembers its answer in between."""

    def __init__(self, interval: float, fn: Any) -> None:
        self.interval, self.fn, self.last, self.value = interval, fn, 0.0, True

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last, self.value = now, bool(self.fn())
        sys.stdout.flush()
        return self.value


# ---------------------------------------------------------------------------- processes


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run_until_signal(main: Any) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")]


@cluster_app.command("controllers")
def controllers_cmd(
    name: NameOpt = DEFAULT_NAME, state_dir: StateDirOpt = None, log_level: LogLevelOpt = "info"
) -> None:
    """Run the controllers (scheduler, Deployments, ReplicaSets, endpoints) until SIGTERM."""
    _setup_logging(log_level)
    log = logging.getLogger("ketch.cluster")
    layout = _layout(state_dir, name)

    from ketch.cluster.controllers import run_controllers

    async def main(stop: asyncio.Event) -> None:
        with _store(layout, create=True) as store:
            sv.mark_ready(layout, sv.CONTROLLERS)
            log.info("controllers running (cluster %s, store %s)", layout.name, layout.store_path)
            await run_controllers(store, stop)

    _run_until_signal(main)


@cluster_app.command("node")
def node_cmd(
    node: Annotated[str, typer.Option("--node", help="The node this process runs.")],
    name: NameOpt = DEFAULT_NAME,
    state_dir: StateDirOpt = None,
    cni_socket: Annotated[
        Path | None,
        typer.Option(
            "--cni-socket",
            help="The node agent's CNI-event socket: every new pod is posted there before "
            "its containers start (the mesh enrolls it first).",
        ),
    ] = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run one node (heartbeat, kubelet, service VIPs, DNS) inside its netns until SIGTERM."""
    from ketch.cluster.node import NodeProcessError, check_netns, run_node

    _setup_logging(log_level)
    layout = _layout(state_dir, name)
    try:
        check_netns(layout, node)
    except NodeProcessError as e:
        fail(str(e))

    async def main(stop: asyncio.Event) -> None:
        with _store(layout) as store:
            try:
                store.get("Node", "", node)
            except NotFoundError:
                fail(f"Node {node} is not in the store {layout.store_path} (ketch up writes it)")
            await run_node(store, layout, node, stop, cni_socket=cni_socket)

    _run_until_signal(main)
