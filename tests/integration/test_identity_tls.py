"""Issued certificates work in a real TLS handshake (Python's ssl, i.e. OpenSSL), and root
rotation works: peers trusting old+new roots accept certificates from either."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from ketch.identity.ca import CertificateAuthority, IssuedCert
from ketch.identity.spiffe import SpiffeId

SERVER = SpiffeId("cluster.local", "shop", "cart")
CLIENT = SpiffeId("cluster.local", "shop", "web")


def _context(side: ssl._SSLMethod, issued: IssuedCert, bundle: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # SPIFFE: identity is the URI SAN, checked below
    ctx.load_verify_locations(cadata=bundle.decode())
    with tempfile.TemporaryDirectory(prefix="kid-") as d:
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        cert.write_bytes(issued.chain_bytes)
        key.write_bytes(issued.key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


async def _handshake(server: IssuedCert, client: IssuedCert, bundle: bytes) -> str:
    """Run one mTLS handshake on loopback; return the URI SAN the client saw."""
    sctx = _context(ssl.PROTOCOL_TLS_SERVER, server, bundle)
    cctx = _context(ssl.PROTOCOL_TLS_CLIENT, client, bundle)
    peer_uri: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        writer.write(san.value.get_values_for_type(x509.UniformResourceIdentifier)[0].encode())
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        peer_uri.append(san.value.get_values_for_type(x509.UniformResourceIdentifier)[0])
        seen_by_server = (await reader.read()).decode()
        writer.close()
        await writer.wait_closed()
    finally:
        srv.close()
        await srv.wait_closed()
    assert seen_by_server == CLIENT.uri
    return peer_uri[0]


async def test_mtls_handshake_with_issued_certs() -> None:
    ca = CertificateAuthority.create()
    uri = await _handshake(
        ca.issue_workload(SERVER), ca.issue_workload(CLIENT), ca.trust_bundle_pem
    )
    assert uri == SERVER.uri


async def test_root_rotation_both_roots_trusted() -> None:
    old = CertificateAuthority.create()
    new = CertificateAuthority.create(extra_roots=[x509.load_pem_x509_certificate(old.root_pem)])
    bundle = new.trust_bundle_pem  # old + new
    # A peer still holding an old-root certificate and one with a new-root certificate talk.
    assert await _handshake(old.issue_workload(SERVER), new.issue_workload(CLIENT), bundle)
    assert await _handshake(new.issue_workload(SERVER), old.issue_workload(CLIENT), bundle)
    # After the old root is removed from the bundle, old certificates are refused.
    with pytest.raises(ssl.SSLError):
        await _handshake(old.issue_workload(SERVER), new.issue_workload(CLIENT), new.root_pem)
