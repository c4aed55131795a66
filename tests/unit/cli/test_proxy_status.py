"""`ketch proxy-status` against an in-process control plane (`--xds`, real build) with a node
proxy connected over gRPC; its errors when the plane is not there; the table alone."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ketch.cli.common import CliError
from ketch.cli.proxy_status import Credentials, fetch_syncz, load_credentials, render, rows
from ketch.control import plane
from ketch.identity.ca import CertificateAuthority
from tests.unit.control.plane_helpers import Proxy, apply, running_plane
from tests.unit.control.test_plane_build import NS, POD, UID


def ketch(config: plane.ControlPlaneConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ketch.cli.main", "--store", str(config.store_file), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )


async def test_proxy_status_shows_a_synced_node_proxy() -> None:
    async with running_plane() as config:
        proxy = Proxy(config, "node-a")
        try:
            apply(config, NS, POD)
            await proxy.start()
            await proxy.until(lambda: UID in proxy.held[proxy.client.types[0]])
            await proxy.until(proxy.client.ready)

            state = str(config.state_dir)
            table = await asyncio.to_thread(ketch, config, "proxy-status", "--state-dir", state)
            assert table.returncode == 0, table.stderr
            header, *lines = table.stdout.splitlines()
            assert header.split() == [
                "NODE", "ADDRESS", "AUTHORIZATION", "CONNECTED", "SINCE", "VERSION"
            ]  # fmt: skip
            [line] = lines
            node, address, authorization, _date, _time, version = line.split()
            assert (node, address, authorization, version) == ("node-a", "SYNCED", "SYNCED", "1")

            as_json = await asyncio.to_thread(
                ketch, config, "proxy-status", "--state-dir", state, "-o", "json",
                "--xds-address", str(config.ca_socket),
            )  # fmt: skip
            assert as_json.returncode == 0, as_json.stderr
            [client] = json.loads(as_json.stdout)
            assert client["node"] == "node-a"
            assert client["auth"] == "certificate"
            assert client["nodeId"].startswith("ztunnel~")
            assert client["clusterId"] == "Kubernetes"
            assert {t: v["status"] for t, v in client["types"].items()} == {
                "type.googleapis.com/istio.workload.Address": "SYNCED",
                "type.googleapis.com/istio.security.Authorization": "SYNCED",
            }
            assert client["connectedSince"]
        finally:
            await proxy.close()


async def test_a_node_certificate_may_not_read_syncz() -> None:
    async with running_plane() as config:
        ca = CertificateAuthority.create("cluster.local", state_dir=config.ca_dir)
        node = ca.issue_node("node-a")
        serial = x509.load_pem_x509_certificate(node.cert_pem).serial_number
        plane.token_store(config.state_dir).replace_certs("node-a", serial)
        creds = Credentials(ca.trust_bundle_pem, node.chain_bytes, node.key_pem)
        with pytest.raises(CliError, match="PERMISSION_DENIED"):
            await fetch_syncz(f"unix:{config.ca_socket}", creds)


async def test_admin_credential_is_private_and_reissued_at_every_start() -> None:
    state = Path(tempfile.mkdtemp(prefix="kps-")) / "state"
    async with running_plane(state) as config:
        assert stat.S_IMODE(config.admin_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((config.admin_dir / "key.pem").stat().st_mode) == 0o600
        old = load_credentials(state)
        assert await fetch_syncz(f"unix:{config.ca_socket}", old) == []
    async with running_plane(state) as config:
        with pytest.raises(CliError, match="UNAUTHENTICATED"):
            await fetch_syncz(f"unix:{config.ca_socket}", old)
        assert await fetch_syncz(f"unix:{config.ca_socket}", load_credentials(state)) == []
    shutil.rmtree(state.parent)


def test_no_control_plane_is_a_clear_error() -> None:
    state = Path(tempfile.mkdtemp(prefix="kps-"))
    config = plane.ControlPlaneConfig(state_dir=state)
    proc = ketch(config, "proxy-status", "--state-dir", str(state))
    assert proc.returncode == 1
    assert "no " in proc.stderr
    assert "--xds" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_stopped_plane_or_wrong_address_is_a_clear_error() -> None:
    async with running_plane() as config:
        state = str(config.state_dir)
        # a TCP address where nothing listens (the credentials are there)
        proc = await asyncio.to_thread(
            ketch, config, "proxy-status", "--state-dir", state, "--xds-address", "127.0.0.1:1"
        )
        assert proc.returncode == 1
        assert "cannot reach the control plane's xDS server at 127.0.0.1:1" in proc.stderr
        assert "Traceback" not in proc.stderr
    # the plane stopped: its socket is gone
    proc = await asyncio.to_thread(ketch, config, "proxy-status", "--state-dir", state)
    assert proc.returncode == 1
    assert "the control plane is not running here" in proc.stderr


def test_render_is_a_table_with_a_column_per_type() -> None:
    from envoy.service.status.v3 import csds_pb2

    c = csds_pb2.ClientConfig()
    c.node.id = "ztunnel~10.0.0.1~z.istio-system~istio-system.svc.cluster.local"
    c.node.metadata.update(
        {"KETCH_NODE": "n1", "KETCH_CONNECTED_SINCE": "2026-01-02T03:04:05+00:00"}
    )
    a = c.generic_xds_configs.add(type_url="type.googleapis.com/istio.workload.Address")
    a.config_status = csds_pb2.ConfigStatus.Value("ERROR")
    a.version_info = "7"
    a.error_state.details = "w1: bad"
    lines = render(rows([c]))
    assert lines[1].split() == ["n1", "ERROR", "NOT_SENT", "2026-01-02", "03:04:05", "7"]
    assert rows([c])[0]["types"]["type.googleapis.com/istio.workload.Address"]["error"] == "w1: bad"


async def test_sotw_syncz_as_istioctl_asks_it() -> None:
    """istioctl proxy-status sends a SotW DiscoveryRequest for syncz on
    StreamAggregatedResources; the admin gets istiod's answer, other types are refused."""
    import grpc
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from envoy.service.status.v3 import csds_pb2

    async with running_plane() as config:
        proxy = Proxy(config, "node-a")
        creds = load_credentials(config.state_dir)
        channel = grpc.aio.secure_channel(
            f"unix:{config.ca_socket}",
            grpc.ssl_channel_credentials(creds.trust_bundle, creds.key, creds.cert_chain),
            options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
        )
        try:
            await proxy.start()
            await proxy.until(proxy.client.ready)
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call: Any = stub.StreamAggregatedResources()
            await call.write(discovery_pb2.DiscoveryRequest(type_url="istio.io/debug/syncz"))
            response = await asyncio.wait_for(call.read(), 5)
            assert response.type_url == "istio.io/debug/syncz"
            [packed] = response.resources
            config_ = csds_pb2.ClientConfig()
            assert packed.Unpack(config_)
            assert config_.node.metadata.fields["KETCH_NODE"].string_value == "node-a"
            assert {
                csds_pb2.ConfigStatus.Name(g.config_status) for g in config_.generic_xds_configs
            } == {"SYNCED"}
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url="istio.io/debug/syncz", response_nonce=response.nonce
                )
            )  # an ACK: no answer
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    type_url="type.googleapis.com/istio.workload.Address"
                )
            )
            assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.INVALID_ARGUMENT
            assert "serves only istio.io/debug/syncz" in await call.details()

            node_creds = grpc.ssl_channel_credentials(creds.trust_bundle, *proxy.credentials)
            node_channel = grpc.aio.secure_channel(
                f"unix:{config.ca_socket}",
                node_creds,
                options=[("grpc.ssl_target_name_override", "ketch-control-plane")],
            )
            refused: Any = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
                node_channel
            ).StreamAggregatedResources()
            # refused on opening, before any request (a write could race the abort)
            assert await asyncio.wait_for(refused.code(), 5) == grpc.StatusCode.PERMISSION_DENIED
            await node_channel.close(None)
        finally:
            await proxy.close()
            await channel.close(None)


