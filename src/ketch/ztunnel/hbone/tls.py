"""TLS for HBONE: contexts built from a workload certificate, and SPIFFE peer checks.

HBONE is TLS 1.3 only, ALPN `h2`, no SNI, no session resumption, client certificates
required (REFERENCE.md "HBONE"). X.509 chain validation is OpenSSL's; host-name checking is
off and replaced by SPIFFE checks after the handshake:
- the client requires one of the server's URI SANs to be an expected identity
  (`verify_server`);
- the server requires the client to be in its own trust domain (`verify_client`).

Cipher suites: REFERENCE.md pins TLS_AES_256_GCM_SHA384 and TLS_AES_128_GCM_SHA256.
Python's `ssl` module cannot restrict TLS 1.3 suites (`set_ciphers` only affects TLS <= 1.2
and there is no binding for SSL_CTX_set_ciphersuites), so OpenSSL's default TLS 1.3 list is
offered, which also contains TLS_CHACHA20_POLY1305_SHA256. Peers that offer the two pinned
suites first (Envoy, ztunnel) negotiate one of them. Operators who need the exact list can set
it in an OpenSSL configuration file (`Ciphersuites = ...` in the system_default section).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509

from ketch.identity.spiffe import InvalidSpiffeId, SpiffeId
from ketch.ztunnel.hbone.errors import (
    IdentityMismatch,
    NoPeerIdentity,
    TlsError,
    TrustDomainMismatch,
)

ALPN_H2 = "h2"


@dataclass(frozen=True)
class WorkloadCert:
    """A workload's key and certificate chain (PEM; leaf first)."""

    key_pem: bytes
    chain_pem: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.chain_pem:
            raise TlsError("workload certificate chain is empty")

    @classmethod
    def of(cls, issued: _IssuedLike) -> WorkloadCert:
        """From ketch.identity.ca.IssuedCert (or anything with key_pem and chain_pem)."""
        return cls(issued.key_pem, tuple(issued.chain_pem))


class _IssuedLike(Protocol):
    @property
    def key_pem(self) -> bytes: ...
    @property
    def chain_pem(self) -> Sequence[bytes]: ...


def _base_context(cert: WorkloadCert, roots: Sequence[bytes], server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # replaced by the SPIFFE identity checks below
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN_H2])
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    if server:
        ctx.num_tickets = 0  # TLS 1.3: send no session tickets, so no resumption
    if not roots:
        raise TlsError("empty trust bundle: no root certificates to verify HBONE peers against")
    try:
        ctx.load_verify_locations(cadata=b"".join(roots).decode("ascii"))
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(f"cannot load the HBONE trust bundle: {e}") from e
    _load_cert_chain(ctx, cert)
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert: WorkloadCert) -> None:
    # ssl only loads keys from files: use an anonymous in-memory file so the private key
    # never touches a file system.
    fd = os.memfd_create("ketch-hbone-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, b"".join(cert.chain_pem) + b"\n" + cert.key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    except (ssl.SSLError, OSError) as e:
        raise TlsError(f"cannot load the workload certificate/key: {e}") from e
    finally:
        os.close(fd)


def client_context(cert: WorkloadCert, roots: Sequence[bytes]) -> ssl.SSLContext:
    """Context for dialling HBONE (use with server_hostname='' so no SNI is sent)."""
    return _base_context(cert, roots, server=False)


def server_context(cert: WorkloadCert, roots: Sequence[bytes]) -> ssl.SSLContext:
    """Context for the 15008 listener: client certificates are required."""
    return _base_context(cert, roots, server=True)


def peer_identities(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[SpiffeId, ...]:
    """All SPIFFE URI SANs of the peer's leaf certificate, in certificate order."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise NoPeerIdentity("HBONE peer presented no certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as e:
        raise NoPeerIdentity("HBONE peer certificate has no subjectAltName extension") from e
    except ValueError as e:
        raise NoPeerIdentity(f"HBONE peer certificate cannot be parsed: {e}") from e
    ids = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            try:
                ids.append(SpiffeId.parse(uri))
            except InvalidSpiffeId:
                continue
    return tuple(ids)


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    """The peer's identity: the first SPIFFE URI SAN of its certificate."""
    ids = peer_identities(ssl_object)
    if not ids:
        raise NoPeerIdentity(
            "HBONE peer certificate has no spiffe:// URI SAN; is it a mesh workload certificate?"
        )
    return ids[0]


def check_alpn(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    proto = ssl_object.selected_alpn_protocol()
    if proto != ALPN_H2:
        raise TlsError(f"HBONE peer negotiated ALPN {proto!r}, need 'h2'")


def verify_server(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: Sequence[SpiffeId]
) -> SpiffeId:
    """Client side: one of the server's URI SANs must be an expected identity."""
    check_alpn(ssl_object)
    actual = peer_identities(ssl_object)
    for ident in actual:
        if ident in expected:
            return ident
    raise IdentityMismatch(tuple(expected), actual)


def verify_client(ssl_object: ssl.SSLObject | ssl.SSLSocket, trust_domain: str) -> SpiffeId:
    """Server side: the client must be a workload of our trust domain."""
    check_alpn(ssl_object)
    ident = peer_identity(ssl_object)
    if ident.trust_domain != trust_domain:
        raise TrustDomainMismatch(trust_domain, ident)
    return ident
