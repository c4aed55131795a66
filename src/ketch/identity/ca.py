"""The certificate authority: a root (self-generated or supplied) that signs SPIFFE certificates.

Pure signing, no networking: the gRPC service (`ketch.identity.server`) decides *whether* to
sign; this module only decides *how*. A signed certificate copies nothing from a CSR except
its public key and its single URI SAN; everything else (empty subject, critical SAN, key
usages for TLS client+server, SKI/AKI, validity) is set here.

State (when `state_dir` is given): `root-cert.pem` and `root-key.pem` (0600) are created on
first start and reused afterwards, so node proxies keep trusting the same root across
control-plane restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ketch.identity.csr import generate_key, key_to_pem
from ketch.identity.errors import CaConfigError, PermissionDenied
from ketch.identity.spiffe import InvalidSpiffeId, NodeId, SpiffeId
from ketch.identity.validate import DEFAULT_POLICY, CsrPolicy, PublicKey, validate_csr

log = logging.getLogger("ketch.identity.ca")

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_WORKLOAD_TTL = timedelta(hours=24)
DEFAULT_MAX_TTL = timedelta(hours=48)
HARD_MAX_TTL = timedelta(days=90)
ROOT_TTL = timedelta(days=3650)
SERVER_DNS_NAMES = ("ketch-control-plane", "localhost")
SERVER_IPS = ("127.0.0.1",)
ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Identity = SpiffeId | NodeId


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class IssuedCert:
    """A private key and its certificate chain (leaf first, root last), all PEM."""

    key_pem: bytes
    chain_pem: list[bytes]

    @property
    def cert_pem(self) -> bytes:
        return self.chain_pem[0]

    @property
    def chain_bytes(self) -> bytes:
        """Leaf..root concatenated: what `SSLContext.load_cert_chain` wants as certfile."""
        return b"".join(self.chain_pem)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc


def write_private_file(path: Path, data: bytes) -> None:
    """Write `data` atomically with mode 0600 (the file never exists with looser rights)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data) if data.strip() else []
    except ValueError as exc:
        raise CaConfigError(f"{what}: not PEM certificates: {exc}") from exc


