"""The CNI-event endpoint over a real unix socket: the kubelet's POST /cmdadd, the
handler's refusal passed back as a non-200, and hostile clients (garbage, oversized body,
slow and idle clients) answered or dropped without a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ketch.agent import cni_server
from ketch.agent.cni_server import CniEvent, CniRefused, CniServer

EVENT = {
    "Netns": "/run/netns/ketch-p-abc",
    "PodName": "web-1",
    "PodNamespace": "app",
    "PodUID": "u1",
    "IPs": ["10.244.1.5"],
}


class Rig:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[CniEvent] = []
        self.refuse: str | None = None

    async def handler(self, ev: CniEvent) -> None:
        self.events.append(ev)
        if self.refuse:
            raise CniRefused(self.refuse, 503)

    async def raw(self, data: bytes, *, close_write: bool = False) -> bytes:
        r, w = await asyncio.open_unix_connection(str(self.path))
        w.write(data)
        await w.drain()
        if close_write:
            w.write_eof()
        out = await asyncio.wait_for(r.read(), 10)
        w.close()
        return out

    async def post(self, body: bytes, target: str = "/cmdadd") -> tuple[int, dict[str, object]]:
        req = (
            f"POST {target} HTTP/1.1\r\nhost: unix\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        out = await self.raw(req)
        head, _, payload = out.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)


@pytest.fixture
async def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setattr(cni_server, "READ_TIMEOUT", 0.5)
    r = Rig(tmp_path / "pluginevent.sock")
    server = CniServer(r.path, r.handler)
    await server.start()
    try:
        yield r
    finally:
        await server.close()


async def test_cmdadd(rig: Rig) -> None:
    assert await rig.post(json.dumps(EVENT).encode()) == (200, {"ok": True})
    assert rig.events == [CniEvent("/run/netns/ketch-p-abc", "web-1", "app", "u1", ("10.244.1.5",))]
    rig.refuse = "pod app/web-1 cannot join the mesh: no node proxy is connected"
    status, doc = await rig.post(json.dumps(EVENT).encode())
    assert status == 503
    assert "no node proxy" in str(doc["error"])


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"not json", 400, "not JSON"),
        (b"[1,2]", 400, "JSON object"),
        (json.dumps({**EVENT, "Netns": "relative"}).encode(), 400, "absolute path"),
        (json.dumps({**EVENT, "PodName": 7}).encode(), 400, "PodName"),
        (json.dumps({**EVENT, "IPs": "10.0.0.1"}).encode(), 400, "IPs"),
        (b"x" * (cni_server.MAX_BODY + 1), 413, "larger"),
    ],
)
async def test_bad_bodies(rig: Rig, body: bytes, status: int, error: str) -> None:
    got, doc = await rig.post(body)
    assert got == status
    assert error in str(doc["error"])
    assert rig.events == []


async def test_other_endpoints(rig: Rig) -> None:
    assert (await rig.post(b"{}", "/cmddel"))[0] == 404
    out = await rig.raw(b"GET /cmdadd HTTP/1.1\r\nhost: unix\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405")


async def test_garbage_and_idle_clients(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    out = await rig.raw(b"\x16\x03\x01\x02\x00garbage\r\n\r\n")  # a TLS hello, say
    assert out.startswith(b"HTTP/1.1 400")
    assert await rig.raw(b"", close_write=True) == b""  # connects and leaves
    assert await rig.raw(b"POST /cmdadd HTTP/1.1\r\n") == b""  # idle: closed at READ_TIMEOUT
    # a slow client trickling a huge header is closed too (or refused)
    r, w = await asyncio.open_unix_connection(str(rig.path))
    w.write(b"POST /cmdadd HTTP/1.1\r\nx: ")
    for _ in range(5):
        w.write(b"a" * 4000)
        await w.drain()
    out = await asyncio.wait_for(r.read(), 10)
    w.close()
    assert out == b"" or out.startswith(b"HTTP/1.1 4")
    # a body announced but never sent
    r2, w2 = await asyncio.open_unix_connection(str(rig.path))
    w2.write(b"POST /cmdadd HTTP/1.1\r\nhost: unix\r\ncontent-length: 100\r\n\r\n{")
    assert await asyncio.wait_for(r2.read(), 10) == b""
    w2.close()
    assert rig.events == []
    # and the server still works
    assert (await rig.post(json.dumps(EVENT).encode()))[0] == 200
    assert "Traceback" not in caplog.text
