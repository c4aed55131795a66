"""`ketch proxy-status`: which node proxies the control plane pushes to, and whether each has
taken the latest config, like `istioctl proxy-status`.

It asks the control plane's xDS server for `istio.io/debug/syncz` on a delta ADS stream
and gets istiod's answer shape: one `envoy.service.status.v3.ClientConfig` per connected
stream (per type URL a status and the version sent), with Ketch's facts about the stream in
the node metadata (`KETCH_NODE`, `KETCH_AUTH`, `KETCH_PEER`, `KETCH_STREAM`,
`KETCH_CONNECTED_SINCE`). The control plane answers the same on StreamAggregatedResources
(SotW), the RPC istioctl uses.

Who may ask: the xDS socket takes only client certificates of the mesh CA, and syncz only
from the admin certificate the control plane writes to `<state-dir>/admin/` when it starts
with `--xds` (0700 directory, 0600 key): an operator who can read the state directory (the
control plane's user, root by default) is allowed; nodes are not.

`rows` and `render` are pure (tested without a server); `fetch_syncz` is the I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.cli.common import CliError

TIMEOUT = 5.0


def _types() -> tuple[tuple[str, str], ...]:
    """(column, type URL); imported late: `ketch.xds` loads the protos."""
    from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

    return (("ADDRESS", ADDRESS_TYPE), ("AUTHORIZATION", AUTHORIZATION_TYPE))


@dataclass(frozen=True)
class Credentials:
    trust_bundle: bytes
    cert_chain: bytes
    key: bytes


def load_credentials(state_dir: Path) -> Credentials:
    """The admin credential and trust bundle the control plane wrote to its state dir."""
    files = (
        state_dir / "admin" / "root-cert.pem",
        state_dir / "admin" / "cert-chain.pem",
        state_dir / "admin" / "key.pem",
    )
    try:
        bundle, cert, key = (f.read_bytes() for f in files)
    except FileNotFoundError as e:
        raise CliError(
            f"no {e.filename}: the control plane writes its admin credential to "
            f"{state_dir / 'admin'} when it starts with --xds (ketch control-plane run --xds"
            ", --state-dir if not the default)"
        ) from None
    except PermissionError as e:
        raise CliError(
            f"cannot read {e.filename}: run as the user of the control plane (root by default)"
        ) from None
    return Credentials(bundle, cert, key)


def target(address: str | None, state_dir: Path) -> str:
    """A gRPC target: `--xds-address` as HOST:PORT, unix:PATH or a socket path; by default
    `<state-dir>/ca.sock`, which must exist."""
    if address is None:
        sock = state_dir / "ca.sock"
        if not sock.exists():
            raise CliError(
                f"no control plane socket at {sock}: the control plane is not running here "
                "(ketch control-plane run --xds; --state-dir if not the default)"
            )
        return f"unix:{sock}"
    if address.startswith("unix:"):
        return address
    if address.startswith("/") or address.startswith("."):
        return f"unix:{Path(address).resolve()}"
    return address


async def fetch_syncz(address: str, creds: Credentials, wait: float = TIMEOUT) -> list[Any]:
    """The ClientConfigs the control plane at `address` reports (one syncz request)."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from envoy.service.status.v3 import csds_pb2

    from ketch.xds.types import SYNCZ_TYPE

    channel = grpc.aio.secure_channel(
        address,
        grpc.ssl_channel_credentials(creds.trust_bundle, creds.key, creds.cert_chain),
        options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
    )
    try:
        call: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(
            timeout=wait
        )
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=SYNCZ_TYPE))
        response = await call.read()
        if not isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
            raise CliError(f"the control plane at {address} closed the stream without answering")
        call.cancel()
    except grpc.aio.AioRpcError as e:
        raise CliError(_explain(address, e.code(), e.details() or "")) from None
    finally:
        await channel.close(None)
    configs = []
    for resource in response.resources:
        config = csds_pb2.ClientConfig()
        if resource.resource.Unpack(config):
            configs.append(config)
    return configs


def _explain(address: str, code: Any, details: str) -> str:
    name = getattr(code, "name", str(code))
    if name == "UNAVAILABLE":
        return (
            f"cannot reach the control plane's xDS server at {address} ({details}): is "
            "`ketch control-plane run --xds` running?"
        )
    if name == "DEADLINE_EXCEEDED":
        return f"the control plane at {address} did not answer within {TIMEOUT:g}s"
    if name == "UNIMPLEMENTED":
        return (
            f"the control plane at {address} serves no xDS: it runs without --xds "
            "(restart it with `ketch control-plane run --xds`)"
        )
    if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return (
            f"the control plane refused proxy-status ({name}: {details}); the admin "
            "credential in <state-dir>/admin is re-issued at every start: use the state "
            "directory of the running control plane"
        )
    return f"proxy-status failed: {name}: {details}"


def rows(configs: Sequence[Any]) -> list[dict[str, Any]]:
    """One dict per connected stream (the JSON output), sorted by node then stream."""
    from envoy.service.status.v3 import csds_pb2

    out = []
    for c in configs:
        meta = {k: v.string_value for k, v in c.node.metadata.fields.items()}
        types: dict[str, dict[str, Any]] = {}
        for g in c.generic_xds_configs:
            entry: dict[str, Any] = {
                "status": csds_pb2.ConfigStatus.Name(g.config_status),
                "version": g.version_info,
            }
            if g.HasField("last_updated"):
                entry["lastUpdated"] = g.last_updated.ToJsonString()
            if g.error_state.details:
                entry["error"] = g.error_state.details
            types[g.type_url] = entry
        out.append(
            {
                "node": meta.get("KETCH_NODE") or c.node.id,
                "nodeId": c.node.id,
                "stream": int(meta.get("KETCH_STREAM") or 0),
                "auth": meta.get("KETCH_AUTH", ""),
                "peer": meta.get("KETCH_PEER", ""),
                "connectedSince": meta.get("KETCH_CONNECTED_SINCE", ""),
                "clusterId": meta.get("CLUSTER_ID", ""),
                "namespace": meta.get("NAMESPACE", ""),
                "istioVersion": meta.get("ISTIO_VERSION", ""),
                "types": types,
            }
        )
    return sorted(out, key=lambda r: (r["node"], r["stream"]))


def _version(row: dict[str, Any]) -> str:
    versions = [t["version"] for t in row["types"].values() if t["version"]]
    numeric = [int(v) for v in versions if v.isdigit()]
    if numeric:
        return str(max(numeric))
    return max(versions, default="-")


def render(table: Sequence[dict[str, Any]]) -> list[str]:
    """The table: NODE, one column per type, CONNECTED SINCE, VERSION (of the snapshot last
    sent to that proxy)."""
    types = _types()
    header = ["NODE", *(name for name, _ in types), "CONNECTED SINCE", "VERSION"]
    lines = [header]
    for r in table:
        since = r["connectedSince"][:19].replace("T", " ") or "-"
        states = [r["types"].get(url, {}).get("status", "NOT_SENT") for _, url in types]
        lines.append([r["node"], *states, since, _version(r)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return [
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def proxy_status(address: str | None, state_dir: Path) -> list[dict[str, Any]]:
    where = target(address, state_dir)  # first: "is it running" before "can I read"
    creds = load_credentials(state_dir)
    return rows(asyncio.run(fetch_syncz(where, creds)))
