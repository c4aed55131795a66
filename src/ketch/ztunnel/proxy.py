"""The node proxy runtime: one `Ztunnel` per node, serving every enrolled pod on the node
from inside each pod's network namespace (REFERENCE.md "In-pod redirection").

For each pod (`add_pod(PodHandle)`, from the node agent over ZDS, the standalone runner or a
test) the proxy opens three listeners inside the pod netns, each with SO_REUSEPORT and
SO_MARK 0x539 (`ketch.netns.pod_listener`):

- 15001 outbound (`outbound.py`): the pod's redirected outbound TCP; route, then HBONE,
  plain passthrough or refuse;
- 15006 inbound plaintext (`inbound_passthrough.py`): redirected inbound TCP from peers
  outside the mesh; authorize with no identity, deliver to the app;
- 15008 inbound HBONE (`inbound.py`): mTLS HTTP/2 CONNECT from other proxies; authorize,
  deliver to the app.

A pod is accepted at once (its listeners queue connections) but forwarding waits until the
pod maps to a `Workload` of the current state (by uid, else namespace/name, else one of the
pod's addresses) and its certificate is in hand (prefetched through the cert source's
`track()` when it has one). Readiness is ztunnel's: `pending()` is empty (`ready`) once the
proxy started, is not draining, and every pod's listeners are open (they are, once
`add_pod` returned); a pod still waiting for its workload or certificate does not hold the
node back: `config_dump()` reports it under `workloadState` and `pods`.

`update_state()` swaps the immutable `ProxyState` snapshot; new connections use the new one,
and open inbound connections are re-checked with `rbac.recheck` and closed when now denied.
`drain()` stops accepting in every pod and lets connections finish until the deadline;
`stop()` force-closes everything. The proxy owns the netns fds handed to `add_pod` and
closes them when the pod is removed or the proxy stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, IpAddr, Workload
from ketch.netns import NetnsError, pod_listener_async, run_in_netns, serve_netns, stop_serving
from ketch.util.tasks import spawn
from ketch.ztunnel import configdump, inbound, inbound_passthrough, outbound
from ketch.ztunnel.connections import ConnectionTracker, Direction, TrackedConn
from ketch.ztunnel.drain import drain_connections
from ketch.ztunnel.hbone import HboneClientPool, HboneServer, tune_malloc
from ketch.ztunnel.identity import CertSource, IdentityContexts, IdentityUnavailable
from ketch.ztunnel.metrics import ZtunnelMetrics
from ketch.ztunnel.pod import PodHandle, PodPhase, PodRuntime
from ketch.ztunnel.rbac import recheck
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.telemetry import AccessLogRecord, format_json, format_text

log = logging.getLogger("ketch.ztunnel")
access_logger = logging.getLogger("ketch.ztunnel.access")

# asyncio re-listen()s a passed socket with its own backlog (default 100): keep ours
LISTEN_BACKLOG = 1024


class ProxyError(Exception):
    """The node proxy cannot serve a pod (listener, netns or identity problem)."""


def _enable_listener_migration() -> bool:
    """Runs inside a pod netns: `net.ipv4.tcp_migrate_req=1` (Linux >= 5.14), so that when a
    proxy closes its listeners (drain, upgrade), connections still in its accept queue move
    to the other SO_REUSEPORT listener of the same port (the replacement proxy) instead of
    being reset. /proc/sys/net resolves to the calling thread's netns."""
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write("1\n")
    except OSError:
        return False
    return True


def _pod_addresses() -> list[str]:
    """Runs inside a pod netns: its non-loopback IPv4/IPv6 addresses (from /proc)."""
    out: list[str] = []
    with contextlib.suppress(OSError), open("/proc/thread-self/net/if_inet6") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] != "lo":
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(parts[0]))))
    # IPv4: bind-probe is not possible; read the local routing table instead.
    with contextlib.suppress(OSError):
        with open("/proc/thread-self/net/fib_trie") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            if "/32 host LOCAL" in line and i > 0:
                ip = lines[i - 1].split()[-1]
                if not ip.startswith("127."):
                    out.append(ip)
    return list(dict.fromkeys(out))


