"""Inbound HBONE listener (15008 inside each pod netns): what happens to a tunnel that a
peer proxy opens to one of our pods.

The `HboneServer` (one per pod, with the pod's own certificate) does TLS 1.3, verifies the
client certificate chains to our roots and is in the pod's trust domain, and answers
malformed requests (not CONNECT, bad authority) with 400 itself. For every CONNECT it calls
`handle()`, which decides (`decide()`, pure, table-tested) then acts:

1. no workload for the pod yet, or the pod was removed -> 503 (ztunnel answers 503 too);
2. the `:authority` must be `<this pod's IP>:<port>`, and that IP must be the address the
   connection arrived on -> else 400 (the proxy does not serve that address);
3. the target port must not be a proxy port (15001/15006/15008) -> else 503 (self-call);
4. `rbac.authorize(state, Connection(peer ip, peer identity, pod, port))` -> 401 when denied;
5. connect to the app inside the pod netns (`pod_connect`, mark 0x539, to the pod's own
   IP:port). With `spoof_source` the socket is IP_TRANSPARENT and bound to the client's
   IP, so the app sees the real client address (the pod's mangle/table-100 rules route the
   app's replies back over lo to the proxy); else the app sees the pod IP as the source.
   Refused / unreachable -> 503;
6. answer 200 and relay; the connection is tracked with its `Connection` so a policy
   update re-checks it.

Metrics (reporter=destination, mutual_tls), as ztunnel: refusals 1-3 are early denies and
record nothing; a valid request is counted `opened` before authorization, and `closed` when
it ends, with `failed{response_flags="DENY"}` for a policy denial and `CONNECT` when the
app is unreachable. The access log's `dst.addr` is the address the tunnel arrived on
(`podIP:15008`), `dst.hbone_addr` the `:authority`; `bytes_sent` is towards the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import SELF_PORTS, IpAddr, Service, Workload, format_authority
from ketch.netns import NetnsError, canonical_ip
from ketch.ztunnel.connections import Direction
from ketch.ztunnel.hbone import HboneError, IncomingConnect, RelayProgress, Tunnel, relay
from ketch.ztunnel.hbone.headers import Authority
from ketch.ztunnel.pod import PodPhase, PodRuntime, ProxyContext, connect_app
from ketch.ztunnel.rbac import Connection, Decision, authorize
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.telemetry import Direction as LogDirection
from ketch.ztunnel.telemetry import (
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    access_log_record,
    connect_failure_flag,
)

log = logging.getLogger("ketch.ztunnel.inbound")


def _service_from_forwarded(zt: ProxyContext, w: Workload, value: str | None) -> Service | None:
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """Answer the CONNECT with `status`; `reason` goes to the log. `policy` is set when an
    authorization policy denied (then metrics and the access log record a DENY)."""

    status: int
    reason: str
    denied_by_policy: bool = False


@dataclass(frozen=True, slots=True)
class Admit:
    """Deliver to the app at `target`; `conn` is what policy re-checks see later."""

    conn: Connection
    decision: Decision


def decide(
    state: ProxyState,
    workload: Workload | None,
    *,
    removed: bool,
    local_ip: IpAddr,
    target: Authority,
    peer: tuple[IpAddr, int],
    peer_identity: SpiffeId,
) -> Refusal | Admit:
    """The inbound decision, without I/O, in ztunnel's order (proxy/inbound.rs):

    1. no workload for this pod yet, or the pod was removed from the mesh -> 503 (while the
       proxy drains, streams the peer opened before our GOAWAY are still served);
    2. the authority's IP is not the address the connection arrived on, or not one of the
       pod's -> 400 (this proxy does not serve that address here);
    3. the target port is a node-proxy port -> 503 (self-call);
    4. authorization -> 401 when denied.
    """
    if workload is None:
        return Refusal(503, "no workload is known for this pod yet")
    if removed:
        return Refusal(503, "the pod was removed from the mesh")
    if target.ip != local_ip or target.ip not in workload.addresses:
        return Refusal(
            400, f"{target} is not an address this proxy serves here (arrived on {local_ip})"
        )
    if target.port in SELF_PORTS:
        return Refusal(503, f"port {target.port} is a node-proxy port (self-call)")
    conn = Connection(peer[0], peer[1], peer_identity, workload, target.ip, target.port)
    decision = authorize(state, conn)
    if not decision.allowed:
        return Refusal(401, decision.reason, denied_by_policy=True)
    return Admit(conn, decision)


async def handle(zt: ProxyContext, pod: PodRuntime, inc: IncomingConnect) -> None:
    """One CONNECT to `pod` (see the module docstring)."""
    started = time.monotonic()
    info = inc.info
    peer_ip = canonical_ip(info.peer_addr[0])
    src = (peer_ip, int(info.peer_addr[1]))
    target = info.target
    st = zt.state
    w = pod.workload
    local_ip = canonical_ip(info.local_addr[0])
    verdict = decide(
        st,
        w,
        removed=pod.phase is PodPhase.REMOVED,
        local_ip=local_ip,
        target=target,
        peer=src,
        peer_identity=info.peer_identity,
    )
    if isinstance(verdict, Refusal) and not verdict.denied_by_policy:
        log.info(
            "pod %s: HBONE from %s (%s) for %s: %s -> %d",
            pod.uid,
            info.peer_addr,
            info.peer_identity,
            info.authority,
            verdict.reason,
            verdict.status,
        )
        inc.refuse(verdict.status)
        return
    assert w is not None
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
    dst = (target.ip, target.port)
    counters = zt.metrics.opened(values)  # a valid request: counted before authorization

    def record(
        error: BaseException | str | None,
        flag: ResponseFlags = ResponseFlags.NONE,
        sent: int = 0,
        recv: int = 0,
    ) -> None:
        zt.log_access(
            access_log_record(
                direction=LogDirection.INBOUND,
                src=src,
                src_workload=src_workload,
                src_identity=info.peer_identity,
                dst=(local_ip, int(info.local_addr[1])),
                dst_workload=w,
                dst_service=dst_service,
                security_policy=SecurityPolicy.MUTUAL_TLS,
                dst_identity=pod.identity,
                hbone_addr=dst,
                bytes_sent=sent,
                bytes_recv=recv,
                duration_s=time.monotonic() - started,
                error=error,
                response_flags=flag,
            )
        )

    if isinstance(verdict, Refusal):  # denied by policy
        log.info(
            "pod %s: HBONE %s from %s: %s -> 401",
            pod.uid,
            info.authority,
            info.peer_identity,
            verdict.reason,
        )
        inc.refuse(verdict.status)
        counters.closed(0, 0, ResponseFlags.DENY)
        record(f"policy: {verdict.reason}", ResponseFlags.DENY)
        return
    conn = verdict.conn
    try:
        sock = await connect_app(zt, pod, dst, peer_ip)
    except (OSError, NetnsError, TimeoutError) as e:
        log.info(
            "pod %s: cannot reach the app at %s: %s -> 503", pod.uid, format_authority(*dst), e
        )
        inc.refuse(503)
        flag = connect_failure_flag(e)
        counters.closed(0, 0, flag)
        record(f"app unreachable: {e}", flag)
        return
    except BaseException:  # cancelled (proxy stopping): still closed
        counters.closed(0, 0)
        raise
    try:
        reader, writer = await asyncio.open_connection(sock=sock, limit=256 * 1024)
    except BaseException:
        sock.close()
        counters.closed(0, 0)
        raise
    tunnel: Tunnel = inc.accept()
    closed_by: list[str] = []  # why the proxy closed it (policy re-check, drain, removal)

    def close(reason: str) -> None:
        closed_by.append(reason)
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

    def live(p: RelayProgress) -> None:
        tc.report = lambda: counters.sync(p.received, p.sent)

    try:
        res = await relay(tunnel, reader, writer, on_start=live)
    except HboneError as e:  # relay reports network errors in its result; defensive
        counters.closed(0, 0)
        record(e)
        return
    except BaseException:  # cancelled (proxy stopping): still closed
        counters.closed(0, 0)
        raise
    finally:
        zt.tracker.unregister(tc)
    # relay: sent = app -> tunnel (response), received = tunnel -> app (request)
    counters.closed(res.received, res.sent)
    # access log (ztunnel): inbound bytes_sent = towards the caller (app -> client)
    record(closed_by[0] if closed_by else res.error, sent=res.sent, recv=res.received)
