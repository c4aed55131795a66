"""Outbound listener (15001 inside each pod netns): what happens to a pod's outbound TCP.

1. The pod's nat OUTPUT rule redirected the connection here; `original_dst()` (conntrack)
   gives the address the app dialled.
2. The connection waits until the pod is ready (workload known, certificate in hand).
3. `route(state, pod workload, dst)` decides, without I/O:
   - `Hbone`: a tunnel through the pod's `HboneClientPool` (key: the pod's identity, the
     expected server identities, the next hop on 15008). New pool connections are dialled
     with `pod_connect` from inside the *source* pod's netns, so the source IP is the pod's
     and the socket carries mark 0x539 (never redirected again). The CONNECT carries
     `baggage`, `forwarded` and `traceparent`; any status but 200 fails the connection.
   - `Passthrough`: plain TCP from inside the pod netns to the original destination.
   - `Refuse`: the client gets a RST.
4. Bytes are relayed (`hbone.relay` / `connections.splice`) with half-close both ways.
5. Metrics (reporter=source), as ztunnel: `opened` before dialling, `closed` when it ends
   (whatever happened), `failed` with `response_flags` when the upstream could not be
   reached (`CONNECT`, `TLS_FAILURE`, `H2_HANDSHAKE_FAILURE`, `IDENTITY_ERROR`). Through a
   waypoint the destination workload is the waypoint. Passthrough is plaintext: no source
   principal. A `Refuse` records no metric. One access-log record is written when the
   connection ends: `dst.addr` is the next hop, `dst.hbone_addr` the CONNECT authority.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from ketch.mesh import IpAddr, Workload, format_authority
from ketch.netns import (
    NetnsError,
    NoOriginalDestination,
    canonical_ip,
    original_dst,
    pod_connect,
)
from ketch.ztunnel.connections import (
    Direction,
    Splice,
    TrackedConn,
    reset_stream,
    start_splice,
)
from ketch.ztunnel.hbone import HboneError, PoolKey, RelayProgress, Tunnel, relay
from ketch.ztunnel.hbone.headers import baggage, forwarded, traceparent
from ketch.ztunnel.identity import IdentityUnavailable
from ketch.ztunnel.pod import PodRuntime, ProxyContext
from ketch.ztunnel.route import Hbone, Passthrough, Refuse, is_self_call, route
from ketch.ztunnel.telemetry import (
    Direction as LogDirection,
)
from ketch.ztunnel.telemetry import (
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    access_log_record,
    canonical_revision,
    canonical_service,
    connect_failure_flag,
    workload_name,
)

log = logging.getLogger("ketch.ztunnel.outbound")


def request_headers(
    src: Workload, src_addr: tuple[IpAddr, int], plan: Hbone
) -> list[tuple[str, str]]:
    """The informational CONNECT headers ztunnel sends (REFERENCE.md "HBONE")."""
    kind = src.workload_type.value
    host = plan.dst_service.hostname if plan.dst_service is not None else None
    return [
        (
            "baggage",
            baggage(
                {
                    "k8s.cluster.name": src.cluster_id,
                    "k8s.namespace.name": src.namespace,
                    f"k8s.{kind}.name": workload_name(src),
                    "service.name": canonical_service(src),
                    "service.version": canonical_revision(src),
                }
            ),
        ),
        ("forwarded", forwarded(src_addr[0], src_addr[1], host)),
        ("traceparent", traceparent()),
    ]


class _Conn:
    """Mutable per-connection I/O handles, so the tracker's closer can abort any stage."""

    __slots__ = ("closed", "splice", "tunnel", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tunnel: Tunnel | None = None
        self.splice: Splice | None = None
        self.closed: str | None = None

    def close(self, reason: str) -> None:
        self.closed = reason
        if self.tunnel is not None:
            self.tunnel.abort()
        if self.splice is not None:
            self.splice.abort()
        reset_stream(self.writer)


async def handle(
    zt: ProxyContext, pod: PodRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One redirected outbound connection of `pod` (see the module docstring)."""
    started = time.monotonic()
    sock = writer.get_extra_info("socket")
    peer = writer.get_extra_info("peername")
    try:
        dst_s, dst_port = original_dst(sock, peer)
    except (NoOriginalDestination, OSError) as e:
        log.warning(
            "pod %s: outbound connection from %s without original destination: %s", pod.uid, peer, e
        )
        reset_stream(writer)
        return
    src_addr = (canonical_ip(peer[0]), int(peer[1]))
    dst_ip = ipaddress.ip_address(dst_s)
    if is_self_call(dst_ip, dst_port, pod.workload.addresses if pod.workload else ()):
        # refused at once, before waiting for the pod: never forwarded into ourselves
        log.info(
            "pod %s: outbound %s -> %s refused: a node-proxy port of the pod itself (loop)",
            pod.uid,
            format_authority(*src_addr),
            format_authority(dst_ip, dst_port),
        )
        reset_stream(writer)
        return
    if not await pod.wait_ready():
        log.warning(
            "pod %s: refusing outbound %s -> %s:%s: pod not ready (%s)",
            pod.uid,
            peer,
            dst_s,
            dst_port,
            pod.error or pod.phase.value,
        )
        reset_stream(writer)
        return
    src = pod.workload
    ident = pod.identity
    assert src is not None
    assert ident is not None
    plan = route(zt.state, src, dst_ip, dst_port)
    c = _Conn(writer)
    tc = zt.tracker.register(
        pod.uid,
        Direction.OUTBOUND,
        format_authority(*src_addr),
        format_authority(dst_ip, dst_port),
        c.close,
        src_identity=ident.uri,
    )
    try:
        if isinstance(plan, Refuse):
            _refused(zt, pod, plan, src_addr, (dst_ip, dst_port), started)
            reset_stream(writer)
        elif isinstance(plan, Passthrough):
            await _passthrough(zt, pod, c, tc, plan, reader, writer, src_addr, started)
        else:
            await _hbone(
                zt, pod, c, tc, plan, reader, writer, src_addr, (dst_ip, dst_port), started
            )
    finally:
        zt.tracker.unregister(tc)


def _refused(
    zt: ProxyContext,
    pod: PodRuntime,
    plan: Refuse,
    src_addr: tuple[IpAddr, int],
    dst: tuple[IpAddr, int],
    started: float,
) -> None:
    """A routing refusal: logged, no metric (ztunnel's early deny)."""
    log.info("pod %s: outbound to %s refused: %s", pod.uid, format_authority(*dst), plan.reason)
    zt.log_access(
        access_log_record(
            direction=LogDirection.OUTBOUND,
            src=src_addr,
            src_workload=pod.workload,
            src_identity=None,
            dst=dst,
            dst_workload=None,
            dst_service=None,
            security_policy=SecurityPolicy.UNKNOWN,
            duration_s=time.monotonic() - started,
            error=f"refused ({plan.status}): {plan.reason}",
        )
    )


async def _hbone(
    zt: ProxyContext,
    pod: PodRuntime,
    c: _Conn,
    tc: TrackedConn,
    plan: Hbone,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    src_addr: tuple[IpAddr, int],
    dst: tuple[IpAddr, int],
    started: float,
) -> None:
    src, ident, pool = pod.workload, pod.identity, pod.pool
    assert src is not None
    assert ident is not None
    assert pool is not None
    hop_ip, hop_port = plan.next_hop
    hop = (str(hop_ip), hop_port)
    key = PoolKey(ident, plan.expected_identities, hop)
    tc.dst_identity = plan.expected_identities[0].uri
    netns = pod.netns
    timeout = zt.connect_timeout

    async def connect() -> object:
        return await pod_connect(netns, hop, connect_timeout=timeout)

    # through a waypoint the destination is the waypoint itself (ztunnel outbound.rs)
    dst_workload = plan.dst_workload
    counters = zt.metrics.opened(
        zt.metrics.label_values(
            Reporter.SOURCE,
            src_workload=src,
            src_identity=ident,
            dst_workload=dst_workload,
            dst_service=plan.dst_service,
            security_policy=SecurityPolicy.MUTUAL_TLS,
            dst_identity=plan.expected_identities[0],
        )
    )
    error: BaseException | str | None = None
    flag = ResponseFlags.NONE
    sent = received = 0
    try:
        try:
            await zt.identities.ensure(ident)
            tunnel = await pool.open(
                key,
                plan.authority,
                request_headers(src, src_addr, plan),
                connect=connect,  # type: ignore[arg-type]
            )
        except (HboneError, IdentityUnavailable, NetnsError, OSError) as e:
            error = e
            flag = connect_failure_flag(e)
            log.info(
                "pod %s: HBONE to %s via %s:%s failed: %s",
                pod.uid,
                plan.authority,
                hop[0],
                hop[1],
                e,
            )
            reset_stream(writer)
        else:
            c.tunnel = tunnel
            if c.closed is not None:
                tunnel.abort()
                reset_stream(writer)
                error = c.closed
            else:
                cc = counters

                def live(p: RelayProgress) -> None:
                    tc.report = lambda: cc.sync(p.sent, p.received)

                res = await relay(tunnel, reader, writer, on_start=live)
                sent, received = res.sent, res.received
                error = c.closed or res.error
    except BaseException:  # cancelled (proxy stopping): still closed, as ztunnel's Drop
        counters.closed(sent, received)
        raise
    # received = client -> server (request), sent = server -> client (response)
    counters.closed(sent, received, flag)
    zt.log_access(
        access_log_record(
            direction=LogDirection.OUTBOUND,
            src=src_addr,
            src_workload=src,
            src_identity=ident,
            dst=(hop_ip, hop_port),
            dst_workload=dst_workload,
            dst_service=plan.dst_service,
            security_policy=SecurityPolicy.MUTUAL_TLS,
            dst_identity=c.tunnel.peer_identity if c.tunnel is not None else None,
            hbone_addr=plan.authority,
            bytes_sent=sent,
            bytes_recv=received,
            duration_s=time.monotonic() - started,
            error=error,
            response_flags=flag,
        )
    )


async def _passthrough(
    zt: ProxyContext,
    pod: PodRuntime,
    c: _Conn,
    tc: TrackedConn,
    plan: Passthrough,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    src_addr: tuple[IpAddr, int],
    started: float,
) -> None:
    dst = (str(plan.dst[0]), plan.dst[1])
    # plaintext: no source principal (ztunnel reports the mTLS identity only)
    counters = zt.metrics.opened(
        zt.metrics.label_values(
            Reporter.SOURCE,
            src_workload=pod.workload,
            src_identity=None,
            dst_workload=plan.dst_workload,
            dst_service=plan.dst_service,
            security_policy=SecurityPolicy.UNKNOWN,
            dst_identity=None,
        )
    )
    error: BaseException | str | None = None
    flag = ResponseFlags.NONE
    a_to_b = b_to_a = 0
    try:
        try:
            sock = await pod_connect(pod.netns, dst, connect_timeout=zt.connect_timeout)
            c.splice = await start_splice(reader, writer, sock)
        except (OSError, NetnsError, TimeoutError) as e:
            error = e
            flag = connect_failure_flag(e)
            reset_stream(writer)
        else:
            sp = c.splice
            tc.report = lambda: counters.sync(*sp.counts())
            res = await sp.wait()
            a_to_b, b_to_a = res.a_to_b, res.b_to_a
            error = c.closed or res.error
    except BaseException:  # cancelled (proxy stopping): still closed, as ztunnel's Drop
        counters.closed(a_to_b, b_to_a)
        raise
    counters.closed(a_to_b, b_to_a, flag)
    zt.log_access(
        access_log_record(
            direction=LogDirection.OUTBOUND,
            src=src_addr,
            src_workload=pod.workload,
            src_identity=None,
            dst=plan.dst,
            dst_workload=plan.dst_workload,
            dst_service=plan.dst_service,
            security_policy=SecurityPolicy.UNKNOWN,
            bytes_sent=a_to_b,
            bytes_recv=b_to_a,
            duration_s=time.monotonic() - started,
            error=error,
            response_flags=flag,
        )
    )
