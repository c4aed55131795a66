"""Node-side clients of the certificate service.

`CaClient` (in `local.py`, with `InProcessCaClient` for standalone mode and tests) is what
the certificate manager needs: sign a CSR for an identity. `GrpcCaClient` implements it
over mTLS with the node certificate to the control plane's service, what a node proxy
joined to a control plane uses; `join_node` trades a bootstrap token for the node
certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.protobuf import struct_pb2

from ketch.identity.ca import IssuedCert
from ketch.identity.csr import generate_key_and_csr
from ketch.identity.errors import (
    BadRequest,
    CaUnavailable,
    IdentityError,
    PermissionDenied,
    TokenError,
    Unauthenticated,
)
from ketch.identity.local import CaClient, InProcessCaClient
from ketch.identity.spiffe import NodeId, SpiffeId
from ketch.identity.validate import IMPERSONATED_IDENTITY
from ketch.proto.gen.istio.v1.auth import ca_pb2, ca_pb2_grpc
from ketch.proto.gen.ketch.v1 import node_pb2, node_pb2_grpc

__all__ = ["CaClient", "GrpcCaClient", "InProcessCaClient", "NodeCredentials", "join_node"]

SERVER_NAME = "ketch-control-plane"
RPC_TIMEOUT = 10.0


_CODES: dict[grpc.StatusCode, type[IdentityError]] = {
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
}


def translate_rpc_error(err: grpc.aio.AioRpcError, target: str) -> IdentityError:
    cls = _CODES.get(err.code(), CaUnavailable)
    detail = err.details() or err.code().name
    if cls is CaUnavailable:
        return CaUnavailable(
            f"certificate service at {target} failed ({err.code().name}): {detail}; "
            "is the control plane running and reachable from this node?"
        )
    return cls(f"certificate service refused: {detail}")


def _channel(
    target: str, creds: grpc.ChannelCredentials, server_name: str, max_reconnect_ms: int
) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(
        target,
        creds,
        options=[
            ("grpc.ssl_target_name_override", server_name),
            ("grpc.default_authority", server_name),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", max_reconnect_ms),
        ],
    )


class GrpcCaClient:
    """Calls IstioCertificateService/CreateCertificate over mTLS with the node certificate."""

    def __init__(
        self,
        target: str,
        trust_bundle_pem: bytes,
        node_key_pem: bytes,
        node_chain_pem: bytes,
        *,
        server_name: str = SERVER_NAME,
        timeout: float = RPC_TIMEOUT,
        max_reconnect_ms: int = 5000,
    ) -> None:
        self.target = target
        self._timeout = timeout
        creds = grpc.ssl_channel_credentials(trust_bundle_pem, node_key_pem, node_chain_pem)
        self._channel = _channel(target, creds, server_name, max_reconnect_ms)
        self._stub = ca_pb2_grpc.IstioCertificateServiceStub(self._channel)

    async def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None) -> list[bytes]:
        metadata = struct_pb2.Struct()
        metadata.update({IMPERSONATED_IDENTITY: identity.uri})
        return await self.create_certificate(
            csr_pem, int(ttl.total_seconds()) if ttl else 0, metadata
        )

    async def create_certificate(
        self, csr_pem: bytes, validity_seconds: int, metadata: struct_pb2.Struct | None
    ) -> list[bytes]:
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode("ascii", "replace"), validity_duration=validity_seconds
        )
        if metadata is not None:
            request.metadata.CopyFrom(metadata)
        try:
            response = await self._stub.CreateCertificate(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            raise translate_rpc_error(err, self.target) from err
        return [c.encode() for c in response.cert_chain]

    async def close(self) -> None:
        await self._channel.close(None)


@dataclass(frozen=True)
class NodeCredentials:
    """What a node keeps after joining: its key, certificate chain and the trust bundle."""

    node: NodeId
    issued: IssuedCert
    trust_bundle: list[bytes]

    @property
    def trust_bundle_pem(self) -> bytes:
        return b"".join(self.trust_bundle)


async def join_node(
    target: str,
    ca_root_pem: bytes,
    token: str,
    node_name: str,
    *,
    trust_domain: str = "cluster.local",
    server_name: str = SERVER_NAME,
    rpc_timeout: float = RPC_TIMEOUT,
) -> NodeCredentials:
    """Join via the server-auth-only listener: the node key is generated here and stays here."""
    node = NodeId(trust_domain, node_name)
    key_pem, csr_pem = generate_key_and_csr(node.uri)
    creds = grpc.ssl_channel_credentials(ca_root_pem)
    async with _channel(target, creds, server_name, 5000) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        request = node_pb2.JoinRequest(token=token, node_name=node_name, csr=csr_pem.decode())
        try:
            response = await stub.Join(request, timeout=rpc_timeout)
        except grpc.aio.AioRpcError as err:
            translated = translate_rpc_error(err, target)
            if isinstance(translated, Unauthenticated):
                raise TokenError(str(translated)) from err
            raise translated from err
    chain = [c.encode() for c in response.cert_chain]
    return NodeCredentials(
        node=node,
        issued=IssuedCert(key_pem=key_pem, chain_pem=chain),
        trust_bundle=[c.encode() for c in response.trust_bundle],
    )
