"""Node authorization for CreateCertificate, as pure functions (no I/O, no grpc).

A node proxy may get:
- a workload certificate for an identity in our trust domain whose service account runs in a
  pod scheduled on that node (Istio's "ImpersonatedIdentity"), or
- without impersonation, a renewal of its own node certificate;
and only while its node certificate is the one recorded at its last join/renewal (not revoked,
not replaced) and its Node still exists.

`node_from_cert` reads who is calling from the verified client certificate; `authorize_csr`
decides from that, the request metadata and the facts the service reads from the token store
and node directory just before (`cert_revoked`, `node_exists`, `pods_on_node`). The checks run
in a fixed order, so the first failing one names the refusal:

1. caller's trust domain is ours                    else UNAUTHENTICATED
2. caller's certificate is current (not revoked)     else UNAUTHENTICATED
3. caller's Node exists                              else PERMISSION_DENIED
4. metadata is well formed (ImpersonatedIdentity)    else INVALID_ARGUMENT
5. no impersonation: the caller's own node identity  (renewal)
6. requested identity is in our trust domain         else PERMISSION_DENIED
7. a pod with its (namespace, service account) runs on the caller's node
                                                     else PERMISSION_DENIED
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from cryptography import x509

from ketch.identity.errors import BadRequest, IdentityError, PermissionDenied, Unauthenticated
from ketch.identity.spiffe import InvalidSpiffeId, NodeId, SpiffeId
from ketch.identity.validate import parse_metadata


@dataclass(frozen=True)
class Decision:
    """The outcome: `identity` to sign, or `error` (with the reason) to answer."""

    identity: SpiffeId | NodeId | None
    error: IdentityError | None
    caller: NodeId | None  # set once the caller passed the node checks (1-3), for logs

    @property
    def allowed(self) -> bool:
        return self.error is None

    @property
    def reason(self) -> str:
        if self.error is not None:
            return str(self.error)
        if isinstance(self.identity, NodeId):
            return f"node {self.identity.node_name} renews its own certificate"
        assert self.identity is not None
        assert self.caller is not None
        return (
            f"node {self.caller.node_name} runs a pod with service account "
            f"{self.identity.namespace}/{self.identity.service_account}"
        )

    def identity_or_raise(self) -> SpiffeId | NodeId:
        if self.error is not None:
            raise self.error
        assert self.identity is not None
        return self.identity


def node_from_cert(cert_pem: bytes | None) -> tuple[NodeId, int]:
    """(node identity, serial) of the caller's client certificate, which gRPC has already
    checked chains to our trust bundle; Unauthenticated unless it is a node certificate."""
    if not cert_pem:
        raise Unauthenticated(
            "no client certificate: join the node first (it gets a node certificate) and "
            "call the certificate service with it over mTLS"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise Unauthenticated(f"client certificate unusable: {exc}") from exc
    if len(uris) != 1:
        raise Unauthenticated("client certificate must carry exactly one node URI SAN")
    try:
        node = NodeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise Unauthenticated(f"client certificate is not a node certificate: {exc}") from exc
    return node, cert.serial_number


def authorize_csr(
    caller: NodeId,
    metadata: Mapping[str, object],
    trust_domain: str,
    *,
    cert_revoked: bool,
    node_exists: bool,
    pods_on_node: Container[tuple[str, str]],
) -> Decision:
    """May `caller` get the identity `metadata` asks for? See the module docstring.

    `cert_revoked`: the caller's certificate serial is not recorded as current for its node.
    `pods_on_node`: (namespace, service account) of the live pods scheduled on the caller's
    node (any container; the service passes a view that asks the directory per lookup).
    """
    refusal: IdentityError | None = None
    if caller.trust_domain != trust_domain:
        refusal = Unauthenticated(f"node {caller.uri} is not in trust domain {trust_domain!r}")
    elif cert_revoked:
        refusal = Unauthenticated(
            f"node certificate of {caller.node_name} was revoked or replaced by a newer join"
        )
    elif not node_exists:
        refusal = PermissionDenied(f"node {caller.node_name} no longer exists")
    if refusal is not None:
        return Decision(identity=None, error=refusal, caller=None)
    try:
        identity = _requested_identity(caller, metadata, trust_domain, pods_on_node)
    except IdentityError as err:
        return Decision(identity=None, error=err, caller=caller)
    return Decision(identity=identity, error=None, caller=caller)


def _requested_identity(
    caller: NodeId,
    metadata: Mapping[str, object],
    trust_domain: str,
    pods_on_node: Container[tuple[str, str]],
) -> SpiffeId | NodeId:
    requested = parse_metadata(metadata)
    if requested is None:
        return caller
    try:
        sid = SpiffeId.parse(requested)
    except InvalidSpiffeId as exc:
        raise BadRequest(f"ImpersonatedIdentity: {exc}") from exc
    if sid.uri != requested:
        raise BadRequest(f"ImpersonatedIdentity {requested!r} must be a full spiffe:// URI")
    if sid.trust_domain != trust_domain:
        raise PermissionDenied(
            f"{sid.uri} is in trust domain {sid.trust_domain!r}; this CA signs only {trust_domain!r}"
        )
    if (sid.namespace, sid.service_account) not in pods_on_node:
        raise PermissionDenied(
            f"node {caller.node_name} runs no pod with service account "
            f"{sid.namespace}/{sid.service_account}"
        )
    return sid
