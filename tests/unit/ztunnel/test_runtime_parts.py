"""Pure and loopback-only parts of the runtime: connection tracking, metric label caching,
the certificate-type bridge, identity context caching and the TCP splice."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from ipaddress import ip_address
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ketch.identity.ca import CertificateAuthority
from ketch.identity.manager import WorkloadCert as ManagerCert
from ketch.identity.spiffe import SpiffeId
from ketch.mesh import Workload
from ketch.ztunnel.connections import (
    ConnectionTracker,
    Direction,
    reset_transport,
    start_splice,
)
from ketch.ztunnel.hbone import (
    ConnectRefused,
    ErrorCode,
    IdentityMismatch,
    ProtocolError,
    TlsError,
)
from ketch.ztunnel.identity import IdentityContexts, IdentityUnavailable, to_tls_cert
from ketch.ztunnel.metrics import ZtunnelMetrics
from ketch.ztunnel.rbac import Connection
from ketch.ztunnel.telemetry import (
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    connect_failure_flag,
)

TD = "cluster.local"


def _wl(name: str) -> Workload:
    return Workload(uid=name, name=name, namespace="ns", addresses=(ip_address("10.0.0.1"),))


# --------------------------------------------------------------------- tracker


async def test_tracker_register_close_and_wait_empty() -> None:
    t = ConnectionTracker()
    closed: list[tuple[int, str]] = []
    info = Connection(ip_address("10.0.0.9"), 1, None, _wl("w"), ip_address("10.0.0.1"), 80)
    c1 = t.register("p1", Direction.INBOUND, "a", "b", lambda r: closed.append((1, r)), info=info)
    c2 = t.register("p2", Direction.OUTBOUND, "a", "c", lambda r: closed.append((2, r)))
    assert len(t) == 2
    assert [c.id for c in t.for_pod("p1")] == [c1.id]
    assert t.inbound_infos() == {c1.id: info}
    assert t.close([c2.id, 999], "why") == [c2]
    assert closed == [(2, "why")]
    assert not await t.wait_empty(0.01)
    t.unregister(c1)
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, t.unregister, c2)
    assert await t.wait_empty(1.0)
    assert t.all() == []
    assert c1.describe()["direction"] == "inbound"


def test_tracker_close_goes_on_past_a_closer_that_finds_its_socket_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = ConnectionTracker()
    closed: list[str] = []

    def gone(_: str) -> None:
        raise ValueError("negative file descriptor")  # uvloop, socket already closed

    def ebadf(_: str) -> None:
        raise OSError(9, "Bad file descriptor")

    ids = [
        t.register("p", Direction.INBOUND, "a", "b", gone).id,
        t.register("p", Direction.INBOUND, "a", "c", ebadf).id,
        t.register("p", Direction.INBOUND, "a", "d", closed.append).id,
    ]
    with caplog.at_level(logging.DEBUG, logger="ketch.ztunnel"):
        assert [c.dst for c in t.close(ids, "denied")] == ["b", "c", "d"]
    assert closed == ["denied"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def test_reset_transport_of_a_closed_uvloop_transport_is_a_no_op() -> None:
    """uvloop's pseudo-socket raises ValueError once its fd is gone."""
    import uvloop

    async def main() -> None:
        async def serve(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            reset_transport(w.transport)
            reset_transport(w.transport)  # closing, fd gone: must not raise
            await asyncio.sleep(0)
            reset_transport(w.transport)  # closed
        finally:
            srv.close()

    uvloop.run(main())


# --------------------------------------------------------------------- metrics


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels) if labels else None
    if v is not None:
        return v
    return sum(
        s.value
        for fam in reg.collect()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == x for k, x in labels.items())
    )


