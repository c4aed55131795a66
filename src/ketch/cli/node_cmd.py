"""`ketch node ...` and `ketch control-plane run`: enrolling nodes, running the control plane.

The identity modules (cryptography, grpc) are imported inside the commands, so that
`ketch get` does not pay for them at start-up.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from ketch.cli.common import CliError, err, fail, open_store, out, state
from ketch.store import NotFoundError

node_app = typer.Typer(
    help="Enrol and revoke nodes (the machines that run a node proxy).", no_args_is_help=True
)
token_app = typer.Typer(help="One-time bootstrap tokens a node uses to join.", no_args_is_help=True)
node_app.add_typer(token_app, name="token")
cp_app = typer.Typer(
    help="Run the control plane (config store + certificate service).", no_args_is_help=True
)

StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Control plane state (CA, tokens, sockets). Default: the store file's directory.",
    ),
]


def _state_dir(given: Path | None) -> Path:
    return given or state.store_path.parent


def _parse_ttl(text: str) -> dt.timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return dt.timedelta(seconds=float(text))
    except (ValueError, IndexError):
        fail(f"--ttl {text!r}: expected a duration such as 30m, 1h or 7d")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Node name.")],
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl", help="How long the token stays valid (default 1h, max 7d; --xds: 30d, 365d)."
        ),
    ] = None,
    xds: Annotated[
        bool,
        typer.Option(
            "--xds",
            help="An xDS token instead: reusable, only opens xDS streams as NAME (sent as "
            "`authorization: Bearer` by a node proxy without a node certificate, e.g. a stock "
            "ztunnel); ends with `ketch node revoke NAME`.",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Create a one-time bootstrap token for NAME (and the Node object, if missing), or with
    --xds a reusable xDS token.

    The token is printed once and stored only as a hash.
    """
    from ketch.api import KINDS
    from ketch.control import plane
    from ketch.identity.errors import IdentityError

    tokens = plane.token_store(_state_dir(state_dir))
    try:
        if xds:
            token = tokens.create_xds_token(name, _parse_ttl(ttl or "30d"))
        else:
            token = tokens.create(name, _parse_ttl(ttl or "1h"))
    except IdentityError as e:
        fail(str(e))
    with open_store() as store:
        try:
            store.get("Node", "", name)
        except NotFoundError:
            store.apply(
                [
                    {
                        "apiVersion": KINDS["Node"].api_version,
                        "kind": "Node",
                        "metadata": {"name": name},
                    }
                ]
            )
            err.print(f"node/{name} created")
    out.print(token)


@node_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="Node name.")],
    state_dir: StateDirOpt = None,
) -> None:
    """Stop signing for NAME's node certificate and accepting its xDS tokens at once; its
    open xDS streams end within --xds-revalidate (the Node object stays)."""
    from ketch.control import plane

    if plane.token_store(_state_dir(state_dir)).revoke(name):
        out.print(f"node/{name} revoked")
    else:
        fail(f"node {name!r} has no enrolled certificate (never joined, or already revoked)")


@node_app.command("list")
def list_nodes(state_dir: StateDirOpt = None) -> None:
    """Nodes in the store, their enrolment state and whether their node proxy is connected
    to the control plane's xDS server now."""
    from ketch.control import plane

    sd = _state_dir(state_dir)
    tokens = plane.token_store(sd)
    enrolled = {r.name: r for r in tokens.nodes()}
    pending = {n for n, _ in tokens.pending_tokens()}
    with open_store() as store:
        nodes = sorted(m["metadata"]["name"] for m in store.list("Node").items)
    connected, why_unknown = _connected_nodes(sd)
    out.print(f"{'NAME':<30}{'ENROLMENT':<40}XDS")
    for name in sorted(set(nodes) | set(enrolled)):
        if name in enrolled:
            what = "joined"
        elif name in pending:
            what = "token issued"
        else:
            what = "not joined"
        if name not in nodes:
            what += " (Node object deleted: signing refused)"
        if connected is None:
            xds = "unknown"
        else:
            xds = f"connected since {connected[name]}" if name in connected else "not connected"
        out.print(f"{name:<30}{what:<40}{xds}")
    if why_unknown:
        err.print(f"XDS unknown: {why_unknown}")