def _load_key(data: bytes, what: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CaConfigError(f"{what}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaConfigError(f"{what}: CA key must be ECDSA or RSA, got {type(key).__name__}")
    return key


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, Exception):
        return False
    return True


class CertificateAuthority:
    """Signs workload, node and server certificates under one signing certificate."""

    def __init__(
        self,
        *,
        trust_domain: str,
        signing_cert: x509.Certificate,
        signing_key: SigningKey,
        issuer_chain: Sequence[x509.Certificate] = (),
        extra_roots: Sequence[x509.Certificate] = (),
        default_ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        max_ttl: timedelta = DEFAULT_MAX_TTL,
        policy: CsrPolicy = DEFAULT_POLICY,
    ) -> None:
        try:
            SpiffeId(trust_domain, "x", "x")
        except InvalidSpiffeId as exc:
            raise CaConfigError(str(exc)) from exc
        if not timedelta(seconds=1) <= max_ttl <= HARD_MAX_TTL:
            raise CaConfigError(f"max certificate TTL {max_ttl} outside 1s..{HARD_MAX_TTL}")
        if not timedelta(seconds=1) <= default_ttl <= max_ttl:
            raise CaConfigError(f"workload certificate TTL {default_ttl} outside 1s..{max_ttl}")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if signing_cert.public_key().public_bytes(*spki) != signing_key.public_key().public_bytes(
            *spki
        ):
            raise CaConfigError("CA key does not match the CA certificate's public key")
        bc = _basic_constraints(signing_cert)
        if bc is None or not bc.ca:
            raise CaConfigError("CA certificate is not a CA (basicConstraints CA:TRUE missing)")
        chain = [signing_cert, *issuer_chain]
        for child, parent in itertools.pairwise(chain):
            try:
                child.verify_directly_issued_by(parent)
            except Exception as exc:
                raise CaConfigError(
                    f"chain broken: {child.subject.rfc4514_string()} is not signed by "
                    f"{parent.subject.rfc4514_string()}"
                ) from exc
        if not _is_self_signed(chain[-1]):
            raise CaConfigError(
                "the CA chain must end in a self-signed root (put intermediates and the root "
                "in the chain file, leaf-most first)"
            )
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.policy = policy
        self._cert = signing_cert
        self._key = signing_key
        # What follows the leaf in every issued chain: signing cert .. root.
        self._chain_pem = [_pem(c) for c in chain]
        self._roots = [chain[-1], *extra_roots]

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        state_dir: Path | None = None,
        *,
        default_ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        max_ttl: timedelta = DEFAULT_MAX_TTL,
        extra_roots: Sequence[x509.Certificate] = (),
    ) -> CertificateAuthority:
        """A self-signed root (ECDSA P-256). With `state_dir`, persisted and reused."""
        key: SigningKey
        if state_dir is None:
            cert, key = _new_root(trust_domain)
        else:
            cert, key = _load_or_create_root(Path(state_dir), trust_domain)
        return cls(
            trust_domain=trust_domain,
            signing_cert=cert,
            signing_key=key,
            extra_roots=extra_roots,
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )

    @classmethod
    def from_files(
        cls,
        cert: Path,
        key: Path,
        chain: Path | None = None,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        default_ttl: timedelta = DEFAULT_WORKLOAD_TTL,
        max_ttl: timedelta = DEFAULT_MAX_TTL,
        extra_roots: Sequence[x509.Certificate] = (),
    ) -> CertificateAuthority:
        """A user-supplied root or intermediate. `chain` holds the certificates above `cert`
        up to and including the root (it may be omitted when `cert` is itself the root)."""
        certs = _load_certs(Path(cert).read_bytes(), str(cert))
        if not certs:
            raise CaConfigError(f"{cert}: no certificate found")
        issuer_chain = certs[1:]
        if chain is not None:
            issuer_chain += _load_certs(Path(chain).read_bytes(), str(chain))
        return cls(
            trust_domain=trust_domain,
            signing_cert=certs[0],
            signing_key=_load_key(Path(key).read_bytes(), str(key)),
            issuer_chain=issuer_chain,
            extra_roots=extra_roots,
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )

    # --- trust ---------------------------------------------------------------------------

    @property
    def root_pem(self) -> bytes:
        """The root this CA chains to."""
        return _pem(self._roots[0])

    @property
    def trust_bundle(self) -> list[bytes]:
        """Every root a verifier should trust (this CA's root plus any rotation roots)."""
        return [_pem(c) for c in self._roots]

    @property
    def trust_bundle_pem(self) -> bytes:
        return b"".join(self.trust_bundle)

    @property
    def signing_cert_pem(self) -> bytes:
        return _pem(self._cert)

    # --- signing -------------------------------------------------------------------------

    def parse_identity(self, identity: Identity | str) -> Identity:
        """Parse a workload or node URI and check it is in this CA's trust domain."""
        if isinstance(identity, str):
            try:
                parsed: Identity = (
                    NodeId.parse(identity)
                    if "/ketch/node/" in identity
                    else SpiffeId.parse(identity)
                )
            except InvalidSpiffeId as exc:
                raise PermissionDenied(str(exc)) from exc
            if parsed.uri != identity:
                raise PermissionDenied(f"{identity!r} is not a canonical spiffe:// URI")
            identity = parsed
        if identity.trust_domain != self.trust_domain:
            raise PermissionDenied(
                f"identity {identity.uri} is in trust domain {identity.trust_domain!r}; this CA "
                f"signs only for {self.trust_domain!r}"
            )
        return identity

    def sign_csr(
        self, csr_pem: bytes | str, spiffe_id: Identity | str, ttl: timedelta | None = None
    ) -> list[bytes]:
        """Validate `csr_pem` for exactly `spiffe_id` and sign it: PEM chain leaf..root.

        `ttl` None means the CA default; longer than the CA maximum is clamped.
        """
        identity = self.parse_identity(spiffe_id)
        valid = validate_csr(csr_pem, identity.uri, self.policy)
        return self._sign(valid.public_key, uris=[identity.uri], ttl=ttl)

    def issue_workload(self, spiffe_id: Identity | str, ttl: timedelta | None = None) -> IssuedCert:
        """Generate a key here and sign it (tests and standalone mode)."""
        identity = self.parse_identity(spiffe_id)
        key = generate_key()
        chain = self._sign(key.public_key(), uris=[identity.uri], ttl=ttl)
        return IssuedCert(key_pem=key_to_pem(key), chain_pem=chain)

    def sign_node(self, public_key: PublicKey, node_name: str, ttl: timedelta) -> list[bytes]:
        """Sign an already-validated key for a node identity (may exceed the workload max)."""
        node = NodeId(self.trust_domain, node_name)
        return self._sign(public_key, uris=[node.uri], ttl=min(ttl, HARD_MAX_TTL), allow_long=True)

    def issue_node(self, node_name: str, ttl: timedelta | None = None) -> IssuedCert:
        return self.issue_workload(NodeId(self.trust_domain, node_name), ttl)

    def issue_server(
        self,
        dns_names: Iterable[str] = SERVER_DNS_NAMES,
        ips: Iterable[str] = SERVER_IPS,
        ttl: timedelta | None = None,
    ) -> IssuedCert:
        """The control plane's own TLS certificate (DNS/IP SANs, no SPIFFE URI)."""
        key = generate_key()
        chain = self._sign(
            key.public_key(),
            dns=list(dns_names),
            ips=[ipaddress.ip_address(i) for i in ips],
            ttl=ttl or self.max_ttl,
            allow_long=True,
        )
        return IssuedCert(key_pem=key_to_pem(key), chain_pem=chain)

    def _sign(
        self,
        public_key: PublicKey,
        *,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        ttl: timedelta | None,
        allow_long: bool = False,
    ) -> list[bytes]:
        ttl = self.default_ttl if ttl is None or ttl <= timedelta(0) else ttl
        if not allow_long:
            ttl = min(ttl, self.max_ttl)
        now = datetime.now(UTC).replace(microsecond=0)
        # Tolerate small clock skew between nodes without distorting short test TTLs.
        skew = min(timedelta(seconds=60), ttl / 10)
        not_after = min(now + ttl, self._cert.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(i) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - skew)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki(self._cert), critical=False)
        )
        leaf = builder.sign(self._key, hashes.SHA256())
        return [_pem(leaf), *self._chain_pem]


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        pub = issuer.public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(pub)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _new_root(trust_domain: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = generate_key()
    now = datetime.now(UTC).replace(microsecond=0)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ketch"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ketch root CA {trust_domain}"[:64]),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + ROOT_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_or_create_root(state_dir: Path, trust_domain: str) -> tuple[x509.Certificate, SigningKey]:
    """Load the persisted root, or generate it. Several processes may start on the same
    directory at once (two node proxies, a proxy and the control plane): an flock on
    `.lock` makes exactly one of them generate and the others load its root."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        lock = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CaConfigError(f"cannot use CA directory {state_dir}: {e.strerror or e}") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _load_or_create_root_locked(state_dir, trust_domain)
    finally:
        with contextlib.suppress(OSError):
            os.close(lock)


def _load_or_create_root_locked(
    state_dir: Path, trust_domain: str
) -> tuple[x509.Certificate, SigningKey]:
    cert_path, key_path = state_dir / ROOT_CERT_FILE, state_dir / ROOT_KEY_FILE
    if cert_path.exists() and key_path.exists():
        mode = key_path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("CA key %s had mode %o; tightening to 0600", key_path, mode)
            key_path.chmod(0o600)
        certs = _load_certs(cert_path.read_bytes(), str(cert_path))
        if len(certs) != 1:
            raise CaConfigError(f"{cert_path}: expected exactly one root certificate")
        log.info("reusing CA root from %s", state_dir)
        return certs[0], _load_key(key_path.read_bytes(), str(key_path))
    if cert_path.exists() or key_path.exists():
        raise CaConfigError(
            f"{state_dir} has only one of {ROOT_CERT_FILE}/{ROOT_KEY_FILE}; restore the missing "
            "file or remove both to generate a new root (every node must then re-join)"
        )
    cert, key = _new_root(trust_domain)
    write_private_file(key_path, key_to_pem(key))
    cert_path.write_bytes(_pem(cert))
    log.info("generated a new CA root in %s", state_dir)
    return cert, key
