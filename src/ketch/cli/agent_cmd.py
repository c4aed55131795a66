"""`ketch agent run`: the node agent of one node (docs/node-agent.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ketch.cli.common import fail, state

agent_app = typer.Typer(
    help="The node agent: enrolls this node's pods into the mesh by label (no restart).",
    no_args_is_help=True,
)


@agent_app.command("run")
def run(
    node: Annotated[
        str, typer.Option("--node", help="This node's name (pods with spec.nodeName).")
    ],
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Agent files go to STATE_DIR/agent/NODE/ (sockets, netns.json). Default: the store's directory.",
            show_default=False,
        ),
    ] = None,
    zds_socket: Annotated[
        Path | None,
        typer.Option(
            "--zds-socket",
            help="SEQPACKET socket node proxies connect to (`ketch ztunnel run --zds-socket`). Default: STATE_DIR/agent/NODE/ztunnel.sock.",
        ),
    ] = None,
    cni_socket: Annotated[
        Path | None,
        typer.Option(
            "--cni-socket",
            help="HTTP socket for the kubelet's CNI events (POST /cmdadd). Default: STATE_DIR/agent/NODE/pluginevent.sock.",
        ),
    ] = None,
    netns_template: Annotated[
        str | None,
        typer.Option(
            "--netns-template",
            help="Where a running pod's netns is when no CNI event told: a path with {uid}, {uidhash} (12 hex of sha256(uid)), {name}, {namespace}; e.g. /run/netns/ketch-p-{uidhash}.",
        ),
    ] = None,
    pod_cidr: Annotated[
        list[str] | None,
        typer.Option(
            "--pod-cidr",
            help="This node's pod CIDR for the kubelet-probe SNAT (repeatable). Default: the Node's spec.podCIDR(s).",
        ),
    ] = None,
    no_probe_snat: Annotated[
        bool,
        typer.Option("--no-probe-snat", help="Do not install the probe SNAT in the node netns."),
    ] = False,
    exclude_namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-namespace", help="Never enroll pods of this namespace (repeatable)."
        ),
    ] = None,
    resync: Annotated[
        float, typer.Option("--resync", min=0.2, help="Seconds between full reconciles.")
    ] = 5.0,
    store_path: Annotated[
        Path | None,
        typer.Option("--store", help="Config store file (as `ketch --store`)."),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning.")] = "info",
) -> None:
    """Run the node agent until SIGTERM/SIGINT. Enrollments survive a restart."""
    from ketch.agent.agent import AgentError, AgentOptions, AgentPaths, NodeAgent
    from ketch.agent.enrollment import DEFAULT_EXCLUDED
    from ketch.store import SqliteStore, StoreError

    for c in pod_cidr or []:
        try:
            ipaddress.ip_network(c, strict=False)
        except ValueError:
            fail(f"--pod-cidr: {c!r} is not a CIDR such as 10.244.1.0/24")
    if netns_template is not None:
        try:
            netns_template.format(uid="u", uidhash="h", name="n", namespace="ns")
        except (KeyError, IndexError, ValueError) as e:
            fail(f"--netns-template: {e}; use only {{uid}} {{uidhash}} {{name}} {{namespace}}")
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    if store_path is not None:
        state.store_path = store_path
    base = state_dir if state_dir is not None else state.store_path.parent
    paths = AgentPaths(base, node)
    opts = AgentOptions(
        node=node,
        paths=paths,
        zds_socket=zds_socket or paths.zds_socket,
        cni_socket=cni_socket or paths.cni_socket,
        netns_template=netns_template,
        pod_cidrs=tuple(pod_cidr or ()),
        probe_snat=not no_probe_snat,
        excluded=frozenset(exclude_namespace) if exclude_namespace else DEFAULT_EXCLUDED,
        resync=resync,
    )
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        store = SqliteStore(state.store_path)
    except StoreError as e:
        fail(str(e))

    async def main() -> None:
        agent = NodeAgent(opts, store)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.start()
        try:
            await stop.wait()
        finally:
            await agent.close()

    try:
        asyncio.run(main())
    except AgentError as e:
        fail(str(e))
    finally:
        store.close()
    logging.getLogger("ketch.agent").info("node agent stopped (enrollments stay in place)")
