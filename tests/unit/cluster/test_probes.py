"""Probe decisions (thresholds, timing) and single attempts against real local servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ketch.api.core import Container
from ketch.cluster.probes import (
    Exec,
    HttpGet,
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    ProbeTracker,
    TcpSocket,
    http_get,
    netns_dialer,
    spec_from_api,
    tcp_socket,
)

OK = ProbeResult(True)
BAD = ProbeResult(False, "refused")


def run(tracker: ProbeTracker, results: str) -> list[bool]:
    """Feed results ('+' success, '-' failure); the verdict after each."""
    out = []
    for i, r in enumerate(results):
        tracker.record(OK if r == "+" else BAD, float(i))
        out.append(tracker.verdict)
    return out


@pytest.mark.parametrize(
    ("kind", "success", "failure", "results", "verdicts"),
    [
        # readiness starts false; one success makes it ready
        (ProbeKind.READINESS, 1, 3, "+", [True]),
        (ProbeKind.READINESS, 1, 3, "+---", [True, True, True, False]),
        (ProbeKind.READINESS, 2, 1, "+-++", [False, False, False, True]),
        (ProbeKind.READINESS, 1, 2, "+-+--", [True, True, True, True, False]),
        # liveness starts true; failureThreshold consecutive failures kill
        (ProbeKind.LIVENESS, 1, 3, "--+---", [True, True, True, True, True, False]),
        (ProbeKind.LIVENESS, 1, 1, "-", [False]),
    ],
)
def test_thresholds(
    kind: ProbeKind, success: int, failure: int, results: str, verdicts: list[bool]
) -> None:
    spec = ProbeSpec(TcpSocket(80), success_threshold=success, failure_threshold=failure)
    tracker = ProbeTracker(kind, spec, 0.0)
    assert tracker.verdict is (kind is ProbeKind.LIVENESS)
    assert run(tracker, results) == verdicts


def test_schedule_initial_delay_then_period() -> None:
    tracker = ProbeTracker(
        ProbeKind.READINESS, ProbeSpec(TcpSocket(80), initial_delay=5, period=2), started=100.0
    )
    assert tracker.due() == 105.0
    assert tracker.record(OK, 105.5) is True  # verdict flipped
    assert tracker.due() == 107.5
    assert tracker.record(OK, 107.6) is False


def test_spec_from_api_resolves_named_ports() -> None:
    container = Container.model_validate(
        {
            "name": "web",
            "command": ["x"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {
                "httpGet": {"port": "http", "path": "/healthz"},
                "periodSeconds": 3,
                "timeoutSeconds": 2,
                "initialDelaySeconds": 1,
                "successThreshold": 2,
                "failureThreshold": 4,
            },
            "livenessProbe": {"exec": {"command": ["true"]}},
        }
    )
    assert container.readiness_probe is not None
    assert container.liveness_probe is not None
    assert spec_from_api(container.readiness_probe, container) == ProbeSpec(
        HttpGet(8080, "/healthz"), 1.0, 3.0, 2.0, 2, 4
    )
    assert spec_from_api(container.liveness_probe, container).action == Exec(("true",))


async def serve(response: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if response:
                writer.write(response)
                await writer.drain()
            else:
                await asyncio.sleep(5)  # never answer
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def closing() -> AsyncIterator[list[asyncio.Server]]:
    servers: list[asyncio.Server] = []
    yield servers
    for s in servers:
        s.close()
        await s.wait_closed()


DIAL = netns_dialer(None)


@pytest.mark.parametrize(
    ("response", "ok", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True, "statuscode: 200"),
        (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n", True, "302"),
        (b"HTTP/1.1 399 Odd\r\nContent-Length: 0\r\n\r\n", True, "399"),
        (b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n", False, "statuscode: 400"),
        (b"HTTP/1.0 503 Unavailable\r\n\r\n", False, "statuscode: 503"),
        (b"garbage\r\n\r\n", False, "bad HTTP response"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200_000, False, "bad HTTP response"),  # no end
        (b"", False, "timeout after 0.3s"),
    ],
)
async def test_http_get(
    closing: list[asyncio.Server], response: bytes, ok: bool, message: str
) -> None:
    server, port = await serve(response)
    closing.append(server)
    result = await http_get(HttpGet(port, "/healthz"), "127.0.0.1", 0.3, DIAL)
    assert result.ok is ok
    assert message in result.message


async def test_http_get_connection_closed_without_response(
    closing: list[asyncio.Server],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    closing.append(server)
    port = server.sockets[0].getsockname()[1]
    result = await http_get(HttpGet(port), "127.0.0.1", 1.0, DIAL)
    assert not result.ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_http_get_refused() -> None:
    result = await http_get(HttpGet(free_port()), "127.0.0.1", 1.0, DIAL)
    assert not result.ok
    assert "connection refused" in result.message


async def test_tcp_socket(closing: list[asyncio.Server]) -> None:
    server, port = await serve(b"x")
    closing.append(server)
    assert (await tcp_socket(TcpSocket(port), "127.0.0.1", 1.0, DIAL)).ok
    refused = await tcp_socket(TcpSocket(free_port()), "127.0.0.1", 1.0, DIAL)
    assert not refused.ok
    assert refused.message.endswith("connection refused")


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a throwaway self-signed certificate (the kubelet does not
    verify probe certificates, so any certificate must do)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


async def test_https_probe_skips_certificate_checks(
    closing: list[asyncio.Server], tmp_path: Path
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self_signed(tmp_path))
    closing.append(server)
    port = server.sockets[0].getsockname()[1]
    result = await http_get(HttpGet(port, "/", scheme="HTTPS"), "127.0.0.1", 2.0, DIAL)
    assert result.ok, result.message
    # plain HTTP to a TLS port is a failure with a reason, not an exception
    plain = await http_get(HttpGet(port), "127.0.0.1", 2.0, DIAL)
    assert not plain.ok
