"""`ketch ztunnel run`: the node proxy as a process, from a standalone YAML config or joined
to a control plane (`--control-plane`).

The proxy modules are imported inside the command, so `ketch get` does not pay for them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from ketch.cli.common import fail, run_app

ztunnel_app = typer.Typer(
    help="The node L4 proxy (ztunnel): mTLS HBONE tunnels, L4 policy, telemetry.",
    no_args_is_help=True,
)


def _ttl(text: str | None) -> dt.timedelta | None:
    if text is None:
        return None
    from ketch.cli.node_cmd import _parse_ttl

    return _parse_ttl(text)


@ztunnel_app.command("run")
def run(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Standalone config: workloads (with `netns` for the pods to capture), services, policies. Reloaded when it changes.",
        ),
    ] = None,
    ca_dir: Annotated[
        Path | None,
        typer.Option(
            "--ca-dir",
            help="CA directory for in-process certificates (created on first use; share it between nodes so they trust each other).",
        ),
    ] = None,
    control_plane: Annotated[
        str | None,
        typer.Option(
            "--control-plane",
            help="Instead of --config/--ca-dir: the control plane's mTLS address (unix socket path such as /var/lib/ketch/ca.sock, or HOST:PORT); state over xDS, certificates from its certificate service.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="KETCH_JOIN_TOKEN",
            help="Bootstrap token to join the control plane (first start only; from `ketch node token create`).",
        ),
    ] = None,
    node_dir: Annotated[
        Path,
        typer.Option(
            "--node-dir", help="Where the node's key, certificate and trust bundle are kept."
        ),
    ] = Path("/var/lib/ketch/node"),
    join_address: Annotated[
        str | None,
        typer.Option(
            "--join-address",
            help="The control plane's join listener (default: join.sock next to a unix --control-plane).",
        ),
    ] = None,
    xds_address: Annotated[
        str | None,
        typer.Option(
            "--xds-address",
            help="The control plane's delta ADS (default: the --control-plane address, which serves certificates and xDS).",
        ),
    ] = None,
    trust_bundle: Annotated[
        Path | None,
        typer.Option(
            "--trust-bundle",
            help="Roots to trust when joining (default: trust-bundle.pem next to a unix --control-plane).",
        ),
    ] = None,
    node_ip: Annotated[
        str,
        typer.Option(
            "--node-ip",
            envvar="INSTANCE_IP",
            help="With --control-plane: this node's IP, sent in the xDS Node id as ztunnel's INSTANCE_IP (istiod-style servers want one).",
        ),
    ] = "",
    pods: Annotated[
        Path | None,
        typer.Option(
            "--pods",
            help="With --control-plane: YAML list of the pods to serve ({name, namespace, netns, serviceAccount, uid}); reloaded when it changes. A stand-in for the node agent's ZDS handoff.",
        ),
    ] = None,
    zds_socket: Annotated[
        Path | None,
        typer.Option(
            "--zds-socket",
            help="With --control-plane: take pods from the node agent over ZDS at this SEQPACKET socket (`ketch agent run --zds-socket`), instead of --pods.",
        ),
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(
            "--ready-file",
            help="Write this process's PID to this file once it is ready (how `ketch restart` knows the new node proxy is ready while the old one still holds 15021).",
        ),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option("--node", help="This node's name (default: the config's `node`)."),
    ] = None,
    metrics_addr: Annotated[
        str, typer.Option("--metrics-addr", help="Prometheus /metrics, HOST:PORT or 'off'.")
    ] = "0.0.0.0:15020",
    readiness_addr: Annotated[
        str, typer.Option("--readiness-addr", help="/healthz/ready, HOST:PORT or 'off'.")
    ] = "0.0.0.0:15021",
    admin_addr: Annotated[
        str,
        typer.Option(
            "--admin-addr",
            help="Admin (/config_dump, /logging, /quitquitquit), HOST:PORT or 'off'.",
        ),
    ] = "127.0.0.1:15000",
    drain_timeout: Annotated[
        float,
        typer.Option(
            "--drain-timeout", min=0.0, help="On SIGTERM, seconds open connections may finish."
        ),
    ] = 30.0,
    reload_interval: Annotated[
        float,
        typer.Option(
            "--reload-interval", min=0.05, help="Seconds between config (or --pods) file checks."
        ),
    ] = 1.0,
    workload_ttl: Annotated[
        str | None,
        typer.Option(
            "--workload-ttl", help="Workload certificate lifetime (default: the CA's, 24h)."
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error.")
    ] = "info",
    log_format: Annotated[
        str, typer.Option("--log-format", help="Access log lines: text or json.")
    ] = "text",
    no_spoof_source: Annotated[
        bool,
        typer.Option(
            "--no-spoof-source",
            help="Apps see the pod's own IP as the source instead of the client's.",
        ),
    ] = False,
    use_uvloop: Annotated[
        bool, typer.Option("--uvloop/--no-uvloop", help="Run on uvloop (faster).")
    ] = True,
) -> None:
    """Run the node proxy until SIGTERM/SIGINT, then drain and exit (exit code 0)."""
    from ketch.standalone.config import ConfigError
    from ketch.standalone.run import (
        StandaloneError,
        StandaloneOptions,
        StandaloneProxy,
        parse_address,
    )
    from ketch.ztunnel.admin import parse_levels

    if control_plane is None and (config is None or ca_dir is None):
        fail(
            "give --config and --ca-dir (standalone), or --control-plane (joined to a control plane)"
        )
    if log_format not in ("text", "json"):
        fail(f"--log-format: expected text or json, got {log_format!r}")
    try:
        ((_, level),) = parse_levels(log_level)
        opts = StandaloneOptions(
            config=config,
            ca_dir=ca_dir,
            node=node,
            metrics=parse_address(metrics_addr, "--metrics-addr"),
            readiness=parse_address(readiness_addr, "--readiness-addr"),
            admin=parse_address(admin_addr, "--admin-addr"),
            drain_timeout=drain_timeout,
            reload_interval=reload_interval,
            log_format=log_format,
            workload_ttl=_ttl(workload_ttl),
            spoof_source=not no_spoof_source,
            control_plane=control_plane,
            node_dir=node_dir if control_plane is not None else None,
            token=token,
            join_address=join_address,
            trust_bundle=trust_bundle,
            xds_address=xds_address,
            node_ip=node_ip,
            pods=pods,
            zds_socket=zds_socket,
            ready_file=ready_file,
        )
    except (StandaloneError, ValueError) as e:
        fail(str(e))
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    async def main() -> int:
        proxy = StandaloneProxy(opts)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, proxy.request_stop)
        loop.add_signal_handler(signal.SIGHUP, proxy.reload_requested.set)
        await proxy.start()
        return await proxy.run()

    try:
        if use_uvloop:
            import uvloop

            forced = uvloop.run(main())
        else:
            forced = asyncio.run(main())
    except ConfigError as e:
        fail("invalid config:\n  " + "\n  ".join(e.problems))
    except StandaloneError as e:
        fail(str(e))
    logging.getLogger("ketch.ztunnel").info(
        "node proxy exited (%d connection(s) force-closed at the drain deadline)", forced
    )


def ztunnel_config(
    section: Annotated[
        str,
        typer.Argument(
            help="workloads, services, policies, certificates, pods, connections, or all."
        ),
    ] = "all",
    admin: Annotated[
        str, typer.Option("--admin", help="The proxy's admin endpoint, HOST:PORT.")
    ] = "127.0.0.1:15000",
    netns: Annotated[
        str | None,
        typer.Option("--netns", help="Reach the admin endpoint from inside this netns (a node's)."),
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")] = "table",
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="A node of the local cluster (`ketch up`): its netns is found from --name and --state-dir.",
        ),
    ] = None,
    cluster: Annotated[
        str | None, typer.Option("--name", help="With --node: the cluster's name.")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="With --node: the cluster's state dir.")
    ] = None,
) -> None:
    """Show what a running node proxy holds (from its /config_dump)."""
    import json

    import yaml

    from ketch.cli.common import out
    from ketch.cli.zconfig import SECTIONS, fetch_dump, resolve_section, table_rows
    from ketch.standalone.run import StandaloneError, parse_address

    key = resolve_section(section)
    if output not in ("table", "json", "yaml"):
        fail(f"--output: expected table, json or yaml, got {output!r}")
    try:
        addr = parse_address(admin, "--admin")
    except StandaloneError as e:
        fail(str(e))
    if addr is None:
        fail("--admin: an address is needed")
    if node is not None:
        netns = _node_netns(node, netns, cluster, state_dir)
    dump = fetch_dump(addr[0], addr[1], netns)
    keys = list(SECTIONS) if key == "all" else [key]
    if output != "table":
        wanted = dump if key == "all" else {k: dump.get(k, []) for k in keys}
        if key == "policies":
            wanted["peerAuthentications"] = dump.get("peerAuthentications", [])
        text = (
            json.dumps(wanted, indent=2, sort_keys=True)
            if output == "json"
            else yaml.safe_dump(wanted, sort_keys=True)
        )
        out.print(text, markup=False, highlight=False, end="" if text.endswith("\n") else "\n")
        return
    for i, k in enumerate(keys):
        head, rows = table_rows(k, dump)
        if key == "all":
            out.print(("\n" if i else "") + f"{k.upper()}", markup=False)
        widths = [max([len(h), *(len(r[j]) for r in rows)]) for j, h in enumerate(head)]
        for r in [head, *rows]:
            out.print(
                "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(),
                markup=False,
                highlight=False,
            )


def _node_netns(node: str, netns: str | None, cluster: str | None, state_dir: Path | None) -> str:
    """The netns of `node` in the local cluster's layout (ketch.cluster.layout)."""
    import os

    from ketch.cluster.layout import DEFAULT_NAME, ClusterLayout, default_state_dir

    if netns is not None:
        fail("give --node or --netns, not both")
    try:
        layout = ClusterLayout(state_dir or default_state_dir(), cluster or DEFAULT_NAME)
    except ValueError as e:
        fail(f"--name: {e}")
    name = layout.node_netns(node)
    if not os.path.exists(f"/run/netns/{name}"):
        fail(
            f"node {node} of cluster {layout.name} has no netns {name}: is the cluster up "
            "and is that one of its nodes? (ketch status --name ... --state-dir ...)"
        )
    return name


def run_main() -> None:
    """`ketch ztunnel run` without the rest of the CLI (see `ketch.cli.entry`)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    group = typer.Typer(help=ztunnel_app.info.help)
    group.command("run")(run)
    app.add_typer(group, name="ztunnel")
    run_app(app)