def test_metrics_cache_and_byte_accounting() -> None:
    reg = CollectorRegistry()
    m = ZtunnelMetrics(reg)
    src, dst = _wl("src"), _wl("dst")
    ident = SpiffeId(TD, "ns", "default")
    kw: dict[str, Any] = dict(
        src_workload=src,
        src_identity=ident,
        dst_workload=dst,
        dst_service=None,
        security_policy=SecurityPolicy.MUTUAL_TLS,
    )
    v1 = m.label_values(Reporter.SOURCE, **kw)
    v2 = m.label_values(Reporter.SOURCE, **kw)
    assert v1 is v2  # computed once
    c = m.opened(v1)
    c.sync(6, 1)  # live totals so far
    c.sync(10, 5)  # only the increase is added
    c.sync(8, 3)  # totals never go back: nothing
    c.closed(25, 5)  # only the unreported remainder is added
    c.closed(100, 100)  # idempotent
    c.sync(500, 500)  # after close: ignored
    m.opened(v2).closed(1, 2)
    m.opened(m.label_values(Reporter.DESTINATION, **kw)).closed(flag=ResponseFlags.DENY)
    assert m.cached_label_sets() == 2
    assert _sample(reg, "istio_tcp_connections_opened_total", reporter="source") == 2
    assert _sample(reg, "istio_tcp_connections_closed_total", reporter="source") == 2
    assert _sample(reg, "istio_tcp_received_bytes_total", reporter="source") == 26
    assert _sample(reg, "istio_tcp_sent_bytes_total", reporter="source") == 7
    assert _sample(reg, "istio_tcp_connections_failed_total", reporter="destination") == 1
    assert (
        _sample(
            reg,
            "istio_tcp_connections_opened_total",
            source_principal=ident.uri,
            source_workload="src",
        )
        == 3  # the denied inbound one too: opened counts attempts
    )