class Ztunnel:
    """The node proxy (see the module docstring)."""

    def __init__(
        self,
        node: str,
        state: ProxyState,
        certs: CertSource,
        trust_bundle: list[bytes],
        *,
        metrics: ZtunnelMetrics | None = None,
        access_log: Callable[[AccessLogRecord], None] | None = None,
        log_format: str = "text",
        spoof_source: bool = True,
        connect_timeout: float = 10.0,
        metrics_flush_interval: float | None = 5.0,
    ) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log_format must be 'text' or 'json', not {log_format!r}")
        self.node = node
        self._state = state
        self.certs = certs
        self.trust_bundle = list(trust_bundle)
        self.metrics = metrics if metrics is not None else ZtunnelMetrics(CollectorRegistry())
        self._access_log = access_log
        self._format = format_json if log_format == "json" else format_text
        self.spoof_source = spoof_source
        self.connect_timeout = connect_timeout
        self.identities = IdentityContexts(certs, self.trust_bundle)
        self.identities.on_change.append(self._cert_changed)
        self.tracker = ConnectionTracker()
        self._pods: dict[str, PodRuntime] = {}
        self._started = False
        self._draining = False
        self._stopped = False
        self.metrics_flush_interval = metrics_flush_interval
        self._flusher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> ProxyState:
        return self._state

    def pending(self) -> list[str]:
        """What the node proxy still waits for before it is ready (ztunnel's readiness
        task names); empty when ready."""
        if not self._started or self._draining or self._stopped:
            return ["proxy"]
        if not all(p.listeners for p in self._pods.values()):
            return ["workload manager"]
        return []

    @property
    def ready(self) -> bool:
        return not self.pending()

    @property
    def pods_ready(self) -> bool:
        """Every pod has its workload and certificate (not needed for `ready`)."""
        return all(p.ready for p in self._pods.values())

    @property
    def draining(self) -> bool:
        return self._draining

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        tune_malloc()
        self._started = True
        if self.metrics_flush_interval:
            self._flusher = spawn(
                self._flush_loop(self.metrics_flush_interval), name="ztunnel-metrics"
            )
        log.info("node proxy for %s started", self.node)

    async def add_pod(self, handle: PodHandle) -> None:
        """Open 15001/15006/15008 inside the pod netns and start preparing its identity.
        Raises ProxyError if the listeners cannot be opened (the fd is closed then)."""
        if self._stopped or self._draining:
            raise ProxyError(f"cannot add pod {handle.namespace}/{handle.name}: proxy is stopping")
        old = self._pods.get(handle.uid)
        if old is not None:
            if old.handle.netns_fd == handle.netns_fd:
                return
            await self.remove_pod(handle.uid)
        pod = PodRuntime(handle)
        try:
            serve_netns(handle.netns_fd)  # sockets in this pod: a worker thread, not one each
            if not await run_in_netns(handle.netns_fd, _enable_listener_migration):
                log.warning(
                    "pod %s/%s: cannot set net.ipv4.tcp_migrate_req (kernel < 5.14?): "
                    "connections queued when a proxy stops may be reset during an upgrade",
                    handle.namespace,
                    handle.name,
                )
            for port in (OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT):
                pod.listeners[port] = await pod_listener_async(handle.netns_fd, port)
        except NetnsError as e:
            for s in pod.listeners.values():
                s.close()
            stop_serving(handle.netns_fd)
            with contextlib.suppress(OSError):
                os.close(handle.netns_fd)
            raise ProxyError(
                f"pod {handle.namespace}/{handle.name}: cannot open the proxy listeners in its "
                f"network namespace: {e}"
            ) from e
        self._pods[handle.uid] = pod
        pod.servers.append(
            await asyncio.start_server(
                lambda r, w: outbound.handle(self, pod, r, w),
                sock=pod.listeners[OUTBOUND_PORT],
                limit=256 * 1024,
                backlog=LISTEN_BACKLOG,
            )
        )
        pod.servers.append(
            await asyncio.start_server(
                lambda r, w: inbound_passthrough.handle(self, pod, r, w),
                sock=pod.listeners[INBOUND_PLAINTEXT_PORT],
                limit=256 * 1024,
                backlog=LISTEN_BACKLOG,
            )
        )
        await self._resolve(pod)
        pod.tasks.append(spawn(self._prepare(pod), name=f"ztunnel-pod-{handle.uid}"))
        log.info("pod %s/%s (%s) added", handle.namespace, handle.name, handle.uid)

    async def _resolve(self, pod: PodRuntime) -> None:
        """Find the pod's Workload in the current state (uid, name, then address)."""
        h = pod.handle
        st = self._state
        w = st.workload_by_uid(h.uid)
        if w is None:
            for cand in st.workloads.values():
                if cand.namespace == h.namespace and cand.name == h.name:
                    w = cand
                    break
        if w is None:
            try:
                addrs = await run_in_netns(h.netns_fd, _pod_addresses)
            except NetnsError:
                addrs = []
            for a in addrs:
                w = st.workload_by_address(ipaddress.ip_address(a))
                if w is not None:
                    break
        self._set_workload(pod, w)

    def _set_workload(self, pod: PodRuntime, w: Workload | None) -> None:
        if w is None:
            if pod.workload is None:
                pod.error = "no workload in the proxy state matches this pod yet"
            return
        if pod.workload is not w:
            pod.workload = w
            pod.error = ""
            if pod.identity is not None and pod.identity != w.identity:
                log.warning("pod %s changed identity %s -> %s", pod.uid, pod.identity, w.identity)
            pod.config_event.set()

    async def _prepare(self, pod: PodRuntime) -> None:
        """Wait for the pod's workload and certificate, then serve HBONE and forward."""
        await pod.config_event.wait()
        assert pod.workload is not None
        ident = pod.identity = pod.workload.identity
        pod.phase = PodPhase.WAITING_CERT
        self.identities.track(ident)
        delay = 0.2
        while True:
            try:
                await self.identities.ensure(ident)
                break
            except IdentityUnavailable as e:
                pod.error = str(e)
                log.warning("pod %s: %s; retrying in %.1fs", pod.uid, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
        pod.pool = HboneClientPool(
            self.identities.client_context, connect_timeout=self.connect_timeout
        )
        pod.hbone = HboneServer(
            pod.listeners[HBONE_PORT],
            self.identities.server_context(ident),
            ident.trust_domain,
            lambda inc: inbound.handle(self, pod, inc),
        )
        await pod.hbone.start()
        pod.phase = PodPhase.READY
        pod.error = ""
        pod.ready_event.set()
        log.info("pod %s ready: serving as %s", pod.workload.key, ident)
        # keep the certificate fresh for the 15008 server even without outbound traffic
        while True:
            await asyncio.sleep(self.identities._refresh)
            try:
                await self.identities.ensure(ident)
            except IdentityUnavailable as e:
                log.warning("pod %s: certificate refresh failed: %s", pod.uid, e)

    def _cert_changed(self, identity: SpiffeId, server_ctx: Any) -> None:
        for p in self._pods.values():
            if p.identity == identity and p.hbone is not None:
                p.hbone.set_tls(server_ctx)

    async def remove_pod(self, uid: str) -> None:
        """Close the pod's listeners and every connection it has; forget its identity."""
        pod = self._pods.pop(uid, None)
        if pod is None:
            return
        await self._close_pod(pod, "pod removed from the mesh")
        log.info("pod %s/%s (%s) removed", pod.handle.namespace, pod.handle.name, uid)

    async def _close_pod(self, pod: PodRuntime, reason: str) -> None:
        pod.phase = PodPhase.REMOVED
        pod.ready_event.set()  # wake waiters: they see REMOVED
        for t in pod.tasks:
            t.cancel()
        for srv in pod.servers:
            srv.close()  # closes the 15001/15006 listening sockets
        if pod.hbone is None:
            pod.listeners[HBONE_PORT].close()
        self.tracker.close([c.id for c in self.tracker.for_pod(pod.uid)], reason)
        if pod.hbone is not None:
            await pod.hbone.close(drain_timeout=0.0)
        if pod.pool is not None:
            await pod.pool.close()
        if pod.identity is not None:
            self.identities.untrack(pod.identity)
            if not any(p.identity == pod.identity for p in self._pods.values()):
                self.identities.forget(pod.identity)
        if pod.tasks:
            await asyncio.wait(pod.tasks, timeout=1.0)
        stop_serving(pod.netns)
        with contextlib.suppress(OSError):
            os.close(pod.netns)

    def update_state(self, new: ProxyState) -> list[TrackedConn]:
        """Swap the snapshot; close open inbound connections the new policy denies.
        Returns the connections closed."""
        self._state = new
        for pod in self._pods.values():
            w = new.workload_by_uid(pod.uid)
            if w is None and pod.workload is not None:
                w = new.workload_by_uid(pod.workload.uid)
            if w is None:
                for cand in new.workloads.values():
                    if cand.namespace == pod.handle.namespace and cand.name == pod.handle.name:
                        w = cand
                        break
            self._set_workload(pod, w)
        denied = recheck(new, self.tracker.inbound_infos())
        closed = self.tracker.close(denied, "denied by the updated authorization policy")
        for c in closed:
            log.info(
                "closed connection %s -> %s (%s): now denied by policy", c.src, c.dst, c.pod_uid
            )
        return closed

    def pod(self, uid: str) -> PodRuntime | None:
        return self._pods.get(uid)

    def pods(self) -> list[dict[str, Any]]:
        return [p.describe() for p in sorted(self._pods.values(), key=lambda p: p.uid)]

    def connections(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.tracker.all()]

    def config_dump(self) -> dict[str, Any]:
        """JSON-able view in ztunnel's shape (`configdump.py`), plus Ketch's `node`,
        `ready`, `draining`, `pods` and `connections`."""
        return configdump.config_dump(
            self._state,
            certificates=self._certificates(),
            workload_state={p.uid: self._workload_state(p) for p in self._pods.values()},
            extras={
                "node": self.node,
                "ready": self.ready,
                "draining": self._draining,
                "pods": self.pods(),
                "connections": self.connections(),
            },
        )

    def _certificates(self) -> list[dict[str, Any]]:
        states: dict[SpiffeId, str] = {}
        snapshot = getattr(self.certs, "snapshot", None)
        if callable(snapshot):  # the CertificateManager's view (states, errors)
            for st in snapshot():
                ident = getattr(st, "identity", None)
                if not isinstance(ident, SpiffeId):
                    continue
                state = str(getattr(st, "state", ""))
                reason = getattr(st, "reason", None)
                if state == "Unavailable" and reason:
                    state = f"Unavailable: {reason}"  # ztunnel's form
                states[ident] = state
        for ident in self.identities.identities():
            states.setdefault(ident, "Available")
        return [
            configdump.certificate_json(
                ident.uri, state, self.identities.chain(ident), self.trust_bundle
            )
            for ident, state in sorted(states.items())
        ]

    def _workload_state(self, p: PodRuntime) -> dict[str, Any]:
        h = p.handle
        conns = self.tracker.for_pod(p.uid)
        return {
            # ztunnel's pod states: Up once served, Pending before, Deleting when removed
            "state": {PodPhase.READY: "Up", PodPhase.REMOVED: "Deleting"}.get(p.phase, "Pending"),
            "info": {
                "name": h.name,
                "namespace": h.namespace,
                "trustDomain": p.workload.trust_domain if p.workload else "",
                "serviceAccount": h.service_account,
            },
            "connections": {
                "inbound": [
                    {"src": c.src, "originalDst": c.dst, "actualDst": c.dst}
                    for c in conns
                    if c.direction is not Direction.OUTBOUND
                ],
                "outbound": [
                    {"src": c.src, "originalDst": c.dst, "actualDst": c.dst}
                    for c in conns
                    if c.direction is Direction.OUTBOUND
                ],
            },
        }

    async def drain(self, deadline: float) -> int:
        """Stop accepting in every pod, let open connections finish for up to `deadline`
        seconds, then force-close the rest. Returns the number force-closed."""
        self._draining = True
        pods = list(self._pods.values())

        def stop_accepting() -> None:
            # Connections already accepted, and streams on HBONE connections the peer opened
            # before our GOAWAY, are served to the end (HTTP/2 graceful shutdown); only the
            # listeners stop.
            for p in pods:
                for srv in p.servers:
                    srv.close()  # closes the 15001/15006 listening sockets
                if p.hbone is None:
                    p.listeners[HBONE_PORT].close()

        graceful = [p.hbone.close for p in pods if p.hbone is not None]
        forced = await drain_connections(
            self.tracker, deadline, stop_accepting=stop_accepting, graceful=graceful
        )
        return forced

    def flush_metrics(self) -> None:
        """Add the bytes open connections moved since the last flush to the byte counters
        (they are otherwise complete only when a connection closes)."""
        for c in self.tracker.all():
            if c.report is not None:
                c.report()

    async def _flush_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.flush_metrics()

    async def stop(self) -> None:
        """Force-close every pod's listeners and connections."""
        self._stopped = True
        if self._flusher is not None:
            self._flusher.cancel()
        pods = list(self._pods.values())
        self._pods.clear()
        for p in pods:
            await self._close_pod(p, "proxy stopped")
        log.info("node proxy for %s stopped", self.node)

    # ------------------------------------------------------------------ for the listeners

    def log_access(self, rec: AccessLogRecord) -> None:
        if self._access_log is not None:
            self._access_log(rec)
        elif access_logger.isEnabledFor(logging.INFO):
            access_logger.info(self._format(rec))

    def find_pod_by_ip(self, ips: Sequence[IpAddr]) -> PodRuntime | None:
        for p in self._pods.values():
            if p.workload is not None and any(a in p.workload.addresses for a in ips):
                return p
        return None
