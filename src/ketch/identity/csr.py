"""Client-side key and CSR generation: the private key is made here and never leaves.

CSR shape (matching ztunnel's): ECDSA P-256, SHA-256, empty subject, one URI SAN.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def csr_for_key(key: ec.EllipticCurvePrivateKey, uri: str) -> bytes:
    """A PEM CSR with an empty subject and a single critical URI SAN."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def generate_key_and_csr(uri: str) -> tuple[bytes, bytes]:
    """Return (private key PEM (PKCS#8), CSR PEM) for `uri`."""
    key = generate_key()
    return key_to_pem(key), csr_for_key(key, uri)
