"""`ketch ztunnel run --control-plane ADDR`: the node proxy joined to a control plane.

Pieces the runner (`ketch.standalone.run.StandaloneProxy`) composes in this mode instead of
the config file and the in-process CA:

- the node's credentials (`node_files`): its key, certificate chain and trust bundle in a
  node directory, obtained once by joining with a bootstrap token (`join_node`, over the
  control plane's join listener) and read from there afterwards; the node key never leaves
  the node;
- certificates for the pods from the control plane's certificate service (`GrpcCaClient`
  with the node certificate), so no CA key is on the node; `NodeSession` renews the node
  certificate at half-life (a new key, signed over the same mTLS channel), writes it to the
  node directory and moves the certificate client and the xDS credentials to it;
- the proxy state from the control plane's xDS (`ketch.ztunnel.xds_client.XdsClient`, on
  the certificate service's address by default), with readiness held (`state manager`)
  until a response of every type is ACKed.

The xDS session and conversion are `ketch.xds` (`ClientStream`, `convert.decode_all`).
This module, and with it grpc and the envoy protos, is imported only when `--control-plane`
is given, so file mode starts without them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from ketch.identity.ca import write_private_file
from ketch.identity.client import GrpcCaClient, NodeCredentials, join_node
from ketch.identity.csr import generate_key_and_csr
from ketch.identity.errors import IdentityError
from ketch.identity.spiffe import SpiffeId

log = logging.getLogger("ketch.ztunnel.standalone")

KEY_FILE = "node-key.pem"
RENEW_RETRY = 30.0  # seconds between failed node certificate renewals
CHAIN_FILE = "node-cert.pem"
BUNDLE_FILE = "trust-bundle.pem"


class ConnectError(Exception):
    """The node cannot join or reach its control plane (reported by the runner)."""


@dataclass(frozen=True)
class NodeFiles:
    """The node's credentials as PEM: key, chain (leaf first) and the trust bundle."""

    key_pem: bytes
    chain_pem: bytes
    trust_bundle_pem: bytes

    @classmethod
    def read(cls, node_dir: Path) -> NodeFiles | None:
        try:
            return cls(
                (node_dir / KEY_FILE).read_bytes(),
                (node_dir / CHAIN_FILE).read_bytes(),
                (node_dir / BUNDLE_FILE).read_bytes(),
            )
        except FileNotFoundError:
            return None

    @classmethod
    def from_join(cls, creds: NodeCredentials) -> NodeFiles:
        return cls(creds.issued.key_pem, creds.issued.chain_bytes, creds.trust_bundle_pem)

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem)

    def renew_at(self) -> datetime:
        """Half-life of the node certificate."""
        leaf = self.leaf
        return (
            leaf.not_valid_before_utc + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
        )

    def node_uri(self) -> str:
        san = self.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return str(san.value.get_values_for_type(x509.UniformResourceIdentifier)[0])

    def write(self, node_dir: Path) -> None:
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_file(node_dir / KEY_FILE, self.key_pem)
        (node_dir / CHAIN_FILE).write_bytes(self.chain_pem)
        (node_dir / BUNDLE_FILE).write_bytes(self.trust_bundle_pem)


def is_unix(target: str) -> bool:
    return target.startswith(("/", "unix:"))


def unix_path(target: str) -> Path:
    """`unix:/p`, `unix:///p` (gRPC's URI form) or `/p` -> `/p`."""
    rest = target.removeprefix("unix:")
    return Path(rest[2:] if rest.startswith("///") else rest)


def default_join_target(control_plane: str) -> str | None:
    """Next to a control plane's `ca.sock` is its `join.sock` (docs: control plane layout)."""
    if is_unix(control_plane):
        return f"unix:{unix_path(control_plane).with_name('join.sock')}"
    return None


def default_xds_target(control_plane: str) -> str:
    """The control plane's delta ADS: the certificate service's own address (the control
    plane serves both on each listener, as istiod on 15012), unless `--xds-address` says
    otherwise."""
    if is_unix(control_plane):
        return f"unix:{unix_path(control_plane)}"
    return control_plane


def default_trust_bundle(control_plane: str) -> Path | None:
    """... and the `trust-bundle.pem` it writes for nodes."""
    if is_unix(control_plane):
        return unix_path(control_plane).with_name("trust-bundle.pem")
    return None


async def node_files(
    control_plane: str,
    node: str,
    node_dir: Path,
    *,
    token: str | None = None,
    join_target: str | None = None,
    trust_bundle: Path | None = None,
    trust_domain: str = "cluster.local",
) -> NodeFiles:
    """The node's credentials: read from `node_dir`, or (with `token`) joined for and written
    there. A token given while credentials exist is ignored (the node already joined)."""
    have = NodeFiles.read(node_dir)
    if have is not None:
        return have
    if token is None:
        raise ConnectError(
            f"no node certificate in {node_dir}: join once with --token "
            f"(from `ketch node token create {node}` on the control plane)"
        )
    target = join_target or default_join_target(control_plane)
    bundle_path = trust_bundle or default_trust_bundle(control_plane)
    if target is None or bundle_path is None:
        raise ConnectError(
            "joining a control plane over TCP needs --join-address and --trust-bundle"
        )
    try:
        root = bundle_path.read_bytes()
    except OSError as e:
        raise ConnectError(f"--trust-bundle {bundle_path}: {e.strerror}") from e
    try:
        creds = await join_node(target, root, token, node, trust_domain=trust_domain)
    except IdentityError as e:
        raise ConnectError(f"joining the control plane at {target} as {node!r}: {e}") from e
    files = NodeFiles.from_join(creds)
    files.write(node_dir)
    return files


class NodeSession:
    """The node credentials in use. A `CaClient` (the certificate manager signs through it)
    whose node certificate is renewed at half-life by `run()`; `on_renew` callbacks get the
    new files (the runner gives the xDS client its new credentials: used from the next
    connection on)."""

    def __init__(
        self,
        target: str,
        files: NodeFiles,
        node_dir: Path,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.target = target
        self.files = files
        self.node_dir = node_dir
        self.on_renew: list[Callable[[NodeFiles], None]] = []
        self._client = self._new_client(files)
        self._now = now
        self._sleep = sleep

    def _new_client(self, files: NodeFiles) -> GrpcCaClient:
        return GrpcCaClient(self.target, files.trust_bundle_pem, files.key_pem, files.chain_pem)

    async def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None) -> list[bytes]:
        return await self._client.sign(csr_pem, identity, ttl)

    async def renew(self) -> NodeFiles:
        """A new key and node certificate, signed with the current one; written to the node
        directory before anything uses it. Raises IdentityError."""
        key_pem, csr_pem = generate_key_and_csr(self.files.node_uri())
        chain = await self._client.create_certificate(csr_pem, 0, None)
        new = NodeFiles(key_pem, b"".join(chain), self.files.trust_bundle_pem)
        new.write(self.node_dir)
        old, self._client, self.files = self._client, self._new_client(new), new
        await old.close()
        for cb in self.on_renew:
            cb(new)
        log.info("node certificate renewed (serial %x)", new.leaf.serial_number)
        return new

    async def run(self) -> None:
        """Renew at half-life, forever; a failure is retried every RENEW_RETRY seconds."""
        while True:
            delay = (self.files.renew_at() - self._now()).total_seconds()
            if delay > 0:
                await self._sleep(delay)
            try:
                await self.renew()
            except IdentityError as e:
                log.warning("node certificate renewal failed (retrying): %s", e)
                await self._sleep(RENEW_RETRY)

    async def close(self) -> None:
        await self._client.close()
