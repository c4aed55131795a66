"""Pure validation of certificate requests: bytes in, a typed `ValidCsr` out, or a typed error.

This is the whole attack surface of the CA for request content, so it is one pure function
(`validate_csr`) plus two helpers for the fields around it (`resolve_ttl`, `parse_metadata`),
fuzzed with Hypothesis. The CA copies nothing from a CSR except its public key and its single
URI SAN, so anything else a CSR carries is either refused (subject, extra or non-URI SANs) or
ignored (other requested extensions are never copied into a certificate).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ketch.identity.errors import (
    BadRequest,
    CsrBadSan,
    CsrBadSignature,
    CsrRejected,
    CsrSubjectNotEmpty,
    CsrTooLarge,
    MalformedCsr,
    WeakKey,
)

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MAX_CSR_BYTES = 16 * 1024
IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
_PEM_BEGIN = b"-----BEGIN CERTIFICATE REQUEST-----"
_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


@dataclass(frozen=True)
class CsrPolicy:
    """What a CSR may contain. Defaults follow the brief: ECDSA P-256/P-384 or RSA >= 2048."""

    max_csr_bytes: int = MAX_CSR_BYTES
    ec_curves: frozenset[str] = field(default_factory=lambda: frozenset({"secp256r1", "secp384r1"}))
    min_rsa_bits: int = 2048
    max_rsa_bits: int = 8192


DEFAULT_POLICY = CsrPolicy()


@dataclass(frozen=True)
class ValidCsr:
    """A CSR that passed every check: only these two facts are ever used to sign."""

    public_key: PublicKey
    uri: str


def validate_csr(
    csr_pem: bytes | str, expected_identity: str, policy: CsrPolicy = DEFAULT_POLICY
) -> ValidCsr:
    """Check `csr_pem` asks for exactly `expected_identity` with an acceptable key.

    Raises a `CsrRejected` subclass naming the first problem found.
    """
    if isinstance(csr_pem, str):
        try:
            csr_pem = csr_pem.encode("ascii")
        except UnicodeEncodeError as exc:
            raise MalformedCsr("CSR is not ASCII PEM text") from exc
    if len(csr_pem) > policy.max_csr_bytes:
        raise CsrTooLarge(
            f"CSR is {len(csr_pem)} bytes, more than the {policy.max_csr_bytes}-byte limit"
        )
    if csr_pem.count(b"-----BEGIN ") != 1 or _PEM_BEGIN not in csr_pem:
        raise MalformedCsr("expected exactly one PEM 'CERTIFICATE REQUEST' block")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedCsr(f"CSR is not a valid PKCS#10 request: {exc}") from exc

    key = _public_key(csr, policy)
    try:
        algorithm = csr.signature_hash_algorithm
        if not csr.is_signature_valid:
            raise CsrBadSignature("CSR signature does not verify with the CSR's own public key")
    except (UnsupportedAlgorithm, InvalidSignature, ValueError) as exc:
        raise CsrBadSignature(f"CSR signature cannot be checked: {exc}") from exc
    if not isinstance(algorithm, _HASHES):
        name = algorithm.name if algorithm is not None else "none"
        raise CsrRejected(f"CSR signature hash {name} not allowed (use SHA-256 or stronger)")

    if len(csr.subject) != 0:
        raise CsrSubjectNotEmpty(
            f"CSR subject must be empty (identity goes in the URI SAN), got {csr.subject.rfc4514_string()!r}"
        )
    uri = _single_uri_san(csr)
    if uri != expected_identity:
        raise CsrBadSan(f"CSR asks for {uri!r} but the request is for {expected_identity!r}")
    return ValidCsr(public_key=key, uri=uri)


def _public_key(csr: x509.CertificateSigningRequest, policy: CsrPolicy) -> PublicKey:
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise WeakKey(f"CSR public key type not supported: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in policy.ec_curves:
            allowed = ", ".join(sorted(policy.ec_curves))
            raise WeakKey(f"ECDSA curve {key.curve.name} not allowed (allowed: {allowed})")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not policy.min_rsa_bits <= key.key_size <= policy.max_rsa_bits:
            raise WeakKey(
                f"RSA key of {key.key_size} bits not allowed "
                f"({policy.min_rsa_bits}..{policy.max_rsa_bits} bits)"
            )
        return key
    raise WeakKey(f"key type {type(key).__name__} not allowed (use ECDSA P-256)")


def _single_uri_san(csr: x509.CertificateSigningRequest) -> str:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound as exc:
        raise CsrBadSan("CSR has no subjectAltName; it needs exactly one URI SAN") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedCsr(f"CSR extensions cannot be parsed: {exc}") from exc
    names = list(ext.value)
    others = [n for n in names if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        kinds = ", ".join(sorted({type(n).__name__ for n in others}))
        raise CsrBadSan(f"CSR has non-URI SANs ({kinds}); only one URI SAN is allowed")
    if len(names) != 1:
        raise CsrBadSan(f"CSR has {len(names)} URI SANs; exactly one is allowed")
    value = names[0].value
    assert isinstance(value, str)
    return value


def resolve_ttl(requested_seconds: int, *, default: timedelta, maximum: timedelta) -> timedelta:
    """The validity to sign for: <= 0 means "CA default"; longer than `maximum` is clamped.

    Clamping (not refusing) keeps real ztunnels working whatever default they request; the
    certificate's notAfter tells the client what it actually got.
    """
    if requested_seconds <= 0:
        return min(default, maximum)
    if requested_seconds >= maximum.total_seconds():  # also avoids timedelta overflow
        return maximum
    return timedelta(seconds=requested_seconds)


def parse_metadata(metadata: Mapping[str, object]) -> str | None:
    """Return the ImpersonatedIdentity, if any. Unknown keys are refused, not ignored:
    a caller that sends them expects a meaning this CA does not implement."""
    unknown = sorted(k for k in metadata if k != IMPERSONATED_IDENTITY)
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:5])
        raise BadRequest(f"unknown request metadata keys: {shown} (only {IMPERSONATED_IDENTITY!r})")
    if IMPERSONATED_IDENTITY not in metadata:
        return None
    value = metadata[IMPERSONATED_IDENTITY]
    if not isinstance(value, str) or not value:
        raise BadRequest(f"metadata {IMPERSONATED_IDENTITY} must be a non-empty string")
    return value