def test_node_token_create_xds_and_revoke() -> None:
    """`ketch node token create --xds` prints a reusable xDS token for the node (valid for
    the plane's token store), `ketch node revoke` ends it; TTL bounds are errors."""
    from ketch.identity.errors import TokenError

    state = Path(tempfile.mkdtemp(prefix="kps-"))
    try:
        config = plane.ControlPlaneConfig(state_dir=state)
        proc = ketch(
            config, "node", "token", "create", "node-x", "--xds", "--state-dir", str(state)
        )
        assert proc.returncode == 0, proc.stderr
        token = proc.stdout.strip()
        assert token.startswith("ketch-xds-")
        tokens = plane.token_store(state)
        assert tokens.xds_token_node(token) == "node-x"
        assert tokens.xds_token_node(token) == "node-x"  # reusable
        too_long = ketch(
            config,
            "node",
            "token",
            "create",
            "n",
            "--xds",
            "--ttl",
            "400d",
            "--state-dir",
            str(state),
        )
        assert too_long.returncode == 1
        assert "outside 1s..365 days" in too_long.stderr
        proc = ketch(config, "node", "revoke", "node-x", "--state-dir", str(state))
        assert proc.returncode == 0, proc.stderr
        with pytest.raises(TokenError, match="unknown or revoked"):
            tokens.xds_token_node(token)
    finally:
        shutil.rmtree(state, ignore_errors=True)
