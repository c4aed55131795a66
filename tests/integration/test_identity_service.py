"""The certificate service over real gRPC + TLS (loopback TCP and a unix socket).

Nodes join with bootstrap tokens, then ask for workload certificates with mTLS; every
refusal is checked for its gRPC status. Issued chains are verified with `cryptography` and
the real `openssl verify`.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from google.protobuf import struct_pb2

from ketch.identity.ca import CertificateAuthority
from ketch.identity.client import GrpcCaClient, NodeCredentials, join_node
from ketch.identity.csr import generate_key_and_csr
from ketch.identity.directory import InMemoryNodeDirectory
from ketch.identity.errors import PermissionDenied, TokenError, Unauthenticated
from ketch.identity.server import RunningCa, serve_ca
from ketch.identity.spiffe import NodeId, SpiffeId
from ketch.identity.tokens import TokenStore
from ketch.proto.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from tests.prereq import needs_tool

TD = "cluster.local"
POD_A = SpiffeId(TD, "shop", "cart")
POD_B = SpiffeId(TD, "shop", "payments")


@dataclass
class Env:
    ca: CertificateAuthority
    directory: InMemoryNodeDirectory
    tokens: TokenStore
    running: RunningCa
    tmp: Path

    async def join(self, node: str) -> NodeCredentials:
        token = self.tokens.create(node, timedelta(minutes=5))
        return await join_node(self.running.join_target, self.ca.root_pem, token, node)

    def client(self, creds: NodeCredentials, *, unix: bool = True) -> GrpcCaClient:
        target = self.running.target if unix else str(self.running.address)
        return GrpcCaClient(
            target, creds.trust_bundle_pem, creds.issued.key_pem, creds.issued.chain_bytes
        )


@pytest.fixture
def tmp() -> Iterator[Path]:
    # Short path: unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="kid-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def env(tmp: Path) -> AsyncIterator[Env]:
    ca = CertificateAuthority.create(TD, tmp / "state")
    directory = InMemoryNodeDirectory()
    for node in ("node-a", "node-b"):
        directory.add_node(node)
    directory.add_pod("node-a", "shop", "cart-1", "cart")
    directory.add_pod("node-b", "shop", "payments-1", "payments")
    tokens = TokenStore.in_state_dir(tmp / "state")
    running = await serve_ca(
        ca,
        directory,
        tokens,
        address="127.0.0.1:0",
        unix_path=tmp / "ca.sock",
        join_address="127.0.0.1:0",
        join_unix_path=tmp / "join.sock",
    )
    try:
        yield Env(ca, directory, tokens, running, tmp)
    finally:
        await running.stop(None)


def _verify(root_pem: bytes, chain: list[bytes], expected_uri: str) -> x509.Certificate:
    leaf = x509.load_pem_x509_certificate(chain[0])
    store = Store([x509.load_pem_x509_certificate(root_pem)])
    PolicyBuilder().store(store).build_client_verifier().verify(
        leaf, [x509.load_pem_x509_certificate(c) for c in chain[1:]]
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(expected_uri)]
    return leaf


def _openssl_verify(tmp: Path, root_pem: bytes, leaf_pem: bytes) -> None:
    (tmp / "root.pem").write_bytes(root_pem)
    (tmp / "leaf.pem").write_bytes(leaf_pem)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", "root.pem", "-purpose", "sslserver", "leaf.pem"],
        cwd=tmp,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def _raw_create(
    target: str, creds: NodeCredentials | None, env: Env, request: ca_pb2.IstioCertificateRequest
) -> ca_pb2.IstioCertificateResponse:
    if creds is None:
        cc = grpc.ssl_channel_credentials(env.ca.root_pem)
    else:
        cc = grpc.ssl_channel_credentials(
            env.ca.root_pem, creds.issued.key_pem, creds.issued.chain_bytes
        )
    options = [("grpc.ssl_target_name_override", "ketch-control-plane")]
    async with grpc.aio.secure_channel(target, cc, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        return await stub.CreateCertificate(request, timeout=10)


def _request(csr: bytes | str, identity: str | None, **meta: str) -> ca_pb2.IstioCertificateRequest:
    metadata = struct_pb2.Struct()
    if identity is not None:
        metadata.update({"ImpersonatedIdentity": identity})
    metadata.update(meta)
    text = csr.decode() if isinstance(csr, bytes) else csr
    return ca_pb2.IstioCertificateRequest(csr=text, validity_duration=600, metadata=metadata)


@needs_tool("openssl")  # _openssl_verify
async def test_node_gets_cert_for_its_own_pod(env: Env) -> None:
    creds = await env.join("node-a")
    assert creds.trust_bundle == env.ca.trust_bundle
    _verify(env.ca.root_pem, creds.issued.chain_pem, "spiffe://cluster.local/ketch/node/node-a")
    for unix in (True, False):
        client = env.client(creds, unix=unix)
        try:
            _key, csr = generate_key_and_csr(POD_A.uri)
            before = datetime.now(UTC)
            chain = await client.sign(csr, POD_A, timedelta(seconds=600))
        finally:
            await client.close()
        leaf = _verify(env.ca.root_pem, chain, POD_A.uri)
        assert chain[-1] == env.ca.root_pem
        lifetime = leaf.not_valid_after_utc - before
        assert timedelta(seconds=598) <= lifetime <= timedelta(seconds=601)
        _openssl_verify(env.tmp, env.ca.root_pem, chain[0])


async def test_node_cannot_get_other_nodes_pod(env: Env) -> None:
    creds = await env.join("node-a")
    _k, csr = generate_key_and_csr(POD_B.uri)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, creds, env, _request(csr, POD_B.uri))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node-a runs no pod" in (info.value.details() or "")


async def test_wrong_trust_domain_and_mismatched_csr(env: Env) -> None:
    creds = await env.join("node-a")
    foreign = "spiffe://evil.example/ns/shop/sa/cart"
    _k, csr = generate_key_and_csr(foreign)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, creds, env, _request(csr, foreign))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _k, csr_b = generate_key_and_csr(POD_B.uri)  # CSR for B, metadata says A
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, creds, env, _request(csr_b, POD_A.uri))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unjoined_clients_are_refused(env: Env) -> None:
    _k, csr = generate_key_and_csr(POD_A.uri)
    # No client certificate on the mTLS listener: the TLS handshake itself fails.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, None, env, _request(csr, POD_A.uri))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # On the join listener (server-auth only) CreateCertificate is refused.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.join_target, None, env, _request(csr, POD_A.uri))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A certificate from another CA does not pass the handshake.
    stranger = CertificateAuthority.create(TD).issue_node("node-a")
    fake = NodeCredentials(NodeId(TD, "node-a"), stranger, [env.ca.root_pem])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, fake, env, _request(csr, POD_A.uri))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # A workload certificate from our own CA is not a node certificate.
    workload = env.ca.issue_workload(POD_A)
    fake = NodeCredentials(NodeId(TD, "node-a"), workload, [env.ca.root_pem])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, fake, env, _request(csr, POD_A.uri))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A node certificate signed by our CA but never joined (no recorded serial).
    fake = NodeCredentials(NodeId(TD, "node-a"), env.ca.issue_node("node-a"), [env.ca.root_pem])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _raw_create(env.running.target, fake, env, _request(csr, POD_A.uri))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_reused_and_foreign_tokens_are_refused(env: Env) -> None:
    clock = [time.time()]
    env.tokens._clock = lambda: clock[0]
    target, root = env.running.join_target, env.ca.root_pem
    expired = env.tokens.create("node-a", timedelta(seconds=5))
    clock[0] += 6
    with pytest.raises(TokenError, match="expired"):
        await join_node(target, root, expired, "node-a")
    token = env.tokens.create("node-a", timedelta(minutes=1))
    await join_node(target, root, token, "node-a")
    with pytest.raises(TokenError, match="already used"):
        await join_node(target, root, token, "node-a")
    other = env.tokens.create("node-b", timedelta(minutes=1))
    with pytest.raises(TokenError, match="created for node 'node-b'"):
        await join_node(target, root, other, "node-a")
    with pytest.raises(TokenError):
        await join_node(target, root, "ketch-node-guess", "node-a")


async def test_removed_or_revoked_node_stops_signing_at_once(env: Env) -> None:
    creds = await env.join("node-a")
    client = env.client(creds)
    try:
        _k, csr = generate_key_and_csr(POD_A.uri)
        await client.sign(csr, POD_A, None)
        env.directory.remove_node("node-a")
        with pytest.raises(PermissionDenied, match="no longer exists"):
            await client.sign(csr, POD_A, None)
        env.directory.add_node("node-a")
        await client.sign(csr, POD_A, None)
        env.tokens.revoke("node-a")
        with pytest.raises(Unauthenticated, match="revoked"):
            await client.sign(csr, POD_A, None)
        # The pod moves away: refused.
        again = await env.join("node-a")
        env.directory.remove_pod("shop", "cart-1")
        client2 = env.client(again)
        try:
            with pytest.raises(PermissionDenied, match="runs no pod"):
                await client2.sign(csr, POD_A, None)
        finally:
            await client2.close()
    finally:
        await client.close()


async def test_node_renews_its_own_certificate(env: Env) -> None:
    creds = await env.join("node-a")
    client = env.client(creds)
    try:
        key, csr = generate_key_and_csr("spiffe://cluster.local/ketch/node/node-a")
        chain = await client.create_certificate(csr, 0, None)
    finally:
        await client.close()
    leaf = _verify(env.ca.root_pem, chain, "spiffe://cluster.local/ketch/node/node-a")
    assert env.tokens.is_current("node-a", leaf.serial_number)
    assert key


async def test_hostile_requests_get_clear_errors_and_others_are_served(env: Env) -> None:
    creds = await env.join("node-a")
    target = env.running.target
    _k, good_csr = generate_key_and_csr(POD_A.uri)
    cases: list[tuple[ca_pb2.IstioCertificateRequest, grpc.StatusCode, str]] = [
        (_request("not a csr", POD_A.uri), grpc.StatusCode.INVALID_ARGUMENT, "PEM"),
        (
            _request(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                POD_A.uri,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "PKCS#10",
        ),
        (_request("A" * 20_000, POD_A.uri), grpc.StatusCode.INVALID_ARGUMENT, "limit"),
        (_request("A" * 200_000, POD_A.uri), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        (_request(good_csr, POD_A.uri, Extra="x"), grpc.StatusCode.INVALID_ARGUMENT, "unknown"),
        (_request(good_csr, "not-a-uri"), grpc.StatusCode.INVALID_ARGUMENT, "Impersonated"),
    ]
    for request, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _raw_create(target, creds, env, request)
        assert info.value.code() == code, info.value.details()
        assert text in (info.value.details() or "")

    cc = grpc.ssl_channel_credentials(
        env.ca.root_pem, creds.issued.key_pem, creds.issued.chain_bytes
    )
    options = [("grpc.ssl_target_name_override", "ketch-control-plane")]
    async with grpc.aio.secure_channel(target, cc, options=options) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        bad = [stub.CreateCertificate(cases[i % 3][0], timeout=30) for i in range(500)]
        client = env.client(creds, unix=False)
        try:
            results, good = await asyncio.gather(
                asyncio.gather(*bad, return_exceptions=True),
                client.sign(good_csr, POD_A, None),
            )
        finally:
            await client.close()
    codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert len([r for r in results if isinstance(r, grpc.aio.AioRpcError)]) == 500
    _verify(env.ca.root_pem, good, POD_A.uri)
    # The server is still healthy afterwards.
    await _raw_create(target, creds, env, _request(good_csr, POD_A.uri))


async def test_token_state_is_durable_and_private(env: Env) -> None:
    token = env.tokens.create("node-b", timedelta(minutes=5))
    path = env.tmp / "state" / "nodes.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert token not in path.read_text()
    reloaded = TokenStore.in_state_dir(env.tmp / "state")
    reloaded.redeem(token, "node-b")
    with pytest.raises(TokenError):
        TokenStore.in_state_dir(env.tmp / "state").redeem(token, "node-b")
