"""The certificate service: Istio's CreateCertificate and Ketch's node Join, over gRPC+TLS.

Listeners (all on one `grpc.aio` server, served by both services):
- mTLS listeners (`address`, `unix_path`): the client must present a certificate chaining to
  the CA's trust bundle. CreateCertificate is only answered here.
- join listeners (`join_address`, `join_unix_path`): server-authenticated TLS only, for nodes
  that have no certificate yet. (grpcio cannot *request* a client certificate without
  *requiring* it, so "server-auth only for Join" needs its own listener.)

The unix socket listeners exist because node proxies run in other network namespaces.

Every request is decided by pure functions (`node_from_cert` and `authorize_csr` in
`ketch.identity.authorize`, `validate_csr` inside `CertificateAuthority.sign_csr`); this module
only does the I/O (reading the token store and node directory for `authorize_csr`) and
translates `IdentityError`s to gRPC status codes, logging every refusal once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from google.protobuf import struct_pb2

from ketch.identity.authorize import Decision, authorize_csr, node_from_cert
from ketch.identity.ca import CertificateAuthority, IssuedCert
from ketch.identity.directory import NodeDirectory, PodsOnNode
from ketch.identity.errors import IdentityError
from ketch.identity.spiffe import NodeId
from ketch.identity.tokens import TokenStore, check_node_name
from ketch.identity.validate import resolve_ttl, validate_csr
from ketch.proto.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from ketch.proto.gen.ketch.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("ketch.identity.server")

DEFAULT_NODE_CERT_TTL = timedelta(days=7)
SERVER_CERT_TTL = timedelta(days=365)
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CONCURRENT_RPCS = 2048


def metadata_to_dict(metadata: struct_pb2.Struct) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in metadata.fields.items():
        kind = value.WhichOneof("kind")
        out[key] = value.string_value if kind == "string_value" else kind
    return out


# --- gRPC services --------------------------------------------------------------------------


def _peer_cert(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    values = list(context.auth_context().get("x509_pem_cert") or [])
    return values[0] if values else None


async def _refuse(
    context: grpc.aio.ServicerContext[Any, Any], what: str, who: str, err: IdentityError
) -> None:
    log.warning("refused %s from %s (%s): %s", what, who, err.code, err)
    await context.abort(grpc.StatusCode[err.code], str(err))


class CertificateService(ca_pb2_grpc.IstioCertificateServiceServicer):
    def __init__(
        self,
        ca: CertificateAuthority,
        directory: NodeDirectory,
        tokens: TokenStore,
        node_cert_ttl: timedelta,
    ) -> None:
        self._ca = ca
        self._directory = directory
        self._tokens = tokens
        self._node_ttl = node_cert_ttl

    def _authorize(self, cert_pem: bytes | None, metadata: dict[str, object]) -> Decision:
        """Read the facts about the caller (token store, directory) and decide (pure)."""
        caller, serial = node_from_cert(cert_pem)
        return authorize_csr(
            caller,
            metadata,
            self._ca.trust_domain,
            cert_revoked=not self._tokens.is_current(caller.node_name, serial),
            node_exists=self._directory.node_exists(caller.node_name),
            pods_on_node=PodsOnNode(self._directory, caller.node_name),
        )

    async def CreateCertificate(
        self,
        request: ca_pb2.IstioCertificateRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> ca_pb2.IstioCertificateResponse:
        who = context.peer()
        try:
            metadata = metadata_to_dict(request.metadata)
            decision = await asyncio.to_thread(self._authorize, _peer_cert(context), metadata)
            if decision.caller is not None:
                who = f"node {decision.caller.node_name}"
            identity = decision.identity_or_raise()
            if isinstance(identity, NodeId):
                valid = validate_csr(request.csr, identity.uri, self._ca.policy)
                chain = self._ca.sign_node(valid.public_key, identity.node_name, self._node_ttl)
                self._tokens.record_cert(identity.node_name, _serial(chain[0]))
            else:
                ttl = resolve_ttl(
                    request.validity_duration,
                    default=self._ca.default_ttl,
                    maximum=self._ca.max_ttl,
                )
                chain = self._ca.sign_csr(request.csr, identity, ttl)
        except IdentityError as err:
            await _refuse(context, "CreateCertificate", who, err)
            raise AssertionError("unreachable") from err
        log.info("issued %s to %s", identity.uri, who)
        return ca_pb2.IstioCertificateResponse(cert_chain=[c.decode() for c in chain])


class NodeJoinService(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self, ca: CertificateAuthority, tokens: TokenStore, node_cert_ttl: timedelta
    ) -> None:
        self._ca = ca
        self._tokens = tokens
        self._node_ttl = node_cert_ttl

    async def Join(
        self, request: node_pb2.JoinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> node_pb2.JoinResponse:
        who = f"{context.peer()} claiming node {request.node_name[:80]!r}"
        try:
            check_node_name(request.node_name)
            node = NodeId(self._ca.trust_domain, request.node_name)
            # Check the CSR before burning the token, so a bad CSR does not cost a token.
            valid = validate_csr(request.csr, node.uri, self._ca.policy)
            await asyncio.to_thread(self._tokens.redeem, request.token, request.node_name)
            chain = self._ca.sign_node(valid.public_key, node.node_name, self._node_ttl)
            await asyncio.to_thread(self._tokens.replace_certs, node.node_name, _serial(chain[0]))
        except IdentityError as err:
            await _refuse(context, "Join", who, err)
            raise AssertionError("unreachable") from err
        log.info("node %s joined", node.node_name)
        return node_pb2.JoinResponse(
            cert_chain=[c.decode() for c in chain],
            trust_bundle=[c.decode() for c in self._ca.trust_bundle],
        )


def _serial(cert_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(cert_pem).serial_number


# --- runner ---------------------------------------------------------------------------------


@dataclass
class RunningCa:
    """A started certificate service. Addresses are the bound ones (port 0 resolved)."""

    server: grpc.aio.Server
    server_cert: IssuedCert
    address: str | None = None
    join_address: str | None = None
    unix_path: Path | None = None
    join_unix_path: Path | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def target(self) -> str:
        """A gRPC target for the mTLS listener (unix socket preferred)."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        assert self.address is not None
        return self.address

    @property
    def join_target(self) -> str:
        if self.join_unix_path is not None:
            return f"unix:{self.join_unix_path}"
        assert self.join_address is not None
        return self.join_address

    async def stop(self, grace: float | None = 1.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.server.stop(grace)
        for path in (self.unix_path, self.join_unix_path):
            if path is not None:
                path.unlink(missing_ok=True)


def _prepare_unix(path: Path) -> None:
    try:
        if stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()  # stale socket from a previous run
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)


