"""The node proxy's HTTP endpoints (REFERENCE.md "Components and ports"):

- 15020 `/metrics` and `/stats/prometheus`: the Istio TCP counters (Prometheus text format);
- 15021 `/healthz/ready`: as ztunnel (readiness/server.rs): 200 `ready` once nothing is
  pending, else 500 `not ready, pending: <tasks>` (the proxy started and not draining, the
  config loaded, every pod's listeners up). One pod still waiting for its workload or
  certificate does not hold the node back; its state is in `/config_dump`;
- 15000, localhost only: `/config_dump` (JSON: workloads, services, policies, certificates,
  pods, connections), `/logging` (GET shows levels; POST `?level=debug` or
  `?level=ketch.ztunnel.access:warning,ketch:info` sets them), `/quitquitquit` (POST: drain
  and exit, as SIGTERM does), `/healthz/ready`.

Routing is a pure function, `respond(routes, method, target)`, tested with tables; the I/O
layer (`HttpEndpoint`) speaks HTTP/1.1 through h11 on asyncio, one request per connection
(`Connection: close`), with a bounded request head and a read timeout, so a slow or hostile
scraper cannot hold the proxy's memory or its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("ketch.ztunnel.admin")

MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0
LINGER = 1.0
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode() + (b"" if text.endswith("\n") else b"\n"))

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", JSON)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)


Handler = Callable[[Request], Response]
Routes = Mapping[str, Mapping[str, Handler]]  # path -> method -> handler


def respond(routes: Routes, method: str, target: str) -> Response:
    """The response for one request; never raises for bad input (404/405/400/500)."""
    try:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        return Response.text(400, f"bad request target {target!r}")
    methods = routes.get(parts.path)
    if methods is None:
        known = ", ".join(sorted(routes))
        return Response.text(404, f"no such endpoint {parts.path!r}; try one of: {known}")
    handler = methods.get(method)
    if handler is None and method == "HEAD":
        handler = methods.get("GET")
    if handler is None:
        allowed = ", ".join(sorted(methods))
        return Response.text(405, f"{parts.path} accepts {allowed}, not {method}")
    try:
        return handler(Request(method, parts.path, query))
    except Exception:  # one handler bug must not take the endpoint down
        log.exception("admin handler for %s %s failed", method, parts.path)
        return Response.text(500, f"internal error serving {parts.path}; see the proxy log")


# --------------------------------------------------------------------------- handlers


def metrics_routes(
    registry: CollectorRegistry, before: Callable[[], None] | None = None
) -> dict[str, dict[str, Handler]]:
    """`before` runs first on every scrape (the proxy flushes open connections' bytes)."""

    def metrics(_: Request) -> Response:
        if before is not None:
            before()
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return {"/metrics": {"GET": metrics}, "/stats/prometheus": {"GET": metrics}}


def readiness_routes(pending: Callable[[], list[str]]) -> dict[str, dict[str, Handler]]:
    """`pending()` names what the node still waits for (empty: ready)."""

    def healthz(_: Request) -> Response:
        tasks = pending()
        if not tasks:
            return Response.text(200, "ready")
        return Response.text(500, f"not ready, pending: {', '.join(sorted(tasks))}")

    return {"/healthz/ready": {"GET": healthz}}


LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO}
LEVELS |= {"warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}
LEVELS |= {"critical": logging.CRITICAL, "off": logging.CRITICAL + 10}


def parse_levels(spec: str, default_logger: str = "ketch") -> list[tuple[str, int]]:
    """`debug` or `ketch.ztunnel.access:warning,ketch:info` -> [(logger, level)].
    Raises ValueError with the offending item."""
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in spec.split(",")):
        if not item:
            continue
        name, _, level = item.rpartition(":") if ":" in item else ("", "", item)
        name = name.strip() or default_logger
        lv = LEVELS.get(level.strip().lower())
        if lv is None:
            raise ValueError(
                f"unknown log level {level!r} in {item!r}; use one of {', '.join(sorted(LEVELS))}"
            )
        out.append((name, lv))
    if not out:
        raise ValueError("no level given; use e.g. ?level=debug or ?level=ketch.ztunnel:debug")
    return out


