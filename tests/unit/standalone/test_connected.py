"""`ketch ztunnel run --control-plane`: join with a token, state over xDS, certificates from
the control plane's certificate service, readiness held until synced.

The control plane here is one in-process grpc.aio server with Ketch's certificate and join
services and a fake ADS (tests/unit/ztunnel/fake_ads.py: the real `ketch.xds` ServerStream
over real istio protos), on `ca.sock` (mTLS) and `join.sock` (server TLS) as the real one
lays them out. The proxy uses the real `ketch.xds` ClientStream and conversion.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from ketch.identity.ca import CertificateAuthority
from ketch.identity.directory import InMemoryNodeDirectory
from ketch.identity.server import CertificateService, NodeJoinService
from ketch.identity.spiffe import SpiffeId
from ketch.identity.tokens import TokenStore
from ketch.mesh import Action, Authorization, Scope, Workload
from ketch.proto.gen.istio.v1.auth import ca_pb2_grpc
from ketch.proto.gen.ketch.v1 import node_pb2_grpc
from ketch.standalone import connected
from ketch.standalone.config import ConfigError
from ketch.standalone.connected import NodeFiles, NodeSession
from ketch.standalone.pods import parse_pods
from ketch.standalone.run import StandaloneError, StandaloneOptions, StandaloneProxy
from ketch.xds import parse_node
from tests.unit.ztunnel.fake_ads import FakeAds
from tests.unit.ztunnel.test_xds_client import eventually

W1 = Workload(
    uid="Kubernetes//Pod/default/a",
    name="a",
    namespace="default",
    addresses=(ip_address("10.0.0.1"),),
    service_account="cart",
)
P1 = Authorization(name="deny", namespace="default", scope=Scope.NAMESPACE, action=Action.DENY)


@dataclass
class ControlPlane:
    dir: Path
    ca: CertificateAuthority
    tokens: TokenStore
    fake: FakeAds
    server: Any = None

    @property
    def target(self) -> str:
        return f"unix:{self.dir / 'ca.sock'}"

    async def start(self) -> None:
        directory = InMemoryNodeDirectory()
        directory.add_node("node-1")
        directory.add_pod("node-1", "default", "a", "cart")
        cert = self.ca.issue_server()
        pair = [(cert.key_pem, cert.chain_bytes)]
        server = grpc.aio.server()
        ttl = timedelta(hours=1)
        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(
            CertificateService(self.ca, directory, self.tokens, ttl), server
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeJoinService(self.ca, self.tokens, ttl), server
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.fake, server)
        mtls = grpc.ssl_server_credentials(
            pair, root_certificates=self.ca.trust_bundle_pem, require_client_auth=True
        )
        server.add_secure_port(self.target, mtls)
        server.add_secure_port(f"unix:{self.dir / 'join.sock'}", grpc.ssl_server_credentials(pair))
        (self.dir / "trust-bundle.pem").write_bytes(self.ca.trust_bundle_pem)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kcp-"))  # unix socket paths are short
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def cp(tmp: Path) -> AsyncIterator[ControlPlane]:
    ca = CertificateAuthority.create("cluster.local", tmp / "state")
    plane = ControlPlane(
        tmp, ca, TokenStore.in_state_dir(tmp / "state"), FakeAds({W1: "1", P1: "1"})
    )
    yield plane
    await plane.stop()


def options(cp: ControlPlane, **kw: Any) -> StandaloneOptions:
    return StandaloneOptions(
        node="node-1",
        control_plane=cp.target,
        node_dir=cp.dir / "node",
        metrics=None,
        readiness=None,
        admin=None,
        **kw,
    )


async def test_join_sync_and_workload_certificates(cp: ControlPlane) -> None:
    await cp.start()
    token = cp.tokens.create("node-1")
    p = StandaloneProxy(options(cp, token=token))
    try:
        await p.start()
        # joined once: the node's key stays in its directory, private
        key = cp.dir / "node" / connected.KEY_FILE
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        await eventually(lambda: p.is_ready())
        assert p.zt is not None
        assert set(p.zt.state.workloads) == {W1.uid}
        assert set(p.zt.state.policies) == {P1.key}
        dump = p.config_dump()
        assert dump["xds"]["synced"] is True
        assert dump["xds"]["nacks"] == 0
        # pod certificates come from the control plane's certificate service (no CA here)
        assert p._manager is not None
        cert = await p._manager.fetch(SpiffeId("cluster.local", "default", "cart"))
        assert cert.chain_pems[-1] == cp.ca.root_pem

        # the node certificate is renewed: new key on disk, the control plane's current
        # serial, and both the certificate client and the xDS stream use it from then on
        assert p.node_session is not None
        assert p.xds is not None
        old = p.node_session.files
        old_creds = p.xds.credentials
        new = await p.node_session.renew()
        assert NodeFiles.read(cp.dir / "node") == new
        assert new.key_pem != old.key_pem
        assert cp.tokens.is_current("node-1", new.leaf.serial_number)
        assert p.xds.credentials is not old_creds
        cert = await p._manager.fetch(SpiffeId("cluster.local", "default", "cart"))
        assert cert.chain_pems[-1] == cp.ca.root_pem
        firsts = len([r for r in cp.fake.requests if not r.response_nonce])
        cp.fake.end_streams()
        await eventually(
            lambda: len([r for r in cp.fake.requests if not r.response_nonce]) == firsts + 2
        )
        await eventually(lambda: p.xds is not None and p.xds.connected)
    finally:
        await p.close()
    # a second start reuses the node certificate: the one-time token is spent
    p2 = StandaloneProxy(options(cp, token=token))
    try:
        await p2.start()
        await eventually(lambda: p2.is_ready())
    finally:
        await p2.close()


async def test_readiness_held_until_synced(cp: ControlPlane) -> None:
    NodeFiles(
        (issued := cp.ca.issue_node("node-1")).key_pem,
        issued.chain_bytes,
        cp.ca.trust_bundle_pem,
    ).write(cp.dir / "node")
    p = StandaloneProxy(options(cp))
    try:
        await p.start()  # the control plane is not up yet: start does not wait for it
        assert p.pending() == ["state manager"]
        assert p.config_dump()["xds"]["connected"] is False
        await cp.start()
        await eventually(lambda: p.is_ready())
        assert p.pending() == []
    finally:
        await p.close()


async def test_no_node_certificate_and_no_token_is_a_clear_error(cp: ControlPlane) -> None:
    p = StandaloneProxy(options(cp))
    with pytest.raises(StandaloneError, match="join once with --token"):
        await p.start()
    await p.close()


async def test_bad_token_is_a_clear_error(cp: ControlPlane) -> None:
    await cp.start()
    p = StandaloneProxy(options(cp, token="ketch-node-guess"))
    with pytest.raises(StandaloneError, match="joining the control plane"):
        await p.start()
    await p.close()
    assert not (cp.dir / "node" / connected.KEY_FILE).exists()


async def test_node_ip_goes_into_the_xds_node(cp: ControlPlane) -> None:
    await cp.start()
    p = StandaloneProxy(options(cp, token=cp.tokens.create("node-1"), node_ip="172.18.0.1"))
    try:
        await p.start()
        await eventually(lambda: p.is_ready())
        node = next(r for r in cp.fake.requests if r.HasField("node")).node
        assert node.id == "ztunnel~172.18.0.1~node-1.ketch-system~ketch-system.svc.cluster.local"
        assert parse_node(node).ip == "172.18.0.1"
        assert node.metadata["INSTANCE_IPS"] == "172.18.0.1"
    finally:
        await p.close()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"node": None}, "needs --node"),
        ({"node_ip": "node-1"}, "--node-ip: 'node-1' is not an IP address"),
        ({"config": Path("x.yaml")}, "replaces --config"),
    ],
)
async def test_flag_combinations(cp: ControlPlane, kw: dict[str, Any], match: str) -> None:
    opts = options(cp)
    p = StandaloneProxy(StandaloneOptions(**{**opts.__dict__, **kw}))
    with pytest.raises(StandaloneError, match=match):
        await p.start()


def test_default_join_address_and_trust_bundle_sit_next_to_ca_sock() -> None:
    assert connected.default_join_target("unix:/var/lib/ketch/ca.sock") == (
        "unix:/var/lib/ketch/join.sock"
    )
    assert connected.default_trust_bundle("/var/lib/ketch/ca.sock") == Path(
        "/var/lib/ketch/trust-bundle.pem"
    )
    assert connected.default_join_target("10.0.0.1:15012") is None
    # certificates and xDS share the control plane's listeners (istiod's 15012)
    assert connected.default_xds_target("/var/lib/ketch/ca.sock") == ("unix:/var/lib/ketch/ca.sock")
    assert connected.default_xds_target("unix:///run/k/ca.sock") == "unix:/run/k/ca.sock"
    assert connected.default_xds_target("10.0.0.1:15012") == "10.0.0.1:15012"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give --config and --ca-dir (standalone), or --control-plane"),
        (["--config", "mesh.yaml"], "give --config and --ca-dir (standalone), or --control-plane"),
    ],
)
def test_cli_needs_one_of_the_two_modes(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ketch.cli.main", "ztunnel", "run", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_node_certificate_renewal_schedule(tmp: Path) -> None:
    ca = CertificateAuthority.create("cluster.local", tmp / "state")
    issued = ca.issue_node("node-1", timedelta(hours=2))
    files = NodeFiles(issued.key_pem, issued.chain_bytes, ca.trust_bundle_pem)
    assert files.node_uri() == "spiffe://cluster.local/ketch/node/node-1"
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise asyncio.CancelledError

    start = files.leaf.not_valid_before_utc
    session = NodeSession(
        f"unix:{tmp / 'nobody.sock'}", files, tmp / "node", now=lambda: start, sleep=sleep
    )
    try:
        with pytest.raises(asyncio.CancelledError):
            await session.run()
    finally:
        await session.close()
    # first at half-life; the control plane is unreachable, so retried every RENEW_RETRY
    leaf = files.leaf
    half = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() / 2
    assert 3600 <= half < 3700  # 2 h (notBefore is backdated a little)
    assert sleeps == [half, connected.RENEW_RETRY]
    assert session.files is files


def test_file_mode_does_not_import_the_connected_mode() -> None:
    """grpc, the envoy protos and ketch.xds load only with --control-plane (start-up time)."""
    code = (
        "import sys, ketch.standalone.run, ketch.cli.ztunnel_cmd\n"
        "heavy = ('ketch.xds', 'grpc', 'envoy', 'ketch.standalone.connected')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


async def test_pods_file_stands_in_for_zds(cp: ControlPlane) -> None:
    """--pods: enrolled like file mode's pods (a missing netns is retried and holds
    readiness as `workload manager`), re-read when it changes, a bad version ignored."""
    await cp.start()
    pods = cp.dir / "pods.yaml"
    pods.write_text(f"- {{name: a, namespace: default, netns: {cp.dir / 'no-such-netns'}}}\n")
    p = StandaloneProxy(options(cp, token=cp.tokens.create("node-1"), pods=pods))
    try:
        await p.start()
        await eventually(lambda: p.xds is not None and p.xds.synced)
        assert p.pending() == ["workload manager"]
        (status,) = p.pod_status()
        assert status["uid"] == "Kubernetes//Pod/default/a"  # istiod's uid, as xDS names it
        assert status["state"] == "not_enrolled"
        assert "cannot open netns" in status["error"]

        pods.write_text("- {name: a, netns: x, bogus: 1}\n")
        assert await p.reload(force=True) is False  # rejected: the last good list is kept
        assert [s["uid"] for s in p.pod_status()] == ["Kubernetes//Pod/default/a"]

        pods.write_text("[]\n")
        assert await p.reload(force=True) is True
        assert p.pod_status() == []
        assert p.is_ready()
    finally:
        await p.close()


async def test_bad_pods_file_at_start_is_a_clear_error(cp: ControlPlane) -> None:
    pods = cp.dir / "pods.yaml"
    pods.write_text("- {name: a}\n")
    p = StandaloneProxy(options(cp, pods=pods))
    with pytest.raises(StandaloneError, match=r"--pods: .*\[0\]\.netns: required field is missing"):
        await p.start()
    await p.close()


async def test_pods_file_is_for_connected_mode(tmp: Path) -> None:
    p = StandaloneProxy(
        StandaloneOptions(config=tmp / "mesh.yaml", ca_dir=tmp / "ca", pods=tmp / "pods.yaml")
    )
    with pytest.raises(StandaloneError, match="--pods is for --control-plane"):
        await p.start()


def test_parse_pods() -> None:
    assert parse_pods("") == ()
    (a, b) = parse_pods(
        "- {name: a, netns: web-a}\n"
        "- {name: b, namespace: app, netns: /proc/1/ns/net, serviceAccount: sa, uid: u-b}\n"
    )
    assert (a.uid, a.namespace, a.service_account, a.netns_path) == (
        "Kubernetes//Pod/default/a",
        "default",
        "default",
        "/run/netns/web-a",
    )
    assert (b.uid, b.namespace, b.service_account, b.netns_path) == (
        "u-b",
        "app",
        "sa",
        "/proc/1/ns/net",
    )
    with pytest.raises(ConfigError) as e:
        parse_pods("- {name: a, netns: x}\n- {name: a, netns: y}\n- 7\n", "p.yaml")
    assert (
        e.value.problems[0] == "p.yaml: [1]: pod Kubernetes//Pod/default/a is already listed at [0]"
    )
    assert e.value.problems[1].startswith("p.yaml: [2]: ")
    with pytest.raises(ConfigError, match="expected a list of pods"):
        parse_pods("{name: a}")