def _connected_nodes(state_dir: Path) -> tuple[dict[str, str] | None, str]:
    """node -> connected-since of the node proxies streaming from the control plane now
    (from its syncz, as `ketch proxy-status`), or (None, why) when it cannot be asked."""
    from ketch.cli.proxy_status import proxy_status

    try:
        rows = proxy_status(None, state_dir)
    except CliError as e:
        return None, str(e)
    since: dict[str, str] = {}
    for row in rows:
        since.setdefault(row["node"], row["connectedSince"] or "?")
    return since, ""


@cp_app.command("run")
def run_control_plane(
    state_dir: StateDirOpt = None,
    trust_domain: Annotated[
        str, typer.Option("--trust-domain", help="SPIFFE trust domain.")
    ] = "cluster.local",
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen", help="Also serve certificates on HOST:PORT (mTLS), e.g. 127.0.0.1:15012."
        ),
    ] = None,
    join_listen: Annotated[
        str | None, typer.Option("--join-listen", help="Also serve node joins on HOST:PORT.")
    ] = None,
    ca_cert: Annotated[
        Path | None,
        typer.Option(
            "--ca-cert",
            help="Use this CA certificate (root or intermediate) instead of a self-generated root.",
        ),
    ] = None,
    ca_key: Annotated[
        Path | None, typer.Option("--ca-key", help="Private key of --ca-cert.")
    ] = None,
    ca_chain: Annotated[
        Path | None, typer.Option("--ca-chain", help="Chain from --ca-cert up to the root.")
    ] = None,
    workload_ttl: Annotated[
        str, typer.Option("--workload-ttl", help="Default workload certificate lifetime.")
    ] = "24h",
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning, error.")
    ] = "info",
    xds: Annotated[
        bool,
        typer.Option(
            "--xds",
            help="Also serve delta ADS (config push to node proxies) on the certificate "
            "service's listeners (ca.sock, --listen; as istiod on 15012) and, for xDS "
            "tokens, the join listeners: the store's workloads, services and L4 policies "
            "as Istio's Address and Authorization resources.",
        ),
    ] = False,
    cluster_id: Annotated[
        str,
        typer.Option("--cluster-id", help="Cluster id in workload uids (istiod's CLUSTER_ID)."),
    ] = "Kubernetes",
    root_namespace: Annotated[
        str,
        typer.Option("--root-namespace", help="Namespace of mesh-wide policies."),
    ] = "istio-system",
    xds_revalidate: Annotated[
        float,
        typer.Option(
            "--xds-revalidate",
            min=0.1,
            help="Seconds between re-checks of connected nodes' certificates: a node revoked "
            "with `ketch node revoke` loses its xDS stream within this time.",
        ),
    ] = 10.0,
) -> None:
    """Run the control plane until SIGTERM/SIGINT."""
    from ketch.control import plane
    from ketch.identity.errors import IdentityError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = plane.ControlPlaneConfig(
        state_dir=_state_dir(state_dir),
        trust_domain=trust_domain,
        listen=listen,
        join_listen=join_listen,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_chain=ca_chain,
        workload_ttl=_parse_ttl(workload_ttl),
        store_path=state.store_path if state_dir is None else None,
        xds=xds,
        cluster_id=cluster_id,
        root_namespace=root_namespace,
        xds_revalidate=xds_revalidate,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await plane.run(config, stop)

    try:
        asyncio.run(main())
    except (IdentityError, ValueError) as e:
        fail(str(e))


def proxy_status(
    state_dir: StateDirOpt = None,
    xds_address: Annotated[
        str | None,
        typer.Option(
            "--xds-address",
            help="The control plane's xDS server: HOST:PORT, unix:PATH or a socket path. "
            "Default: <state-dir>/ca.sock (certificates and xDS share it).",
        ),
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Node proxies connected to the control plane's xDS server and their sync status per
    type (SYNCED, STALE, NOT_SENT, ERROR), like `istioctl proxy-status`.

    Needs the admin credential the control plane (run with --xds) writes to
    <state-dir>/admin: run as the control plane's user.
    """
    import json

    from ketch.cli.proxy_status import proxy_status as fetch
    from ketch.cli.proxy_status import render

    if output not in ("table", "json"):
        fail(f"--output {output!r}: expected table or json")
    table = fetch(xds_address, _state_dir(state_dir))
    if output == "json":
        out.print(json.dumps(table, indent=2), markup=False)
        return
    for line in render(table):
        out.print(line, markup=False)
    if not table:
        err.print("no node proxy is connected to the control plane")
