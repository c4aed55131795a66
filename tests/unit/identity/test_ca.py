"""CertificateAuthority: issued certificates verify with cryptography and with openssl."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ketch.identity.ca import CertificateAuthority
from ketch.identity.csr import generate_key_and_csr
from ketch.identity.errors import CaConfigError, CsrBadSan, PermissionDenied
from ketch.identity.spiffe import InvalidSpiffeId, NodeId, SpiffeId
from tests.prereq import needs_tool

SID = SpiffeId("cluster.local", "default", "bookinfo")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def _verify(roots_pem: bytes, chain: list[bytes]) -> None:
    store = Store(x509.load_pem_x509_certificates(roots_pem))
    leaf = x509.load_pem_x509_certificate(chain[0])
    inter = [x509.load_pem_x509_certificate(c) for c in chain[1:]]
    verifier = PolicyBuilder().store(store).build_client_verifier()
    verifier.verify(leaf, inter)


def test_sign_csr_copies_only_key_and_uri(ca: CertificateAuthority) -> None:
    _key_pem, csr_pem = generate_key_and_csr(SID.uri)
    chain = ca.sign_csr(csr_pem, SID, timedelta(hours=1))
    assert len(chain) == 2
    assert chain[-1] == ca.root_pem
    leaf = x509.load_pem_x509_certificate(chain[0])
    csr = x509.load_pem_x509_csr(csr_pem)
    assert leaf.public_key() == csr.public_key()
    assert len(leaf.subject) == 0
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(SID.uri)]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root = x509.load_pem_x509_certificate(ca.root_pem)
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    lifetime = leaf.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(minutes=59) < lifetime <= timedelta(hours=1)
    _verify(ca.trust_bundle_pem, chain)


def test_ttl_defaults_and_clamps(ca: CertificateAuthority) -> None:
    default = ca.issue_workload(SID)
    assert default.not_after - datetime.now(UTC) > timedelta(hours=23, minutes=59)
    clamped = ca.issue_workload(SID, timedelta(days=30))
    assert clamped.not_after - datetime.now(UTC) <= ca.max_ttl


def test_refuses_other_identity_and_trust_domain(ca: CertificateAuthority) -> None:
    _k, csr = generate_key_and_csr(SID.uri)
    with pytest.raises(CsrBadSan):
        ca.sign_csr(csr, SpiffeId("cluster.local", "default", "other"))
    with pytest.raises(PermissionDenied):
        ca.sign_csr(csr, SpiffeId("other.domain", "default", "bookinfo"))
    with pytest.raises(PermissionDenied):
        ca.sign_csr(csr, "spiffe://cluster.local/not/a/workload")


def test_node_identity(ca: CertificateAuthority) -> None:
    issued = ca.issue_node("node-a")
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uri = NodeId("cluster.local", "node-a").uri
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert NodeId.parse(uri).node_name == "node-a"


def test_server_cert_names(ca: CertificateAuthority) -> None:
    issued = ca.issue_server()
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["ketch-control-plane", "localhost"]
    assert [str(i) for i in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    store = Store([x509.load_pem_x509_certificate(ca.root_pem)])
    verifier = (
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("ketch-control-plane"))
    )
    verifier.verify(issued.certificate, [])


def test_state_dir_persists_root_with_0600_key(tmp_path: Path) -> None:
    first = CertificateAuthority.create(state_dir=tmp_path / "ca")
    key_file = tmp_path / "ca" / "root-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = CertificateAuthority.create(state_dir=tmp_path / "ca")
    assert first.root_pem == second.root_pem
    _verify(first.trust_bundle_pem, second.issue_workload(SID).chain_pem)


def test_state_dir_with_one_file_missing_is_an_error(tmp_path: Path) -> None:
    CertificateAuthority.create(state_dir=tmp_path)
    (tmp_path / "root-key.pem").unlink()
    with pytest.raises(CaConfigError, match="only one of"):
        CertificateAuthority.create(state_dir=tmp_path)


def _openssl_intermediate(tmp: Path) -> tuple[Path, Path, Path]:
    """Make root + intermediate with the openssl binary (an independent implementation)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)

    (tmp / "ext.cnf").write_text(
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root.key")
    run(
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-subj",
        "/O=test/CN=root",
        "-days",
        "30",
        "-out",
        "root.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "int.key")
    run("req", "-new", "-key", "int.key", "-subj", "/O=test/CN=intermediate", "-out", "int.csr")
    run(
        "x509",
        "-req",
        "-in",
        "int.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "10",
        "-out",
        "int.pem",
        "-extfile",
        "ext.cnf",
        "-extensions",
        "v3_ca",
    )
    return tmp / "int.pem", tmp / "int.key", tmp / "root.pem"


@needs_tool("openssl")
def test_user_supplied_intermediate_verifies_with_openssl(tmp_path: Path) -> None:
    cert, key, root = _openssl_intermediate(tmp_path)
    ca = CertificateAuthority.from_files(cert, key, root)
    assert x509.load_pem_x509_certificate(ca.root_pem) == x509.load_pem_x509_certificate(
        root.read_bytes()
    )
    issued = ca.issue_workload(SID, timedelta(minutes=5))
    assert len(issued.chain_pem) == 3
    (tmp_path / "leaf.pem").write_bytes(issued.cert_pem)
    (tmp_path / "untrusted.pem").write_bytes(b"".join(issued.chain_pem[1:-1]))
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", "untrusted.pem", "leaf.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    _verify(root.read_bytes(), issued.chain_pem)


@needs_tool("openssl")
def test_self_signed_root_verifies_with_openssl(tmp_path: Path, ca: CertificateAuthority) -> None:
    issued = ca.issue_workload(SID)
    (tmp_path / "root.pem").write_bytes(ca.root_pem)
    (tmp_path / "leaf.pem").write_bytes(issued.cert_pem)
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", "root.pem", "-purpose", "sslclient", "leaf.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    other = CertificateAuthority.create()
    (tmp_path / "other.pem").write_bytes(other.root_pem)
    bad = subprocess.run(
        ["openssl", "verify", "-CAfile", "other.pem", "leaf.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_mismatched_key_is_a_config_error(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(state_dir=tmp_path / "a")
    CertificateAuthority.create(state_dir=tmp_path / "b")
    with pytest.raises(CaConfigError, match="does not match"):
        CertificateAuthority.from_files(
            tmp_path / "a" / "root-cert.pem", tmp_path / "b" / "root-key.pem"
        )
    assert ca.root_pem


def test_rotation_bundle_trusts_both_roots() -> None:
    old = CertificateAuthority.create()
    new = CertificateAuthority.create(extra_roots=[x509.load_pem_x509_certificate(old.root_pem)])
    assert len(new.trust_bundle) == 2
    for issuer in (old, new):
        _verify(new.trust_bundle_pem, issuer.issue_workload(SID).chain_pem)
    stranger = CertificateAuthority.create()
    with pytest.raises(VerificationError):
        _verify(new.trust_bundle_pem, stranger.issue_workload(SID).chain_pem)


def test_generated_csr_is_p256_without_subject() -> None:
    _key, csr_pem = generate_key_and_csr(SID.uri)
    csr = x509.load_pem_x509_csr(csr_pem)
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert len(csr.subject) == 0


def test_node_and_workload_shapes_never_mix() -> None:
    node_uri = NodeId("cluster.local", "node-a").uri
    assert node_uri == "spiffe://cluster.local/ketch/node/node-a"
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(node_uri)
    for bad in (SID.uri, "cluster.local/ketch/node/x", "spiffe://cluster.local/ketch/node/X_Y"):
        with pytest.raises(InvalidSpiffeId):
            NodeId.parse(bad)
