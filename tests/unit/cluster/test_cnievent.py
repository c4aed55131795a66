"""The CNI event client against a real unix-socket server: 200 goes on, anything else fails
with a message that says what happened; hostile servers never hang or crash it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import pytest

from ketch.cluster.cnievent import CniEventError, cmdadd, payload

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Callable[[Handler], Awaitable[Path]]]:
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[Any] | None] = set()

    async def start(handler: Handler) -> Path:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.add(asyncio.current_task())
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        path = tmp_path / f"s{len(servers)}.sock"
        servers.append(await asyncio.start_unix_server(tracked, path=str(path)))
        return path

    yield start
    for s in servers:
        s.close()
    for task in handlers:  # a silent server is still sleeping: end it, closing its socket
        if task is not None:
            task.cancel()
    await asyncio.sleep(0.01)
    for s in servers:
        await s.wait_closed()


def respond(status: int, body: bytes = b"", seen: list[tuple[str, bytes]] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        target, data = "", b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                target = event.target.decode()
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        if seen is not None:
            seen.append((target, data))
        headers = [("Content-Length", str(len(body)))]
        writer.write(
            conn.send(h11.Response(status_code=status, headers=headers))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        writer.close()

    return handle


BODY = payload("/run/netns/k-p-1", "web", "default", "uid-1", ["10.244.1.2"])


def test_payload_is_istios_cni_plugin_event() -> None:
    assert json.loads(BODY) == {
        "Netns": "/run/netns/k-p-1",
        "PodName": "web",
        "PodNamespace": "default",
        "PodUID": "uid-1",
        "IPs": ["10.244.1.2"],
    }


async def test_200_goes_on(server: Callable[[Handler], Awaitable[Path]]) -> None:
    seen: list[tuple[str, bytes]] = []
    path = await server(respond(200, seen=seen))
    await cmdadd(path, BODY)
    assert seen == [("/cmdadd", BODY)]


async def test_non_200_fails_with_the_agents_reason(
    server: Callable[[Handler], Awaitable[Path]],
) -> None:
    path = await server(respond(500, b"failed to add pod to mesh:\n  no ztunnel"))
    with pytest.raises(CniEventError, match=r"HTTP 500 .*: failed to add pod to mesh: no ztunnel"):
        await cmdadd(path, BODY)


async def test_no_socket(tmp_path: Path) -> None:
    with pytest.raises(CniEventError, match=r"does not exist .*node agent running"):
        await cmdadd(tmp_path / "missing.sock", BODY)


async def test_not_a_socket(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(CniEventError, match="failed"):
        await cmdadd(plain, BODY)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(b"\x00\xff not http at all\r\n\r\n")
    await writer.drain()
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)
    writer.close()


async def _flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 300_000)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def _half_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (_garbage, "failed"),
        (_hang_up, "failed"),
        (_silent, "no answer within 0.3s"),
        (_flood, "failed"),
        (_half_body, "failed"),
    ],
)
async def test_hostile_servers_fail_cleanly(
    server: Callable[[Handler], Awaitable[Path]], handler: Handler, message: str
) -> None:
    path = await server(handler)
    with pytest.raises(CniEventError, match=message):
        await cmdadd(path, BODY, limit=0.3)
