"""validate_csr and the request helpers: a table of hostile CSRs, plus Hypothesis fuzzing."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.identity.csr import generate_key_and_csr
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
from ketch.identity.validate import (
    IMPERSONATED_IDENTITY,
    parse_metadata,
    resolve_ttl,
    validate_csr,
)

URI = "spiffe://cluster.local/ns/shop/sa/cart"
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _csr(
    key: Key | None = None,
    names: list[x509.GeneralName] | None = None,
    subject: x509.Name | None = None,
    algorithm: hashes.SHA224 | hashes.SHA256 | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    alg = None if isinstance(key, ed25519.Ed25519PrivateKey) else (algorithm or hashes.SHA256())
    return builder.sign(key, alg).public_bytes(serialization.Encoding.PEM)


def _uri(u: str = URI) -> list[x509.GeneralName]:
    return [x509.UniformResourceIdentifier(u)]


def _tampered() -> bytes:
    pem = _csr(names=_uri())
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    der = der.replace(b"sa/cart", b"sa/carx")
    body = base64.encodebytes(der).decode()
    return (
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    )


CASES: list[tuple[str, Callable[[], bytes | str], type[CsrRejected]]] = [
    ("empty", lambda: b"", MalformedCsr),
    ("garbage", lambda: b"hello", MalformedCsr),
    (
        "certificate not csr",
        lambda: b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        MalformedCsr,
    ),
    (
        "bad base64 body",
        lambda: b"-----BEGIN CERTIFICATE REQUEST-----\n!!\n-----END CERTIFICATE REQUEST-----\n",
        MalformedCsr,
    ),
    ("two csrs", lambda: _csr(names=_uri()) + _csr(names=_uri()), MalformedCsr),
    ("non-ascii", lambda: "\u00e9" * 10, MalformedCsr),
    ("oversized", lambda: b"A" * 20_000, CsrTooLarge),
    ("tampered signature", _tampered, CsrBadSignature),
    ("rsa 1024", lambda: _csr(rsa.generate_private_key(65537, 1024), _uri()), WeakKey),
    ("p-521", lambda: _csr(ec.generate_private_key(ec.SECP521R1()), _uri()), WeakKey),
    ("secp256k1", lambda: _csr(ec.generate_private_key(ec.SECP256K1()), _uri()), WeakKey),
    ("ed25519", lambda: _csr(ed25519.Ed25519PrivateKey.generate(), _uri()), WeakKey),
    ("sha224", lambda: _csr(names=_uri(), algorithm=hashes.SHA224()), CsrRejected),
    (
        "common name",
        lambda: _csr(
            names=_uri(), subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
        ),
        CsrSubjectNotEmpty,
    ),
    ("no san", lambda: _csr(), CsrBadSan),
    ("dns san", lambda: _csr(names=[*_uri(), x509.DNSName("evil.example")]), CsrBadSan),
    ("ip san", lambda: _csr(names=[x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]), CsrBadSan),
    ("two uris", lambda: _csr(names=[*_uri(), *_uri(URI + "x")]), CsrBadSan),
    (
        "other identity",
        lambda: _csr(names=_uri("spiffe://cluster.local/ns/shop/sa/other")),
        CsrBadSan,
    ),
    ("other trust domain", lambda: _csr(names=_uri("spiffe://evil/ns/shop/sa/cart")), CsrBadSan),
]


@pytest.mark.parametrize(("name", "make", "error"), CASES, ids=[c[0] for c in CASES])
def test_rejects(name: str, make: Callable[[], bytes | str], error: type[CsrRejected]) -> None:
    with pytest.raises(error):
        validate_csr(make(), URI)


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(65537, 2048),
    ],
    ids=["p256", "p384", "rsa2048"],
)
def test_accepts_allowed_keys(key: Key) -> None:
    valid = validate_csr(_csr(key, _uri()), URI)
    assert valid.uri == URI
    assert valid.public_key == key.public_key()


def test_accepts_generated_csr_as_str() -> None:
    _key, csr = generate_key_and_csr(URI)
    assert validate_csr(csr.decode(), URI).uri == URI


def test_resolve_ttl() -> None:
    day, two = timedelta(hours=24), timedelta(hours=48)
    assert resolve_ttl(0, default=day, maximum=two) == day
    assert resolve_ttl(-5, default=day, maximum=two) == day
    assert resolve_ttl(60, default=day, maximum=two) == timedelta(seconds=60)
    assert resolve_ttl(10**9, default=day, maximum=two) == two


def test_parse_metadata() -> None:
    assert parse_metadata({}) is None
    assert parse_metadata({IMPERSONATED_IDENTITY: URI}) == URI
    with pytest.raises(BadRequest, match="unknown"):
        parse_metadata({IMPERSONATED_IDENTITY: URI, "ClusterID": "x"})
    with pytest.raises(BadRequest, match="non-empty string"):
        parse_metadata({IMPERSONATED_IDENTITY: "number_value"} | {IMPERSONATED_IDENTITY: 3})


_VALID_CSR = _csr(names=_uri())


@st.composite
def _mutated_csr(draw: st.DrawFn) -> bytes:
    """A valid CSR with random byte edits, truncations or insertions."""
    data = bytearray(_VALID_CSR)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            data[pos:pos] = draw(st.binary(max_size=32))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2048), st.text(max_size=512), _mutated_csr()))
def test_hostile_bytes_only_raise_csr_rejected(data: bytes | str) -> None:
    """Whatever the input, the result is a ValidCsr for exactly URI or a CsrRejected."""
    try:
        valid = validate_csr(data, URI)
    except CsrRejected:
        return
    assert valid.uri == URI


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=20), st.integers())))
def test_metadata_parsing_is_total(metadata: dict[str, object]) -> None:
    try:
        result = parse_metadata(metadata)
    except BadRequest:
        assert (
            set(metadata) != {IMPERSONATED_IDENTITY}
            or not isinstance(metadata[IMPERSONATED_IDENTITY], str)
            or metadata[IMPERSONATED_IDENTITY] == ""
        )
        return
    assert result is None or result == metadata[IMPERSONATED_IDENTITY]


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_resolve_ttl_is_bounded(seconds: int) -> None:
    ttl = resolve_ttl(seconds, default=timedelta(hours=24), maximum=timedelta(hours=48))
    assert timedelta(0) < ttl <= timedelta(hours=48)
