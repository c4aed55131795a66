"""The control plane process: the config store plus the certificate service.

Layout of the state directory (default /var/lib/ketch):

    ketch.db          the config store (SQLite, shared with the `ketch` CLI)
    ca/               CA root (root-cert.pem, root-key.pem 0600) and nodes.json (tokens, serials)
    ca.sock           certificate service, mTLS (nodes present their node certificate)
    join.sock         node join, server-authenticated TLS (nodes present a bootstrap token)
    trust-bundle.pem  the roots nodes must trust (copied to them out of band, or read here)

Unix sockets are the default transport because node proxies run in other network namespaces
on the same machine; TCP listeners (`--listen`, `--join-listen`) are there for remote nodes.
xDS push is served from here by a later issue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ketch.identity.ca import CertificateAuthority, write_private_file
from ketch.identity.directory import StoreNodeDirectory
from ketch.identity.server import RunningCa, serve_ca
from ketch.identity.tokens import TokenStore

log = logging.getLogger("ketch.control")


@dataclass(frozen=True)
class ControlPlaneConfig:
    state_dir: Path
    trust_domain: str = "cluster.local"
    listen: str | None = None  # e.g. "127.0.0.1:15012"
    join_listen: str | None = None
    ca_cert: Path | None = None  # a user-supplied root or intermediate ...
    ca_key: Path | None = None
    ca_chain: Path | None = None  # ... and the chain up to the root
    workload_ttl: timedelta = timedelta(hours=24)
    store_path: Path | None = None

    @property
    def store_file(self) -> Path:
        return self.store_path or self.state_dir / "ketch.db"

    @property
    def ca_dir(self) -> Path:
        return self.state_dir / "ca"

    @property
    def ca_socket(self) -> Path:
        return self.state_dir / "ca.sock"

    @property
    def join_socket(self) -> Path:
        return self.state_dir / "join.sock"

    @property
    def trust_bundle_file(self) -> Path:
        return self.state_dir / "trust-bundle.pem"


def load_ca(config: ControlPlaneConfig) -> CertificateAuthority:
    if config.ca_cert or config.ca_key:
        if not (config.ca_cert and config.ca_key):
            raise ValueError(
                "--ca-cert and --ca-key go together (plus --ca-chain for an intermediate)"
            )
        return CertificateAuthority.from_files(
            config.ca_cert,
            config.ca_key,
            config.ca_chain,
            trust_domain=config.trust_domain,
            default_ttl=config.workload_ttl,
        )
    return CertificateAuthority.create(
        config.trust_domain, state_dir=config.ca_dir, default_ttl=config.workload_ttl
    )


def token_store(state_dir: Path) -> TokenStore:
    return TokenStore.in_state_dir(state_dir / "ca")


async def run(config: ControlPlaneConfig, stop: asyncio.Event) -> None:
    """Serve until `stop` is set."""
    from ketch.store.sqlite import SqliteStore

    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = load_ca(config)
    write_private_file(config.trust_bundle_file, ca.trust_bundle_pem)
    config.trust_bundle_file.chmod(0o644)  # public material
    store = SqliteStore(config.store_file)
    for sock in (config.ca_socket, config.join_socket):
        sock.unlink(missing_ok=True)
    running: RunningCa = await serve_ca(
        ca,
        StoreNodeDirectory(store),
        token_store(config.state_dir),
        address=config.listen,
        unix_path=config.ca_socket,
        join_address=config.join_listen,
        join_unix_path=config.join_socket,
    )
    log.info(
        "control plane up: trust domain %s, certificate service unix:%s%s, join unix:%s%s, store %s",
        ca.trust_domain,
        config.ca_socket,
        f" and {running.address}" if running.address else "",
        config.join_socket,
        f" and {running.join_address}" if running.join_address else "",
        config.store_file,
    )
    try:
        await stop.wait()
    finally:
        await running.stop()
        store.close()
        log.info("control plane stopped")
