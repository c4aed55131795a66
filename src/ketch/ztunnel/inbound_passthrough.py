"""Inbound plaintext listener (15006 inside each pod netns): TCP from peers outside the
mesh, redirected here by the pod's nat PREROUTING rule.

1. `original_dst()` gives the pod address and port the peer dialled; a proxy port there is
   a loop and is reset.
2. The connection waits until the pod is ready, then `rbac.authorize` runs with no peer
   identity: PeerAuthentication STRICT denies it, and identity-based ALLOW rules cannot
   match it. Denied -> RST.
3. Connect to the app inside the pod netns (mark 0x539, optionally spoofing the client's
   source IP as `inbound.py` does), splice the two TCP connections with half-close.
4. Metrics: reporter=destination, connection_security_policy=unknown, no source
   principal; `opened` before authorization, `closed` always, `failed` with `DENY` (policy)
   or `CONNECT` (app unreachable). One access-log record per connection (no identities:
   plaintext); the connection is tracked for policy re-checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from ketch.mesh import SELF_PORTS, format_authority
from ketch.netns import NetnsError, NoOriginalDestination, canonical_ip, original_dst
from ketch.ztunnel.connections import Direction, Splice, reset_stream, start_splice
from ketch.ztunnel.pod import PodRuntime, ProxyContext, connect_app
from ketch.ztunnel.rbac import Connection, authorize
from ketch.ztunnel.telemetry import Direction as LogDirection
from ketch.ztunnel.telemetry import (
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    access_log_record,
    connect_failure_flag,
)

log = logging.getLogger("ketch.ztunnel.inbound_passthrough")


async def handle(
    zt: ProxyContext, pod: PodRuntime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One plaintext inbound connection to `pod` (see the module docstring)."""
    started = time.monotonic()
    sock = writer.get_extra_info("socket")
    peer = writer.get_extra_info("peername")
    try:
        dst_s, dst_port = original_dst(sock, peer)
    except (NoOriginalDestination, OSError) as e:
        log.warning(
            "pod %s: inbound plaintext from %s without original destination: %s", pod.uid, peer, e
        )
        reset_stream(writer)
        return
    if dst_port in SELF_PORTS:
        reset_stream(writer)
        return
    if not await pod.wait_ready():
        log.warning(
            "pod %s: refusing plaintext inbound from %s: pod not ready (%s)",
            pod.uid,
            peer,
            pod.error or pod.phase.value,
        )
        reset_stream(writer)
        return
    w = pod.workload
    assert w is not None
    src = (canonical_ip(peer[0]), int(peer[1]))
    dst = (ipaddress.ip_address(dst_s), dst_port)
    st = zt.state
    conn = Connection(src[0], src[1], None, w, dst[0], dst[1])
    src_workload = st.workload_by_address(src[0])
    values = zt.metrics.label_values(
        Reporter.DESTINATION,
        src_workload=src_workload,
        src_identity=None,
        dst_workload=w,
        dst_service=None,
        security_policy=SecurityPolicy.UNKNOWN,
        dst_identity=pod.identity,
    )
    counters = zt.metrics.opened(values)
    splice: Splice | None = None
    error: BaseException | str | None = None
    flag = ResponseFlags.NONE
    a_to_b = b_to_a = 0
    decision = authorize(st, conn)
    if not decision.allowed:
        log.info(
            "pod %s: plaintext from %s to port %s: %s",
            pod.uid,
            format_authority(*src),
            dst[1],
            decision.reason,
        )
        flag = ResponseFlags.DENY
        reset_stream(writer)
        error = f"policy: {decision.reason}"
    else:
        try:
            app = await connect_app(zt, pod, dst, src[0])
            splice = await start_splice(reader, writer, app)
        except (OSError, NetnsError, TimeoutError) as e:
            log.info("pod %s: cannot reach the app at %s: %s", pod.uid, format_authority(*dst), e)
            flag = connect_failure_flag(e)
            reset_stream(writer)
            error = e
    if splice is not None:
        s = splice
        closed_by: list[str] = []  # why the proxy closed it (policy re-check, drain, removal)

        def close(reason: str) -> None:
            closed_by.append(reason)
            s.abort()

        tc = zt.tracker.register(
            pod.uid,
            Direction.INBOUND_PLAINTEXT,
            format_authority(*src),
            format_authority(*dst),
            close,
            info=conn,
            dst_identity=pod.identity.uri if pod.identity else "",
        )
        tc.report = lambda: counters.sync(*s.counts())
        try:
            res = await s.wait()
        except BaseException:  # cancelled (proxy stopping): still closed
            counters.closed(*s.counts())
            raise
        finally:
            zt.tracker.unregister(tc)
        a_to_b, b_to_a = res.a_to_b, res.b_to_a
        error = closed_by[0] if closed_by else res.error
    counters.closed(a_to_b, b_to_a, flag)
    # access log (ztunnel): inbound bytes_sent = towards the caller (app -> client)
    zt.log_access(
        access_log_record(
            direction=LogDirection.INBOUND,
            src=src,
            src_workload=src_workload,
            src_identity=None,
            dst=dst,
            dst_workload=w,
            dst_service=None,
            security_policy=SecurityPolicy.UNKNOWN,
            dst_identity=pod.identity,
            bytes_sent=b_to_a,
            bytes_recv=a_to_b,
            duration_s=time.monotonic() - started,
            error=error,
            response_flags=flag,
        )
    )
