"""Inbound HBONE listener (15008 inside each pod netns): what happens to a tunnel that a
peer proxy opens to one of our pods.

The `HboneServer` (one per pod, with the pod's own certificate) does TLS 1.3, verifies the
client certificate chains to our roots and is in the pod's trust domain, and answers
malformed requests (not CONNECT, bad authority) with 400 itself. For every CONNECT it calls
`handle()`, which decides then acts:

1. the `:authority` must be `<this pod's IP>:<port>`, and that IP must be the address the
   connection arrived on -> else 400 (the proxy does not serve that address);
2. the target port must not be a proxy port (15001/15006/15008) -> else 400 (loop);
3. `rbac.authorize(state, ConnInfo(peer ip, peer identity, pod, port))` -> 401 when denied;
4. connect to the app inside the pod netns (`pod_connect`, mark 0x539, to the pod's own
   IP:port). With `spoof_source` the socket is IP_TRANSPARENT and bound to the client's
   IP, so the app sees the real client address (the pod's mangle/table-100 rules route the
   app's replies back over lo to the proxy); else the app sees the pod IP as the source.
   Refused / unreachable -> 503;
5. answer 200 and relay; metrics with reporter=destination, connection_security_policy=
   mutual_tls; the connection is tracked with its `ConnInfo` so a policy update re-checks it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from ketch.netns import NetnsError, canonical_ip, pod_connect
from ketch.ztunnel.connections import Direction
from ketch.ztunnel.hbone import HboneError, IncomingConnect, RelayProgress, Tunnel, relay
from ketch.ztunnel.hbone.headers import InvalidAuthority, parse_authority
from ketch.ztunnel.rbac import ConnInfo, authorize
from ketch.ztunnel.route import SELF_PORTS
from ketch.ztunnel.state import IpAddr, Service, Workload, format_authority
from ketch.ztunnel.telemetry import Direction as LogDirection
from ketch.ztunnel.telemetry import Reporter, SecurityPolicy, access_log_record

if TYPE_CHECKING:
    from ketch.ztunnel.proxy import PodRuntime, Ztunnel

log = logging.getLogger("ketch.ztunnel.inbound")


def _service_from_forwarded(zt: Ztunnel, w: Workload, value: str | None) -> Service | None:
    """The service the client addressed, from `forwarded: ...;host=<hostname>`."""
    if not value or "host=" not in value:
        return None
    for part in value.split(";"):
        k, _, v = part.strip().partition("=")
        if k.lower() == "host":
            host = v.strip('"')
            for svc in zt.state.services_of(w):
                if svc.hostname == host:
                    return svc
    return None


async def connect_app(
    zt: Ztunnel, pod: PodRuntime, dst: tuple[IpAddr, int], client_ip: IpAddr
) -> socket.socket:
    """Connect to the app inside the pod netns, spoofing `client_ip` when enabled."""
    addr = (str(dst[0]), dst[1])
    if zt.spoof_source and client_ip.version == dst[0].version and client_ip != dst[0]:
        return await pod_connect(
            pod.netns,
            addr,
            connect_timeout=zt.connect_timeout,
            transparent=True,
            source=(str(client_ip), 0),
        )
    return await pod_connect(pod.netns, addr, connect_timeout=zt.connect_timeout)


async def handle(zt: Ztunnel, pod: PodRuntime, inc: IncomingConnect) -> None:
    """One CONNECT to `pod` (see the module docstring)."""
    started = time.monotonic()
    info = inc.info
    w = pod.workload
    peer_ip = canonical_ip(info.peer_addr[0])
    src = (peer_ip, int(info.peer_addr[1]))
    try:
        auth = parse_authority(info.authority)
    except InvalidAuthority as e:
        log.info("pod %s: HBONE from %s: %s -> 400", pod.uid, info.peer_addr, e)
        inc.refuse(400)
        return
    local_ip = canonical_ip(info.local_addr[0])
    if w is None or auth.ip not in w.addresses or auth.ip != local_ip or not pod.accepting:
        log.info(
            "pod %s: HBONE from %s (%s) for %s: not an address this proxy serves here -> 400",
            pod.uid,
            info.peer_addr,
            info.peer_identity,
            info.authority,
        )
        inc.refuse(400)
        return
    if auth.port in SELF_PORTS:
        log.info(
            "pod %s: HBONE from %s targets proxy port %s (loop) -> 400",
            pod.uid,
            info.peer_addr,
            auth.port,
        )
        inc.refuse(400)
        return
    st = zt.state
    conn = ConnInfo(src[0], src[1], info.peer_identity, w, auth.ip, auth.port)
    src_workload = st.workload_by_address(peer_ip)
    dst_service = _service_from_forwarded(zt, w, info.header("forwarded"))
    values = zt.metrics.label_values(
        Reporter.DESTINATION,
        src_workload=src_workload,
        src_identity=info.peer_identity,
        dst_workload=w,
        dst_service=dst_service,
        security_policy=SecurityPolicy.MUTUAL_TLS,
        dst_identity=pod.identity,
    )
    dst = (auth.ip, auth.port)

    def record(error: BaseException | str | None, sent: int = 0, recv: int = 0) -> None:
        zt.log_access(
            access_log_record(
                direction=LogDirection.INBOUND,
                src=src,
                src_workload=src_workload,
                src_identity=info.peer_identity,
                dst=dst,
                dst_workload=w,
                dst_service=dst_service,
                dst_identity=pod.identity,
                hbone_addr=(local_ip, int(info.local_addr[1])),
                bytes_sent=sent,
                bytes_recv=recv,
                duration_s=time.monotonic() - started,
                error=error,
            )
        )

    decision = authorize(st, conn)
    if not decision.allowed:
        log.info(
            "pod %s: HBONE %s from %s: %s -> 401",
            pod.uid,
            info.authority,
            info.peer_identity,
            decision.reason,
        )
        inc.refuse(401)
        zt.metrics.failed(values)
        record(f"policy: {decision.reason}")
        return
    try:
        sock = await connect_app(zt, pod, dst, peer_ip)
    except (OSError, NetnsError, TimeoutError) as e:
        log.info(
            "pod %s: cannot reach the app at %s: %s -> 503", pod.uid, format_authority(*dst), e
        )
        inc.refuse(503)
        zt.metrics.failed(values)
        record(f"app unreachable: {e}")
        return
    reader, writer = await asyncio.open_connection(sock=sock, limit=256 * 1024)
    tunnel: Tunnel = inc.accept()

    def close(reason: str) -> None:
        tunnel.abort()
        writer.transport.abort()

    tc = zt.tracker.register(
        pod.uid,
        Direction.INBOUND,
        format_authority(*src),
        format_authority(*dst),
        close,
        info=conn,
        src_identity=info.peer_identity.uri,
        dst_identity=pod.identity.uri if pod.identity else "",
    )
    counters = zt.metrics.opened(values)

    def live(p: RelayProgress) -> None:
        tc.report = lambda: counters.sync(p.received, p.sent)

    try:
        res = await relay(tunnel, reader, writer, on_start=live)
    except HboneError as e:  # relay reports network errors in its result; defensive
        counters.closed(0, 0)
        record(e)
        return
    finally:
        zt.tracker.unregister(tc)
    # relay: sent = app -> tunnel (response), received = tunnel -> app (request)
    counters.closed(res.received, res.sent)
    # access log: sent = towards the destination (app), recv = back from it
    record(res.error, sent=res.received, recv=res.sent)
