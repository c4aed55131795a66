"""The CNI plugin event: tell the node agent a pod's network exists, before its containers run.

Istio's chained CNI plugin, run during sandbox creation, POSTs
`{"Netns", "PodName", "PodNamespace", "PodUID", "IPs"}` as JSON to `http://unix/cmdadd` over
the node agent's unix socket with a 5 s timeout; anything but 200 fails the sandbox, so the
runtime retries and the pod never runs unprotected (../shared/design/ZDS.md §6). The kubelet
plays the plugin's part with this client (HTTP/1.1 by h11 over the unix socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import h11

TIMEOUT = 5.0
MAX_RESPONSE_BYTES = 64 * 1024


class CniEventError(Exception):
    """The node agent did not accept the pod (no socket, timeout, non-200)."""


def payload(netns_path: str, pod_name: str, namespace: str, uid: str, ips: Sequence[str]) -> bytes:
    return json.dumps(
        {
            "Netns": netns_path,
            "PodName": pod_name,
            "PodNamespace": namespace,
            "PodUID": uid,
            "IPs": list(ips),
        }
    ).encode()


async def cmdadd(socket_path: Path, body: bytes, *, limit: float = TIMEOUT) -> None:
    """POST /cmdadd; returns on 200, raises CniEventError otherwise."""
    try:
        async with asyncio.timeout(limit):
            status, text = await _post(socket_path, "/cmdadd", body)
    except TimeoutError:
        raise CniEventError(
            f"CNI event to {socket_path}: no answer within {limit:g}s (is the node agent up?)"
        ) from None
    except FileNotFoundError:
        raise CniEventError(
            f"CNI event: socket {socket_path} does not exist (is the node agent running?)"
        ) from None
    except (OSError, h11.ProtocolError, EOFError) as exc:
        raise CniEventError(
            f"CNI event to {socket_path} failed: {exc or type(exc).__name__}"
        ) from None
    if status != 200:
        detail = " ".join(text.split())[:300]
        raise CniEventError(
            f"the node agent refused the pod (HTTP {status} from {socket_path}): {detail}"
        )


async def _post(socket_path: Path, target: str, body: bytes) -> tuple[int, str]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", "unix"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ],
        )
        writer.write(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        await writer.drain()
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = int(event.status_code)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size <= MAX_RESPONSE_BYTES:
                    chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks).decode(errors="replace")
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed before a complete response")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
