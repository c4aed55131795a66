"""The control plane process: the config store plus the certificate service.

Layout of the state directory (default /var/lib/ketch):

    ketch.db          the config store (SQLite, shared with the `ketch` CLI)
    ca/               CA root (root-cert.pem, root-key.pem 0600) and nodes.json (tokens, serials)
    ca.sock           certificate service, mTLS (nodes present their node certificate);
                      with `--xds` also delta ADS (istiod serves both on 15012)
    join.sock         node join, server-authenticated TLS (nodes present a bootstrap token);
                      with `--xds` also delta ADS for a bearer xDS token (a stock ztunnel)
    trust-bundle.pem  the roots nodes must trust (copied to them out of band, or read here)
    admin/            (with `--xds`) the operator's credential for `ketch proxy-status`
                      (syncz), re-issued at every start, in Istio's file names:
                      cert-chain.pem, key.pem (0600), root-cert.pem

Unix sockets are the default transport because node proxies run in other network namespaces
on the same machine; TCP listeners (`--listen`, `--join-listen`) are there for remote nodes.
One gRPC server serves every listener: the certificate service, node join and (with `--xds`)
delta ADS, each authenticating its callers as the listener allows.

With `xds` on, the push pipeline of `ketch.control.push` runs here (docs/control-plane.md,
"Push"): store watch -> debounce -> rebuild with `build(store)` -> delta ADS to every node.
Streams opened before the first build wait for it.
The default `build` is `ketch.control.build.MeshBuild`: the store's Pods, Services,
Namespaces, Nodes, Gateways, AuthorizationPolicies and PeerAuthentications, translated
(`ketch.control.translate`) and encoded as Istio's Address and Authorization resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.control.admission import ensure_builtin_namespaces
from ketch.identity.ca import CertificateAuthority, write_private_file
from ketch.identity.directory import StoreNodeDirectory
from ketch.identity.server import SERVER_CERT_TTL, RunningCa, serve_ca
from ketch.identity.tokens import TokenStore
from ketch.store.base import Store
from ketch.util.tasks import spawn

if TYPE_CHECKING:  # the push pipeline (grpc, Envoy protos) loads only with --xds
    from ketch.control.push import Pusher, PushServer, Resources, SnapshotHolder

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
    xds: bool = False  # also serve delta ADS (the push pipeline) on the listeners
    xds_revalidate: float = 10.0  # seconds between re-checks of open streams' certificates
    cluster_id: str = "Kubernetes"  # in workload uids and CLUSTER_ID (istiod's default)
    root_namespace: str = "istio-system"  # where mesh-wide policies live

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

    @property
    def admin_dir(self) -> Path:
        return self.state_dir / "admin"


ADMIN_NODE = "ketch-admin"
"""The node name in the admin certificate. Only the serial the plane wrote to `admin/` at
this start is accepted (a real node joining under this name gets no debug access)."""


def write_admin_credential(
    ca: CertificateAuthority, admin_dir: Path, trust_bundle_pem: bytes
) -> int:
    """Issue the operator's xDS client certificate (a node certificate for `ADMIN_NODE`,
    valid for the life of a server certificate) into `admin_dir` (0700, key 0600): whoever
    can read the state directory may call syncz. Returns its serial."""
    cert = ca.issue_node(ADMIN_NODE, ttl=SERVER_CERT_TTL)
    admin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    admin_dir.chmod(0o700)
    write_private_file(admin_dir / "key.pem", cert.key_pem)
    write_private_file(admin_dir / "cert-chain.pem", cert.chain_bytes)
    write_private_file(admin_dir / "root-cert.pem", trust_bundle_pem)
    return cert.certificate.serial_number


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


def empty_build(_store: Store) -> Resources:
    """A snapshot with no resources of any type (tests, or a plane serving nothing)."""
    return {}


def mesh_build(config: ControlPlaneConfig) -> Callable[[Store], Resources]:
    """The real `build`: translate the store and encode it (`ketch.control.build`)."""
    from ketch.control.build import MeshBuild

    return MeshBuild(
        cluster_id=config.cluster_id,
        trust_domain=config.trust_domain,
        root_namespace=config.root_namespace,
    )


@dataclass
class RunningPushPipeline:
    server: PushServer
    pusher: Pusher
    holder: SnapshotHolder
    revision: int = 0  # the store revision the first build starts from
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _revalidate_every(server: PushServer, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        for node in await server.revalidate():
            log.warning("ended the xDS streams of node %s: its certificate is revoked", node)


def prepare_push(
    config: ControlPlaneConfig,
    ca: CertificateAuthority,
    store: Store,
    tokens: TokenStore,
    build: Callable[[Store], Resources],
) -> RunningPushPipeline:
    """The delta ADS servicer, not serving yet: its handler goes on the certificate
    service's server (`serve_ca(extra_handlers=...)`); `start_push` builds the first
    snapshot and lets the streams through."""
    from ketch.control.push import Pusher, PushServer, SnapshotHolder

    update = getattr(build, "update", None)  # MeshBuild's incremental path
    holder = SnapshotHolder(lambda: build(store), update)
    admin_serial = write_admin_credential(ca, config.admin_dir, ca.trust_bundle_pem)

    def is_admin(node: str, serial: int | None) -> bool:
        return node == ADMIN_NODE and serial == admin_serial

    server = PushServer(
        lambda: holder.current,
        trust_domain=ca.trust_domain,
        cert_is_current=lambda node, serial: (
            is_admin(node, serial) or tokens.is_current(node, serial)
        ),
        # a stock ztunnel's `authorization: Bearer`: a Ketch xDS token (docs/control-plane.md)
        validate_token=tokens.xds_token_node,
        token_is_current=tokens.xds_token_is_current,
        allow_debug=lambda caller: is_admin(caller.node, caller.serial),
        ready=False,
    )
    return RunningPushPipeline(server, Pusher(holder, server.notify), holder)


async def start_push(pipeline: RunningPushPipeline, store: Store, revalidate: float) -> None:
    """Build the first snapshot, let the streams through, and follow the store from the
    revision the first build started at (nothing between the two is missed)."""
    from ketch.control.push import watch_store

    revision = await asyncio.to_thread(store.revision)
    await pipeline.pusher.push_now()
    pipeline.server.set_ready()
    pipeline.tasks = [
        spawn(pipeline.pusher.run(), "xds-pusher"),
        spawn(watch_store(store, pipeline.pusher.changed, since=revision), "xds-store-watch"),
        spawn(_revalidate_every(pipeline.server, revalidate), "xds-revalidate"),
    ]


async def run(
    config: ControlPlaneConfig,
    stop: asyncio.Event,
    *,
    build: Callable[[Store], Resources] | None = None,
) -> None:
    """Serve until `stop` is set. `build` is the snapshot function of the push pipeline
    (only used with `config.xds`; default `mesh_build(config)`)."""
    from ketch.store.sqlite import SqliteStore

    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = load_ca(config)
    write_private_file(config.trust_bundle_file, ca.trust_bundle_pem)
    config.trust_bundle_file.chmod(0o644)  # public material
    store = SqliteStore(config.store_file)
    ensure_builtin_namespaces(store)  # as the API server creates them
    for sock in (config.ca_socket, config.join_socket):
        sock.unlink(missing_ok=True)
    tokens = token_store(config.state_dir)
    pipeline: RunningPushPipeline | None = None
    serve: Callable[..., Awaitable[RunningCa]] = serve_ca
    if config.xds:
        from ketch.control.push import serve_push

        pipeline = prepare_push(config, ca, store, tokens, build or mesh_build(config))
        serve = functools.partial(serve_push, pipeline.server)  # + delta ADS, same listeners
    running = await serve(
        ca,
        StoreNodeDirectory(store),
        tokens,
        address=config.listen,
        unix_path=config.ca_socket,
        join_address=config.join_listen,
        join_unix_path=config.join_socket,
    )
    log.info(
        "control plane up: trust domain %s, certificate service%s unix:%s%s, join unix:%s%s, "
        "store %s",
        ca.trust_domain,
        " and delta ADS" if config.xds else "",
        config.ca_socket,
        f" and {running.address}" if running.address else "",
        config.join_socket,
        f" and {running.join_address}" if running.join_address else "",
        config.store_file,
    )
    try:
        if pipeline is not None:
            await start_push(pipeline, store, config.xds_revalidate)
            log.info(
                "xDS (delta ADS) serving: first snapshot built (version %d)",
                pipeline.holder.current.version,
            )
        await stop.wait()
    finally:
        if pipeline is not None:
            await pipeline.stop()
        await running.stop()
        store.close()
        log.info("control plane stopped")