def _bind(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials) -> str:
    port = server.add_secure_port(address, creds)
    if port == 0:
        raise OSError(f"certificate service cannot listen on {address} (in use?)")
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


async def serve_ca(
    ca: CertificateAuthority,
    directory: NodeDirectory,
    tokens: TokenStore,
    *,
    address: str | None = None,
    unix_path: Path | None = None,
    join_address: str | None = None,
    join_unix_path: Path | None = None,
    node_cert_ttl: timedelta = DEFAULT_NODE_CERT_TTL,
    extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
    max_concurrent_rpcs: int = MAX_CONCURRENT_RPCS,
    extra_options: Sequence[tuple[str, int]] = (),
) -> RunningCa:
    """Start the certificate service. `address` like "127.0.0.1:15012" (port 0 = any).

    `extra_handlers` are served on the same listeners (the control plane's delta ADS, as
    istiod serves certificates and xDS on 15012); the limits and options then cover both."""
    if address is None and unix_path is None:
        raise ValueError("serve_ca needs an address or a unix_path for the mTLS listener")
    server_cert = ca.issue_server(ttl=SERVER_CERT_TTL)
    pair = [(server_cert.key_pem, server_cert.chain_bytes)]
    mtls = grpc.ssl_server_credentials(
        pair, root_certificates=ca.trust_bundle_pem, require_client_auth=True
    )
    tls = grpc.ssl_server_credentials(pair)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_receive_bytes),
            *([] if extra_handlers else [("grpc.max_send_message_length", 1024 * 1024)]),
            ("grpc.so_reuseport", 0),
            *extra_options,
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    if extra_handlers:
        server.add_generic_rpc_handlers(tuple(extra_handlers))
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(
        CertificateService(ca, directory, tokens, node_cert_ttl), server
    )
    node_pb2_grpc.add_NodeServiceServicer_to_server(
        NodeJoinService(ca, tokens, node_cert_ttl), server
    )
    running = RunningCa(server=server, server_cert=server_cert)
    if address is not None:
        running.address = _bind(server, address, mtls)
    if join_address is not None:
        running.join_address = _bind(server, join_address, tls)
    for attr, path, creds in (
        ("unix_path", unix_path, mtls),
        ("join_unix_path", join_unix_path, tls),
    ):
        if path is not None:
            path = Path(path)
            _prepare_unix(path)
            _bind(server, f"unix:{path}", creds)
            setattr(running, attr, path)
    await server.start()
    for path in (running.unix_path, running.join_unix_path):
        if path is not None:
            os.chmod(path, 0o666)  # node proxies authenticate with TLS, not file modes
    log.info(
        "certificate service for %s listening: mTLS %s, join %s",
        ca.trust_domain,
        ", ".join(str(a) for a in (running.address, running.unix_path) if a) or "-",
        ", ".join(str(a) for a in (running.join_address, running.join_unix_path) if a) or "-",
    )
    return running