def _levels_view(loggers: Sequence[str]) -> dict[str, str]:
    return {n: logging.getLevelName(logging.getLogger(n).getEffectiveLevel()) for n in loggers}


def admin_routes(
    config_dump: Callable[[], dict[str, Any]],
    quit: Callable[[], None],
    pending: Callable[[], list[str]],
) -> dict[str, dict[str, Handler]]:
    shown = ["ketch", "ketch.ztunnel", "ketch.ztunnel.access", "ketch.identity"]

    def dump(_: Request) -> Response:
        return Response.json(config_dump())

    def get_logging(_: Request) -> Response:
        return Response.json(_levels_view(shown))

    def set_logging(req: Request) -> Response:
        specs = req.query.get("level")
        if not specs:
            return Response.text(400, "POST /logging?level=LEVEL or ?level=LOGGER:LEVEL,...")
        try:
            changes = [c for spec in specs for c in parse_levels(spec)]
        except ValueError as e:
            return Response.text(400, str(e))
        for name, lv in changes:
            logging.getLogger(name).setLevel(lv)
            if name not in shown:
                shown.append(name)
        log.info(
            "log levels changed: %s",
            ", ".join(f"{n}={logging.getLevelName(v)}" for n, v in changes),
        )
        return Response.json(_levels_view(shown))

    def quitquitquit(_: Request) -> Response:
        quit()
        return Response.text(200, "OK: draining, then exiting")

    return {
        "/config_dump": {"GET": dump},
        "/logging": {"GET": get_logging, "POST": set_logging},
        "/quitquitquit": {"POST": quitquitquit},
        **readiness_routes(pending),
    }


# --------------------------------------------------------------------------- I/O


class HttpEndpoint:
    """One listening address serving `routes` over HTTP/1.1."""

    def __init__(self, name: str, routes: Routes) -> None:
        self.name = name
        self.routes = routes
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, *, quiet: bool = False) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        try:
            self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        except OSError as e:
            raise OSError(
                e.errno, f"cannot listen for {self.name} on {host}:{port}: {e.strerror or e}"
            ) from e
        addr = self._server.sockets[0].getsockname()
        if not quiet:
            log.info("%s listening on %s:%d", self.name, addr[0], addr[1])
        return str(addr[0]), int(addr[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        head = False
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    req = await _read_request(conn, reader)
                head = req.method == b"HEAD"
                resp = respond(
                    self.routes,
                    req.method.decode("ascii", "replace"),
                    req.target.decode("ascii", "replace"),
                )
            except h11.RemoteProtocolError as e:
                resp = Response.text(e.error_status_hint, f"bad request: {e}")
            writer.write(_render(conn, resp, head=head))
            await writer.drain()
            if conn.their_state is h11.ERROR:  # we stopped reading mid-request
                await _linger(reader, writer)
        except (TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass  # nothing sensible to answer: just close
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After answering a request we did not read whole (a 400/431), half-close and discard
    what the client still sends for a moment, so the kernel does not turn our close into a
    reset that destroys the answer before the client reads it. Bounded in bytes and time."""
    with contextlib.suppress(OSError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER):
            budget = 1 << 20
            while budget > 0 and (data := await reader.read(65536)):
                budget -= len(data)


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(8192)
            conn.receive_data(data)  # b"" = EOF: h11 then yields ConnectionClosed
            continue
        if isinstance(event, h11.Request):
            return event
        raise ConnectionError("client closed before sending a request")


def _render(conn: h11.Connection, resp: Response, *, head: bool = False) -> bytes:
    headers = [
        ("Content-Type", resp.content_type),
        ("Content-Length", str(len(resp.body))),
        ("Connection", "close"),
    ]
    try:
        reason = HTTPStatus(resp.status).phrase.encode()
    except ValueError:
        reason = b""
    out = conn.send(h11.Response(status_code=resp.status, headers=headers, reason=reason)) or b""
    if not head:  # a HEAD response carries GET's headers and no body
        out += conn.send(h11.Data(data=resp.body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out
