"""Standalone node proxy: `ketch ztunnel run`, one process per node, with its whole view of
the mesh from a YAML file (`ketch.standalone.config`) instead of a control plane.

What the process does:

1. reads and validates the config (a bad file at start-up is a fatal, specific error);
2. loads the CA from `--ca-dir` in-process (created there on first use; several node
   processes may share one directory and so one root), and starts a `CertificateManager`
   over it, so keys are generated here and certificates renewed at half-life;
3. starts the `Ztunnel` and its HTTP endpoints (`ketch.ztunnel.admin`: metrics 15020,
   readiness 15021, admin 15000 on localhost);
4. enrolls the workloads that have `netns` and run on this node: opens the netns, hands the
   fd to `Ztunnel.add_pod` (a netns that does not exist yet is retried every interval);
5. watches the file (stat signature every `reload_interval`, or at once on SIGHUP): a valid
   new version swaps the proxy state (open connections now denied are closed) and enrolls or
   removes pods; an invalid one is logged and the last good config kept;
6. on SIGTERM / SIGINT / `POST /quitquitquit`: drains (stops accepting in every pod, lets
   open connections finish until `drain_timeout`), then closes everything. A second signal
   skips the rest of the drain. A replacement process started before the signal has already
   bound the same in-pod ports (SO_REUSEPORT), so no new connection is refused meanwhile.

With `control_plane` set instead of `config`/`ca_dir` (`ketch ztunnel run --control-plane`),
steps 1, 2 and 5 are replaced (`ketch.standalone.connected`): the node joins with a bootstrap
token once (or reads its node certificate from `node_dir`), pod certificates come from the
control plane's certificate service, the state from its xDS (`XdsClient`), and readiness
holds `state manager` until a response of every xDS type is ACKed. Pods would arrive from
the node agent (ZDS, not built yet); as its stand-in, `pods` (`--pods FILE`, read by
`ketch.standalone.pods`) lists them with their netns, enrolled and watched exactly as the
config file's pods in step 4 and 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, ProcessCollector

from ketch.identity.ca import CertificateAuthority
from ketch.identity.errors import IdentityError
from ketch.identity.local import CaClient, InProcessCaClient
from ketch.identity.manager import CertificateManager
from ketch.standalone.config import ConfigError, LocalPod, read_config
from ketch.util.tasks import spawn
from ketch.ztunnel.admin import HttpEndpoint, admin_routes, metrics_routes, readiness_routes
from ketch.ztunnel.metrics import ZtunnelMetrics
from ketch.ztunnel.pod import PodHandle
from ketch.ztunnel.proxy import ProxyError, Ztunnel
from ketch.ztunnel.state import ProxyState

if TYPE_CHECKING:  # connected mode (grpc, envoy protos) is imported when used
    from ketch.standalone.connected import NodeFiles, NodeSession
    from ketch.ztunnel.xds_client import XdsClient
    from ketch.ztunnel.zds_client import ZdsClient

log = logging.getLogger("ketch.ztunnel.standalone")

Address = tuple[str, int]
TAKE_OVER_INTERVAL = 0.2  # seconds between tries to bind a node port another proxy holds


class StandaloneError(Exception):
    """The standalone proxy cannot start (bad flag, config, CA directory or port)."""


def parse_address(text: str, what: str) -> Address | None:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` (all addresses); `off` or `` disables."""
    text = text.strip()
    if text in ("", "off", "none"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StandaloneError(f"{what}: expected HOST:PORT (or 'off'), got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise StandaloneError(
                f"{what}: {host!r} is not an IP address (use e.g. 127.0.0.1:{port})"
            ) from None
    return host, int(port)


@dataclass(frozen=True)
class StandaloneOptions:
    config: Path | None = None  # file mode: config and ca_dir ...
    ca_dir: Path | None = None
    node: str | None = None  # default: the config's `node`
    metrics: Address | None = ("0.0.0.0", 15020)
    readiness: Address | None = ("0.0.0.0", 15021)
    admin: Address | None = ("127.0.0.1", 15000)
    drain_timeout: float = 30.0
    reload_interval: float = 1.0
    log_format: str = "text"
    workload_ttl: timedelta | None = None  # default: the CA's
    spoof_source: bool = True
    # ... or connected mode (ketch.standalone.connected)
    control_plane: str | None = None  # unix:/path, /path or host:port (mTLS listener)
    node_dir: Path | None = None  # the node's key, certificate and trust bundle
    token: str | None = None  # bootstrap token for the first join
    join_address: str | None = None  # default: join.sock next to a unix control_plane
    trust_bundle: Path | None = None  # for the join; default: next to a unix control_plane
    xds_address: str | None = None  # default: the control plane (certificates + xDS)
    node_ip: str = ""  # the node's IP for the xDS Node id (ztunnel's INSTANCE_IP)
    pods: Path | None = None  # the pods to serve (stand-in for ZDS; ketch.standalone.pods)
    zds_socket: Path | None = None  # ... or from the node agent over ZDS (ketch.ztunnel.zds_client)
    ready_file: Path | None = None  # written with our PID once ready (an upgrade's handover)


def split_pem(blob: bytes) -> list[bytes]:
    """A PEM bundle -> one PEM per certificate."""
    return [
        c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(blob)
    ]


def _stat_signature(path: Path) -> tuple[int, ...] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StandaloneProxy:
    """One node's proxy process (see the module docstring)."""

    def __init__(self, opts: StandaloneOptions) -> None:
        self.opts = opts
        self.node_session: NodeSession | None = None
        self.xds: XdsClient | None = None
        self.zds: ZdsClient | None = None
        self.stop_requested = asyncio.Event()
        self.force = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.registry = CollectorRegistry()
        self.zt: Ztunnel | None = None
        self.node = ""
        self.bound: dict[str, Address] = {}
        self._manager: CertificateManager | None = None
        self._endpoints: list[HttpEndpoint] = []
        self._signature: tuple[int, ...] | None = None
        self._desired: dict[str, LocalPod] = {}
        self._enrolled: dict[str, LocalPod] = {}
        self._failed: dict[str, str] = {}  # uid -> why enrollment failed (retried)
        self._synced = False  # the first config has been applied (pods enrolled or failed)
        self._tasks: list[asyncio.Task[None]] = []
        self._marked_ready = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.opts.control_plane is not None:
            await self._start_connected(self.opts.control_plane)
        else:
            await self._start_file()

    async def _start_file(self) -> None:
        opts = self.opts
        if opts.config is None or opts.ca_dir is None:
            raise StandaloneError("give --config and --ca-dir, or --control-plane")
        for flag, given in (("--pods", opts.pods), ("--zds-socket", opts.zds_socket)):
            if given is not None:
                raise StandaloneError(
                    f"{flag} is for --control-plane (with --config, pods are the workloads "
                    "with netns)"
                )
        self._signature = _stat_signature(opts.config)
        loaded = read_config(opts.config)  # ConfigError: the caller reports it
        for w in loaded.warnings:
            log.warning("%s", w)
        self.node = opts.node or loaded.node
        try:
            ca = CertificateAuthority.create(loaded.trust_domain, state_dir=opts.ca_dir)
        except (IdentityError, ValueError, OSError) as e:
            raise StandaloneError(f"--ca-dir {opts.ca_dir}: {e}") from e
        await self._start_proxy(loaded.state, InProcessCaClient(ca), ca.trust_bundle)
        await self._sync_pods(loaded.pods_on(self.node))
        self._synced = True
        log.info(
            "standalone node proxy for node %r: %d workload(s), %d local pod(s), config %s",
            self.node,
            len(loaded.state.workloads),
            len(self._desired),
            opts.config,
        )

    async def _start_connected(self, control_plane: str) -> None:
        from ketch.standalone.connected import (
            ConnectError,
            NodeSession,
            default_xds_target,
            node_files,
        )
        from ketch.standalone.pods import read_pods
        from ketch.xds import ClientStream
        from ketch.ztunnel.xds_client import XdsClient, grpc_target, make_node, node_credentials
        from ketch.ztunnel.xds_state import StateApplier

        opts = self.opts
        if opts.config is not None or opts.ca_dir is not None:
            raise StandaloneError("--control-plane replaces --config and --ca-dir")
        if not opts.node:
            raise StandaloneError("--control-plane needs --node (this node's name)")
        if opts.node_dir is None:
            raise StandaloneError("--control-plane needs --node-dir")
        if opts.node_ip:
            try:
                ipaddress.ip_address(opts.node_ip)
            except ValueError:
                raise StandaloneError(f"--node-ip: {opts.node_ip!r} is not an IP address") from None
        if opts.pods is not None and opts.zds_socket is not None:
            raise StandaloneError("give --pods (a file) or --zds-socket (the node agent), not both")
        self.node = opts.node
        pods: tuple[LocalPod, ...] = ()
        if opts.pods is not None:
            self._signature = _stat_signature(opts.pods)
            try:
                pods = read_pods(opts.pods)
            except ConfigError as e:
                raise StandaloneError("--pods: " + "\n  ".join(e.problems)) from e
        try:
            files = await node_files(
                control_plane,
                opts.node,
                opts.node_dir,
                token=opts.token,
                join_target=opts.join_address,
                trust_bundle=opts.trust_bundle,
            )
            trust = split_pem(files.trust_bundle_pem)
        except (ConnectError, ValueError) as e:
            raise StandaloneError(str(e)) from e
        target = grpc_target(control_plane)
        self.node_session = session = NodeSession(target, files, opts.node_dir)
        await self._start_proxy(ProxyState(), session, trust)
        assert self.zt is not None
        xds_target = grpc_target(opts.xds_address or default_xds_target(control_plane))
        self.xds = XdsClient(
            xds_target,
            ClientStream(),
            StateApplier(self.zt),
            make_node(self.node, ip=opts.node_ip),
            credentials=node_credentials(files.trust_bundle_pem, files.key_pem, files.chain_pem),
        )
        await self.xds.start()
        xds = self.xds

        def renewed(new: NodeFiles) -> None:
            xds.credentials = node_credentials(new.trust_bundle_pem, new.key_pem, new.chain_pem)

        session.on_renew.append(renewed)
        self._tasks.append(spawn(session.run(), name="standalone-node-cert"))
        await self._sync_pods(pods)
        if opts.zds_socket is not None:
            from ketch.ztunnel.zds_client import ZdsClient

            self.zds = ZdsClient(self.zt, opts.zds_socket)
            await self.zds.start()
        log.info(
            "node proxy for node %r: certificates from %s, state over xDS from %s; "
            "%d pod(s) from %s",
            self.node,
            target,
            xds_target,
            len(self._desired),
            (f"the node agent (ZDS {opts.zds_socket})" if opts.zds_socket else None)
            or opts.pods
            or "nowhere (no --pods)",
        )

    async def _start_proxy(self, state: ProxyState, ca: CaClient, trust: list[bytes]) -> None:
        """The certificate manager, the `Ztunnel` and the node endpoints."""
        opts = self.opts
        self._manager = CertificateManager(ca, ttl=opts.workload_ttl)
        await self._manager.start()
        ProcessCollector(registry=self.registry)
        self.zt = zt = Ztunnel(
            self.node or "standalone",
            state,
            self._manager,
            trust,
            metrics=ZtunnelMetrics(self.registry),
            log_format=opts.log_format,
            spoof_source=opts.spoof_source,
        )
        await zt.start()
        plan = [
            ("metrics", opts.metrics, metrics_routes(self.registry, zt.flush_metrics)),
            ("readiness", opts.readiness, readiness_routes(self.pending)),
            ("admin", opts.admin, admin_routes(self.config_dump, self.request_stop, self.pending)),
        ]
        try:
            for name, addr, routes in plan:
                if addr is not None:
                    await self._listen(HttpEndpoint(f"{name} endpoint", routes), name, addr)
        except OSError as e:
            await self.close()
            raise StandaloneError(
                f"{e.strerror} (choose another address with "
                "--metrics-addr/--readiness-addr/--admin-addr, or 'off')"
            ) from e

    async def _listen(self, ep: HttpEndpoint, name: str, addr: Address) -> None:
        """Bind a node-level endpoint. If its port is taken (the old proxy of an upgrade
        still holds it until it starts draining), take it over as soon as it is free."""
        self._endpoints.append(ep)
        try:
            self.bound[name] = await ep.start(*addr)
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            log.warning(
                "%s: %s; another proxy holds it (an upgrade in progress?): "
                "will take it over once it is free",
                name,
                e.strerror,
            )
        self._tasks.append(spawn(self._take_over(ep, name, addr), name=f"standalone-{name}"))

    async def _take_over(self, ep: HttpEndpoint, name: str, addr: Address) -> None:
        while True:
            await asyncio.sleep(TAKE_OVER_INTERVAL)
            try:
                self.bound[name] = await ep.start(*addr, quiet=True)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    log.error("%s: giving up: %s", name, e.strerror)
                    return
                continue
            log.info("%s: took over %s:%d", name, *addr)
            return

    def pending(self) -> list[str]:
        """ztunnel's readiness tasks still pending: `state manager` until the config is
        applied, `workload manager` while a local pod could not be enrolled (its netns or
        listeners), and the proxy's own (`proxy` while starting or draining)."""
        if self.zt is None:
            return ["proxy", "state manager"]
        out = list(self.zt.pending())
        if not (self.xds.synced if self.xds is not None else self._synced):
            out.append("state manager")
        zds_waiting = self.zds is not None and not self.zds.ready
        if (self._failed or zds_waiting) and "workload manager" not in out:
            out.append("workload manager")
        return out

    def is_ready(self) -> bool:
        return not self.pending()

    def config_dump(self) -> dict[str, Any]:
        """The proxy's dump, with the pods this process could not enroll added."""
        assert self.zt is not None
        dump = self.zt.config_dump()
        dump["ready"] = self.is_ready()
        dump["pods"] = self.pod_status()
        if self.xds is not None:
            st = self.xds.stats
            dump["xds"] = {
                "target": self.xds.target,
                "connected": self.xds.connected,
                "synced": self.xds.synced,
                "responses": st.responses,
                "nacks": st.nacks,
                "lastNack": st.last_nack,
                "lastError": st.last_error,
            }
        if self.zds is not None:
            dump["zds"] = self.zds.status()
        return dump

    def pod_status(self) -> list[dict[str, Any]]:
        out = self.zt.pods() if self.zt is not None else []
        for uid, why in self._failed.items():
            p = self._desired[uid]
            out.append(
                {
                    "uid": uid,
                    "name": p.name,
                    "namespace": p.namespace,
                    "state": "not_enrolled",
                    "error": why,
                }
            )
        if self.zds is not None:
            out += self.zds.pending_pods()
        return out

    def request_stop(self) -> None:
        """SIGTERM, SIGINT or /quitquitquit: drain, then exit; a second request forces."""
        if self.stop_requested.is_set():
            log.warning("second stop request: closing open connections now")
            self.force.set()
        self.stop_requested.set()

    async def run(self) -> int:
        """Serve until a stop is requested; then drain and close. Returns the number of
        connections force-closed at the end of the drain."""
        while not self.stop_requested.is_set():
            self._mark_ready()
            waiters = [
                spawn(self.stop_requested.wait(), name="standalone-stop"),
                spawn(self.reload_requested.wait(), name="standalone-reload"),
            ]
            try:
                await asyncio.wait(
                    waiters, timeout=self.opts.reload_interval, return_when="FIRST_COMPLETED"
                )
            finally:
                for w in waiters:
                    w.cancel()
            if self.stop_requested.is_set():
                break
            forced = self.reload_requested.is_set()
            self.reload_requested.clear()
            await self.reload(force=forced)
        return await self.shutdown()

    def _mark_ready(self) -> None:
        """Write our PID to `ready_file` the first time we are ready. During an upgrade the
        node ports (15021 too) still belong to the old process, so this file is how whoever
        started us (`ketch restart`) learns that *this* process is ready."""
        path = self.opts.ready_file
        if path is None or self._marked_ready or not self.is_ready():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write the ready file %s: %s", path, e.strerror)
            return
        self._marked_ready = True
        log.info("ready: wrote %s", path)

    async def shutdown(self) -> int:
        zt = self.zt
        forced = 0
        for ep in self._endpoints:  # hand the node ports to a replacement proxy at once
            await ep.close()
        if zt is not None:
            log.info("draining for up to %.1fs", self.opts.drain_timeout)
            drain = spawn(zt.drain(self.opts.drain_timeout), name="standalone-drain")
            force = spawn(self.force.wait(), name="standalone-force")
            await asyncio.wait([drain, force], return_when="FIRST_COMPLETED")
            force.cancel()
            if drain.done():
                forced = drain.result()
            else:
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
                forced = len(zt.tracker)
        await self.close()
        return forced

    async def close(self) -> None:
        if self.zds is not None:
            await self.zds.stop()
        if self.xds is not None:
            await self.xds.stop()
        for t in self._tasks:
            t.cancel()
        for ep in self._endpoints:
            await ep.close()
        self._endpoints.clear()
        if self.zt is not None:
            await self.zt.stop()
        if self._manager is not None:
            await self._manager.stop()
        if self.node_session is not None:
            await self.node_session.close()

    # ------------------------------------------------------------------ config

    async def reload(self, *, force: bool = False) -> bool:
        """Apply the config file (connected mode: the pods file) if it changed (or `force`);
        retry failed enrollments. Returns True if a new version was applied."""
        watched = self.opts.config or self.opts.pods
        if watched is None:  # connected mode without --pods: the state comes over xDS
            return False
        sig = _stat_signature(watched)
        if not force and sig == self._signature:
            if self._failed:
                await self._enroll_missing()
            return False
        self._signature = sig
        if self.opts.config is None:
            return await self._reload_pods(watched)
        try:
            loaded = read_config(self.opts.config)
        except ConfigError as e:
            log.error(
                "config %s rejected, keeping the last good config:\n  %s",
                self.opts.config,
                "\n  ".join(e.problems),
            )
            return False
        for w in loaded.warnings:
            log.warning("%s", w)
        assert self.zt is not None
        closed = self.zt.update_state(loaded.state)
        await self._sync_pods(loaded.pods_on(self.node))
        log.info(
            "config %s reloaded: %d workload(s), %d local pod(s); %d connection(s) closed by policy",
            self.opts.config,
            len(loaded.state.workloads),
            len(self._desired),
            len(closed),
        )
        return True

    async def _reload_pods(self, path: Path) -> bool:
        from ketch.standalone.pods import read_pods

        try:
            pods = read_pods(path)
        except ConfigError as e:
            log.error(
                "pods file %s rejected, keeping the last good list:\n  %s",
                path,
                "\n  ".join(e.problems),
            )
            return False
        await self._sync_pods(pods)
        log.info("pods file %s reloaded: %d pod(s)", path, len(self._desired))
        return True

    async def _sync_pods(self, pods: Iterable[LocalPod]) -> None:
        """Enroll the pods listed (config file or pods file) and remove the others."""
        assert self.zt is not None
        self._desired = {p.uid: p for p in pods}
        for uid, pod in list(self._enrolled.items()):
            if self._desired.get(uid) != pod:
                del self._enrolled[uid]
                await self.zt.remove_pod(uid)
        for uid in list(self._failed):
            if uid not in self._desired:
                del self._failed[uid]
        await self._enroll_missing()

    async def _enroll_missing(self) -> None:
        assert self.zt is not None
        for uid, pod in self._desired.items():
            if uid in self._enrolled:
                continue
            try:
                fd = os.open(pod.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                self._enroll_failed(pod, f"cannot open netns {pod.netns_path}: {e.strerror}")
                continue
            try:
                await self.zt.add_pod(
                    PodHandle(uid, pod.name, pod.namespace, pod.service_account, fd)
                )
            except ProxyError as e:  # add_pod closed the fd
                self._enroll_failed(pod, str(e))
                continue
            self._enrolled[uid] = pod
            self._failed.pop(uid, None)

    def _enroll_failed(self, pod: LocalPod, why: str) -> None:
        if self._failed.get(pod.uid) != why:  # log each new reason once, not every retry
            log.warning("pod %s/%s not enrolled (will retry): %s", pod.namespace, pod.name, why)
        self._failed[pod.uid] = why
