"""The node proxy's HTTP endpoints: routing tables (pure) and the h11 I/O layer on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ketch.standalone.run import StandaloneError, parse_address
from ketch.ztunnel.admin import (
    HttpEndpoint,
    Request,
    Response,
    admin_routes,
    metrics_routes,
    parse_levels,
    readiness_routes,
    respond,
)
from ketch.ztunnel.metrics import ZtunnelMetrics

PODS: list[dict[str, Any]] = [
    {"uid": "u1", "name": "a", "namespace": "app", "state": "ready", "error": None},
    {
        "uid": "u2",
        "name": "b",
        "namespace": "app",
        "state": "waiting_for_certificate",
        "error": "CA unreachable",
    },
]


class Box:
    def __init__(self) -> None:
        self.ready = False
        self.quits = 0


@pytest.fixture
def box() -> Box:
    return Box()


@pytest.fixture
def routes(box: Box) -> dict[str, Any]:
    reg = CollectorRegistry()
    ZtunnelMetrics(reg)

    def quit() -> None:
        box.quits += 1

    return {
        **metrics_routes(reg),
        **admin_routes(
            lambda: {"node": "n1", "pods": PODS},
            quit,
            lambda: [] if box.ready else ["workload manager", "proxy"],
        ),
    }


@pytest.fixture
def restore_levels() -> Iterator[None]:
    names = ["ketch", "ketch.ztunnel", "ketch.ztunnel.access", "x.y"]
    before = {n: logging.getLogger(n).level for n in names}
    yield
    for n, lv in before.items():
        logging.getLogger(n).setLevel(lv)


@pytest.mark.parametrize(
    ("method", "target", "status", "needle"),
    [
        ("GET", "/config_dump", 200, b'"node": "n1"'),
        ("GET", "/config_dump?x=1", 200, b'"node": "n1"'),
        ("HEAD", "/config_dump", 200, b'"node": "n1"'),
        ("POST", "/config_dump", 405, b"accepts GET"),
        ("GET", "/nope", 404, b"try one of"),
        ("GET", "/quitquitquit", 405, b"accepts POST"),
        ("GET", "/healthz/ready", 500, b"not ready, pending: proxy, workload manager\n"),
        ("GET", "/metrics", 200, b"istio_tcp_connections_opened_total"),
        ("GET", "/stats/prometheus", 200, b"# TYPE"),
        ("POST", "/logging", 400, b"level="),
        ("POST", "/logging?level=loud", 400, b"unknown log level 'loud'"),
        ("POST", "/logging?level=", 400, b"no level given"),
    ],
)
def test_routes(
    routes: dict[str, Any], method: str, target: str, status: int, needle: bytes
) -> None:
    r = respond(routes, method, target)
    assert r.status == status
    assert needle in r.body


def test_ready_and_quit(routes: dict[str, Any], box: Box) -> None:
    box.ready = True
    assert respond(routes, "GET", "/healthz/ready") == Response(200, b"ready\n")
    assert box.quits == 0
    assert respond(routes, "POST", "/quitquitquit").status == 200
    assert box.quits == 1


def test_logging_changes_levels(routes: dict[str, Any], restore_levels: None) -> None:
    r = respond(routes, "POST", "/logging?level=x.y:error,warning")
    assert r.status == 200
    view = json.loads(r.body)
    assert view["x.y"] == "ERROR"
    assert view["ketch"] == "WARNING"
    assert logging.getLogger("x.y").level == logging.ERROR
    assert json.loads(respond(routes, "GET", "/logging").body)["x.y"] == "ERROR"


def test_a_failing_handler_is_a_500_not_a_crash() -> None:
    def boom(_: Request) -> Response:
        raise RuntimeError("bug")

    r = respond({"/x": {"GET": boom}}, "GET", "/x")
    assert r.status == 500
    assert b"see the proxy log" in r.body


def test_readiness_as_ztunnel() -> None:
    """200 `ready`, else 500 with ztunnel's `not ready, pending: <tasks>` (sorted)."""
    tasks: list[str] = ["workload manager", "proxy"]
    get = readiness_routes(lambda: tasks)["/healthz/ready"]["GET"]
    r = get(Request("GET", "/healthz/ready"))
    assert (r.status, r.body) == (500, b"not ready, pending: proxy, workload manager\n")
    tasks.clear()
    r = get(Request("GET", "/healthz/ready"))
    assert (r.status, r.body) == (200, b"ready\n")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("debug", [("ketch", logging.DEBUG)]),
        ("WARN", [("ketch", logging.WARNING)]),
        ("a.b:info, c:error", [("a.b", logging.INFO), ("c", logging.ERROR)]),
        (":trace", [("ketch", logging.DEBUG)]),
    ],
)
def test_parse_levels(spec: str, expected: list[tuple[str, int]]) -> None:
    assert parse_levels(spec) == expected


@pytest.mark.parametrize("spec", ["", ",", "a:", "verbose", "a:b:c"])
def test_parse_levels_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="level"):
        parse_levels(spec)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:15000", ("127.0.0.1", 15000)),
        (":15020", ("0.0.0.0", 15020)),
        ("[::1]:15000", ("::1", 15000)),
        ("localhost:1", ("localhost", 1)),
        ("off", None),
        ("", None),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_address(text, "--x") == expected


@pytest.mark.parametrize("text", ["15000", "host:15000", "1.2.3.4:99999", "1.2.3.4:", "a:b"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(StandaloneError, match="--x"):
        parse_address(text, "--x")


async def _exchange(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    await w.drain()
    try:
        async with asyncio.timeout(5):
            return await r.read()
    finally:
        w.close()


async def test_http_endpoint_over_loopback(routes: dict[str, Any]) -> None:
    ep = HttpEndpoint("test endpoint", routes)
    _, port = await ep.start("127.0.0.1", 0)
    try:
        got = await _exchange(port, b"GET /config_dump HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["node"] == "n1"
        got = await _exchange(port, b"HEAD /config_dump HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 ")
        assert got.endswith(b"\r\n\r\n")  # headers only
        # hostile input: garbage, an oversized head, a client that says nothing and leaves
        assert (await _exchange(port, b"\x00\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        big = b"GET / HTTP/1.1\r\nX: " + b"a" * 64000 + b"\r\n\r\n"
        assert (await _exchange(port, big)).startswith(b"HTTP/1.1 431")
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()
        # still serving
        again = await _exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
        assert b"istio_tcp_connections_opened_total" in again
    finally:
        await ep.close()


async def test_busy_port_is_a_clear_error(routes: dict[str, Any]) -> None:
    first = HttpEndpoint("first", routes)
    _, port = await first.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=f"cannot listen for second on 127.0.0.1:{port}"):
            await HttpEndpoint("second", routes).start("127.0.0.1", port)
    finally:
        await first.close()
