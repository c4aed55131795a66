"""`ClusterDns` over real sockets on loopback (no root): store-driven answers, and hostile
clients (garbage, truncation, idle and flooding TCP clients, oversized length prefixes)
that must never produce a traceback or stop it answering."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from ketch.cluster.dns import ClusterDns
from ketch.cluster.layout import ClusterLayout
from ketch.store import SqliteStore
from ketch.util.tasks import spawn

HOST = "127.0.0.1"


def service_manifest(name: str, ip: str, ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }


@dataclass
class Running:
    server: ClusterDns
    store: SqliteStore
    port: int


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    store = SqliteStore(tmp_path / "ketch.db")
    store.apply([service_manifest("web", "10.96.0.20")])
    server = ClusterDns(
        store,
        ClusterLayout(tmp_path),
        "node1",
        address=HOST,
        port=0,
        idle_timeout=0.5,
        max_tcp_connections=20,
    )
    stop = asyncio.Event()
    task = spawn(server.run(stop), "cluster-dns-test")
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        assert server.bound_port is not None
        yield Running(server, store, server.bound_port)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        store.close()


async def query(
    port: int, name: str, rtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    q = dns.message.make_query(name, rtype)
    if tcp:
        return await dns.asyncquery.tcp(q, HOST, port=port, timeout=5)
    return await dns.asyncquery.udp(q, HOST, port=port, timeout=5)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert bad == [], [r.getMessage() for r in bad]


async def test_answers_udp_and_tcp_and_follows_the_store(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    for tcp in (False, True):
        r = await query(running.port, "web.shop.svc.cluster.local", tcp=tcp)
        assert [rd.to_text() for rd in r.answer[0]] == ["10.96.0.20"]
    await asyncio.to_thread(running.store.apply, [service_manifest("api", "10.96.0.30")])
    deadline = time.monotonic() + 10
    while True:
        r = await query(running.port, "api.shop.svc.cluster.local")
        if r.rcode() == dns.rcode.NOERROR:
            break
        assert time.monotonic() < deadline, "the new Service never resolved"
        await asyncio.sleep(0.05)
    assert [rd.to_text() for rd in r.answer[0]] == ["10.96.0.30"]
    await asyncio.to_thread(running.store.delete, "Service", "shop", "api")
    deadline = time.monotonic() + 10
    while (await query(running.port, "api.shop.svc.cluster.local")).rcode() != dns.rcode.NXDOMAIN:
        assert time.monotonic() < deadline, "the deleted Service still resolves"
        await asyncio.sleep(0.05)
    no_tracebacks(caplog)


def udp_exchange(port: int, payload: bytes, wait: float = 0.3) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(payload, (HOST, port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


async def test_garbage_and_truncated_datagrams(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    good = dns.message.make_query("web.shop.svc.cluster.local", "A").to_wire()
    cases = [
        b"",
        b"\x00",
        b"\x12\x34\x01",  # half a header
        good[:12],  # header promising a question that is not there
        good[:-3],  # question cut short
        good + b"\x00" * 7,  # trailing junk
        os.urandom(512),
        os.urandom(4000),
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + b"\x3f"
        + b"a" * 63
        + b"\xc0\x0c",  # pointer loop
    ]
    for payload in cases:
        reply = await asyncio.to_thread(udp_exchange, running.port, payload)
        if reply is not None:
            msg = dns.message.from_wire(reply)
            assert msg.flags & dns.flags.QR
            assert msg.rcode() in (dns.rcode.FORMERR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    r = await query(running.port, "web.shop.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR
    no_tracebacks(caplog)


async def test_many_questions_and_edns_over_udp(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    q = dns.message.make_query("web.shop.svc.cluster.local", "A", use_edns=0, payload=1232)
    for i in range(30):
        q.question.append(
            dns.rrset.RRset(dns.name.from_text(f"x{i}.cluster.local"), 1, dns.rdatatype.A)
        )
    reply = await asyncio.to_thread(udp_exchange, running.port, q.to_wire())
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    e = dns.message.make_query("web.shop.svc.cluster.local", "A", use_edns=0, payload=4096)
    r = await dns.asyncquery.udp(e, HOST, port=running.port, timeout=5)
    assert r.edns == 0
    assert r.rcode() == dns.rcode.NOERROR
    no_tracebacks(caplog)


async def test_idle_tcp_client_is_dropped(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(HOST, running.port)
    try:
        # meanwhile others are answered
        r = await query(running.port, "web.shop.svc.cluster.local", tcp=True)
        assert r.rcode() == dns.rcode.NOERROR
        # the server closes the idle one after idle_timeout (0.5 s)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    no_tracebacks(caplog)


async def test_half_a_tcp_message_then_silence(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(HOST, running.port)
    try:
        writer.write(struct.pack("!H", 60) + b"\x00" * 10)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    no_tracebacks(caplog)


@pytest.mark.parametrize("prefix", [0xFFFF, 5000, 0, 3])
async def test_bad_tcp_length_prefix_closes(
    running: Running, prefix: int, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection(HOST, running.port)
    try:
        writer.write(struct.pack("!H", prefix) + b"\x00" * 8)
        await writer.drain()
        start = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        # closed for the prefix itself, not after waiting for 64 KiB that never come
        assert time.monotonic() - start < 5
    finally:
        writer.close()
        await writer.wait_closed()
    no_tracebacks(caplog)


async def test_tcp_pipelined_queries(running: Running) -> None:
    reader, writer = await asyncio.open_connection(HOST, running.port)
    try:
        msgs = [
            dns.message.make_query("web.shop.svc.cluster.local", "A"),
            dns.message.make_query("nope.shop.svc.cluster.local", "A"),
        ]
        writer.write(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in msgs)))
        await writer.drain()
        got = []
        for _ in msgs:
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
            got.append(dns.message.from_wire(await reader.readexactly(n)))
        assert [(m.id, m.rcode()) for m in got] == [
            (msgs[0].id, dns.rcode.NOERROR),
            (msgs[1].id, dns.rcode.NXDOMAIN),
        ]
    finally:
        writer.close()
        await writer.wait_closed()


async def test_tcp_connection_flood(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    conns = []
    try:
        for _ in range(60):  # three times the cap of 20
            conns.append(await asyncio.open_connection(HOST, running.port))
        # the ones beyond the cap were closed at once
        await asyncio.sleep(0.2)
        closed = 0
        for reader, _ in conns:
            try:
                if await asyncio.wait_for(reader.read(), 0.05) == b"":
                    closed += 1
            except TimeoutError:
                pass
        assert closed >= 30
        # UDP keeps answering during the flood
        assert (
            await query(running.port, "web.shop.svc.cluster.local")
        ).rcode() == dns.rcode.NOERROR
    finally:
        for _, writer in conns:
            writer.close()
        for _, writer in conns:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    # once they are gone (or timed out), TCP answers again
    deadline = time.monotonic() + 10
    while True:
        try:
            r = await query(running.port, "web.shop.svc.cluster.local", tcp=True)
            break
        except (ConnectionError, EOFError, dns.exception.DNSException):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert r.rcode() == dns.rcode.NOERROR
    no_tracebacks(caplog)


async def test_reset_tcp_client(running: Running, caplog: pytest.LogCaptureFixture) -> None:
    def reset() -> None:
        s = socket.create_connection((HOST, running.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"\x00\x40" + b"\x00" * 4)
        s.close()  # RST

    for _ in range(5):
        await asyncio.to_thread(reset)
    assert (await query(running.port, "web.shop.svc.cluster.local", tcp=True)).rcode() == 0
    no_tracebacks(caplog)


async def test_stop_releases_the_port(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ketch.db")
    server = ClusterDns(store, ClusterLayout(tmp_path), "node1", address=HOST, port=0)
    stop = asyncio.Event()
    task = spawn(server.run(stop), "cluster-dns-stop")
    try:
        await asyncio.wait_for(server.ready.wait(), 10)
        port = server.bound_port
        assert port is not None
        idle = await asyncio.open_connection(HOST, port)  # an open client must not block stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        store.close()
    idle[1].close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, port))  # free again


async def test_bind_failure_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "ketch.db")
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine: EADDRNOTAVAIL
    server = ClusterDns(store, ClusterLayout(tmp_path), "node1", address="192.0.2.1", port=0)
    stop = asyncio.Event()
    task = spawn(server.run(stop), "cluster-dns-bind")
    try:
        deadline = time.monotonic() + 10
        while not any("cannot listen" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        store.close()
    msg = next(r.getMessage() for r in caplog.records if "cannot listen" in r.getMessage())
    assert "lo in node node1's netns" in msg
    assert not any(r.exc_info for r in caplog.records)
