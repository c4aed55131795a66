"""The CNI-event endpoint: the local kubelet asks the agent while it starts a pod.

istio-cni's chained plugin POSTs `{Netns, PodName, PodNamespace, IPs}` to
`http://unix/cmdadd` over `pluginevent.sock` after the pod's network exists and before its
containers start; a non-200 fails the pod start, so a pod that should be in the mesh never
runs outside it (ZDS.md section 6). Ketch's kubelet does the same, adding `PodUID`.

HTTP/1.1 with `h11` on a unix stream socket, one request per connection:

- `POST /cmdadd` with a JSON object (at most `MAX_BODY` bytes): the handler runs (it enrolls
  the pod synchronously when it belongs in the mesh) and the answer is 200 `{"ok": true}`,
  or the handler's `CniRefused(status, reason)` as that status with `{"error": reason}`;
- anything else: 404/405; a body that is not the JSON described: 400; too big: 413;
- a client that sends nothing or trickles its request: closed after `READ_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11

log = logging.getLogger("ketch.agent.cni")

MAX_BODY = 16 * 1024
READ_TIMEOUT = 5.0  # for the whole request, from accept to the end of the body
HANDLER_TIMEOUT = 60.0
MAX_CONNECTIONS = 64


class CniRefused(Exception):
    """The pod must not start: `reason` goes back to the kubelet with `status`."""

    def __init__(self, reason: str, status: int = 500) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class CniEvent:
    netns: str
    pod_name: str
    pod_namespace: str
    pod_uid: str
    ips: tuple[str, ...]

    @classmethod
    def parse(cls, body: bytes) -> CniEvent:
        """Validate the JSON body; ValueError says what is wrong."""
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"body is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError("body must be a JSON object")

        def text(key: str, required: bool = True) -> str:
            v = doc.get(key, "")
            if not isinstance(v, str) or (required and not v) or len(v) > 512:
                raise ValueError(f"{key}: expected a non-empty string")
            return v

        netns = text("Netns")
        if not netns.startswith("/") or "\0" in netns:
            raise ValueError(f"Netns: expected an absolute path, got {netns!r}")
        ips = doc.get("IPs", [])
        if not isinstance(ips, list) or not all(isinstance(i, str) for i in ips) or len(ips) > 16:
            raise ValueError("IPs: expected a list of strings")
        return cls(netns, text("PodName"), text("PodNamespace"), text("PodUID", False), tuple(ips))


Handler = Callable[[CniEvent], Awaitable[None]]


class CniServer:
    """See the module docstring."""

    def __init__(self, path: str | Path, handler: Handler) -> None:
        self.path = Path(path)
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._active = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        self._server = await asyncio.start_unix_server(self._handle, path=os.fspath(self.path))
        os.chmod(self.path, 0o600)
        log.info("CNI events: listening on %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=8 * 1024)
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                await self._respond(writer, conn, 503, {"error": "too many connections"})
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    request, body = await self._read(reader, conn)
            except TimeoutError:
                log.info("CNI events: closed a client that sent no complete request in time")
                return
            except _Reject as r:
                await self._respond(writer, conn, r.status, {"error": r.reason})
                return
            if request is None:
                return
            await self._respond(writer, conn, *await self._dispatch(request, body))
        except (ConnectionError, h11.LocalProtocolError) as e:
            log.debug("CNI events: connection dropped: %s", e)
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read(
        self, reader: asyncio.StreamReader, conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                raise _Reject(400, f"bad HTTP request: {e}") from None
            if event is h11.NEED_DATA:
                data = await reader.read(8192)
                if not data and request is None:
                    return None, b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and length.isdigit() and int(length) > MAX_BODY:
                    raise _Reject(413, f"body larger than {MAX_BODY} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _Reject(413, f"body larger than {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _dispatch(self, request: h11.Request, body: bytes) -> tuple[int, dict[str, Any]]:
        target = request.target.decode("latin-1")
        if target != "/cmdadd":
            return 404, {"error": f"no such endpoint {target[:100]!r}; POST /cmdadd"}
        if request.method != b"POST":
            return 405, {"error": "use POST"}
        try:
            event = CniEvent.parse(body)
        except ValueError as e:
            return 400, {"error": str(e)}
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT):
                await self._handler(event)
        except CniRefused as e:
            log.warning("CNI add %s/%s refused: %s", event.pod_namespace, event.pod_name, e)
            return e.status, {"error": str(e)}
        except TimeoutError:
            return 504, {"error": f"enrollment took longer than {HANDLER_TIMEOUT:.0f}s"}
        return 200, {"ok": True}

    async def _respond(
        self, writer: asyncio.StreamWriter, conn: h11.Connection, status: int, doc: dict[str, Any]
    ) -> None:
        body = json.dumps(doc).encode() + b"\n"
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers))
            data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # h11 refuses to answer before it saw a request line: answer by hand
            data = (
                f"HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
        writer.write(data or b"")
        await writer.drain()


class _Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


__all__ = ["CniEvent", "CniRefused", "CniServer"]