def _series(reg: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    """(sample name, reporter, response_flags) -> value, for the non-zero TCP counters."""
    out: dict[tuple[str, str, str], float] = {}
    for fam in reg.collect():
        for s in fam.samples:
            if s.name.startswith("istio_tcp_connections") and s.value:
                key = (s.name, s.labels["reporter"], s.labels["response_flags"])
                out[key] = out.get(key, 0.0) + s.value
    return out


def test_metrics_opened_closed_failed_as_ztunnel() -> None:
    """Every opened connection is closed; a failure is counted as failed *and* closed on
    the label set with its flag; success and `-` never count as failed; no `_created`."""
    reg = CollectorRegistry()
    m = ZtunnelMetrics(reg)
    kw: dict[str, Any] = dict(
        src_workload=_wl("src"),
        src_identity=SpiffeId(TD, "ns", "default"),
        dst_workload=_wl("dst"),
        dst_service=None,
        security_policy=SecurityPolicy.MUTUAL_TLS,
    )
    inbound = m.label_values(Reporter.DESTINATION, **kw)
    outbound = m.label_values(Reporter.SOURCE, **kw)
    m.opened(inbound).closed(10, 20)
    m.opened(inbound).closed(flag=ResponseFlags.DENY)
    m.opened(outbound).closed(flag=ResponseFlags.CONNECT)
    m.opened(outbound).closed(flag=ResponseFlags.TLS_FAILURE)
    still_open = m.opened(outbound)
    assert _series(reg) == {
        ("istio_tcp_connections_opened_total", "destination", "-"): 2,
        ("istio_tcp_connections_closed_total", "destination", "-"): 1,
        ("istio_tcp_connections_closed_total", "destination", "DENY"): 1,
        ("istio_tcp_connections_failed_total", "destination", "DENY"): 1,
        ("istio_tcp_connections_opened_total", "source", "-"): 3,
        ("istio_tcp_connections_closed_total", "source", "CONNECT"): 1,
        ("istio_tcp_connections_failed_total", "source", "CONNECT"): 1,
        ("istio_tcp_connections_closed_total", "source", "TLS_FAILURE"): 1,
        ("istio_tcp_connections_failed_total", "source", "TLS_FAILURE"): 1,
    }
    assert reg.get_sample_value("istio_tcp_sockets_open", {"reporter": "source"}) == 1
    assert reg.get_sample_value("istio_tcp_sockets_open", {"reporter": "destination"}) == 0
    still_open.closed(1, 1)
    assert reg.get_sample_value("istio_tcp_sockets_open", {"reporter": "source"}) == 0
    names = {s.name for fam in reg.collect() for s in fam.samples}
    assert not [n for n in names if n.endswith("_created")]


def test_connect_failure_flags() -> None:
    exp = (SpiffeId(TD, "ns", "a"),)
    assert connect_failure_flag(IdentityMismatch(exp, ())) is ResponseFlags.TLS_FAILURE
    assert connect_failure_flag(TlsError("handshake")) is ResponseFlags.TLS_FAILURE
    assert (
        connect_failure_flag(ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad preface"))
        is ResponseFlags.H2_HANDSHAKE_FAILURE
    )
    assert connect_failure_flag(ConnectRefused("10.0.0.1:80", 401)) is ResponseFlags.CONNECT
    assert connect_failure_flag(ConnectionRefusedError()) is ResponseFlags.CONNECT
    assert connect_failure_flag(TimeoutError()) is ResponseFlags.CONNECT
    assert connect_failure_flag(IdentityUnavailable("no CA")) is ResponseFlags.IDENTITY_ERROR
    assert not ResponseFlags.NONE.failed
    assert ResponseFlags.NONE.value == "-"


# --------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


def test_to_tls_cert_bridges_both_cert_types(ca: CertificateAuthority) -> None:
    ident = SpiffeId(TD, "ns", "sa")
    issued = ca.issue_workload(ident)
    from datetime import UTC, datetime

    mgr = ManagerCert.from_chain(ident, issued.key_pem, list(issued.chain_pem), datetime.now(UTC))
    a, b = to_tls_cert(issued), to_tls_cert(mgr)
    assert a == b
    assert a.chain_pem[0].startswith(b"-----BEGIN CERTIFICATE-----")
    assert to_tls_cert(a) is a
    with pytest.raises(TypeError):
        to_tls_cert(object())


class _Source:
    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.calls = 0
        self.fail = False

    async def fetch(self, identity: SpiffeId) -> Any:
        self.calls += 1
        if self.fail:
            from ketch.identity.errors import CaUnavailable

            raise CaUnavailable("down")
        return self.ca.issue_workload(identity)


async def test_identity_contexts_cache_refresh_and_failure(ca: CertificateAuthority) -> None:
    src = _Source(ca)
    ids = IdentityContexts(src, ca.trust_bundle, refresh_interval=0.05)
    ident = SpiffeId(TD, "ns", "sa")
    changes: list[SpiffeId] = []
    ids.on_change.append(lambda i, _ctx: changes.append(i))
    await ids.ensure(ident)
    await ids.ensure(ident)  # cached
    assert src.calls == 1
    ctx = ids.client_context(ident)
    assert ids.server_context(ident) is not ctx
    await asyncio.sleep(0.06)
    src.fail = True
    await ids.ensure(ident)  # refresh fails: keeps the valid certificate
    assert ids.client_context(ident) is ctx
    src.fail = False
    await asyncio.sleep(0.06)
    await ids.ensure(ident)  # new certificate: new contexts, listeners notified
    assert ids.client_context(ident) is not ctx
    assert changes == [ident, ident]
    other = SpiffeId(TD, "ns", "other")
    src.fail = True
    with pytest.raises(IdentityUnavailable):
        await ids.ensure(other)
    assert [e["identity"] for e in ids.snapshot()] == [ident.uri]


# --------------------------------------------------------------------- splice


async def test_splice_copies_both_ways_with_half_close() -> None:
    """client <-> [server side A | splice | side B] <-> upstream, all on loopback."""
    up_got = asyncio.get_running_loop().create_future()

    async def upstream(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()  # until the spliced half-close arrives
        up_got.set_result(data)
        w.write(hashlib.sha256(data).digest() * 1000)
        await w.drain()
        w.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = up.sockets[0].getsockname()[1]
    results = []

    async def front(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        s = socket.socket()
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", up_port))
        sp = await start_splice(r, w, s)
        results.append(await sp.wait())

    fr = await asyncio.start_server(front, "127.0.0.1", 0)
    payload = os.urandom(1_000_000)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", fr.sockets[0].getsockname()[1])
        w.write(payload)
        await w.drain()
        w.write_eof()
        back = await asyncio.wait_for(r.read(), 10)
        w.close()
        assert await asyncio.wait_for(up_got, 5) == payload
        assert back == hashlib.sha256(payload).digest() * 1000
        for _ in range(100):
            if results:
                break
            await asyncio.sleep(0.01)
        assert results[0].a_to_b == len(payload)
        assert results[0].b_to_a == len(back)
        assert results[0].error is None
    finally:
        fr.close()
        up.close()
