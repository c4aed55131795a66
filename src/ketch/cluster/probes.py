"""Readiness and liveness probes, as the kubelet runs them.

Two halves:
- `ProbeTracker` (pure): when the next probe is due (`initialDelaySeconds`, then every
  `periodSeconds`) and the verdict from the run of results (`successThreshold` consecutive
  successes flip it to success, `failureThreshold` consecutive failures to failure). A
  readiness verdict starts as failure (not ready until a probe passes), a liveness verdict
  as success (as in pkg/kubelet/prober/worker.go).
- `run_probe` (I/O): one attempt of httpGet (status 200-399 is success, like the kubelet;
  HTTPS without certificate checks, like the kubelet), tcpSocket (the connection opens), or
  exec (exit 0). Network probes leave from the node's network namespace towards the pod IP,
  as the kubelet's do (so the pod's own rules see a connection from the node's gateway
  address); exec runs the command inside the pod's namespaces with `ip netns exec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import h11

from ketch.api.core import Container, Probe
from ketch.netns.enter import run_in_netns

USER_AGENT = "kube-probe/ketch"
MAX_RESPONSE_BYTES = 64 * 1024
MESSAGE_LIMIT = 200


class ProbeKind(enum.StrEnum):
    READINESS = "readiness"
    LIVENESS = "liveness"


@dataclass(frozen=True)
class HttpGet:
    port: int
    path: str = "/"
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"


@dataclass(frozen=True)
class TcpSocket:
    port: int
    host: str | None = None


@dataclass(frozen=True)
class Exec:
    command: tuple[str, ...]


Action = HttpGet | TcpSocket | Exec


@dataclass(frozen=True)
class ProbeSpec:
    action: Action
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def spec_from_api(probe: Probe, container: Container) -> ProbeSpec:
    """The probe of `container` as the kubelet runs it (named ports resolved; the api model
    already checked that a named port exists)."""
    action: Action
    if probe.http_get is not None:
        g = probe.http_get
        action = HttpGet(_port(g.port, container), g.path or "/", g.host, g.scheme)
    elif probe.tcp_socket is not None:
        action = TcpSocket(_port(probe.tcp_socket.port, container), probe.tcp_socket.host)
    else:
        assert probe.exec is not None  # the api model requires exactly one handler
        action = Exec(tuple(probe.exec.command))
    return ProbeSpec(
        action,
        initial_delay=float(probe.initial_delay_seconds),
        period=float(probe.period_seconds),
        timeout=float(probe.timeout_seconds),
        success_threshold=probe.success_threshold,
        failure_threshold=probe.failure_threshold,
    )


def _port(port: int | str, container: Container) -> int:
    if isinstance(port, int):
        return port
    resolved = container.port_by_name(port)
    if resolved is None:  # unreachable after api validation; say so clearly anyway
        raise ValueError(f"named port {port!r} is not a port of container {container.name!r}")
    return resolved


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


class ProbeTracker:
    """The verdict of one probe of one container run (pure; times are monotonic seconds)."""

    def __init__(self, kind: ProbeKind, spec: ProbeSpec, started: float) -> None:
        self.kind = kind
        self.spec = spec
        self.verdict = kind is ProbeKind.LIVENESS
        self.successes = 0
        self.failures = 0
        self.last_message = ""
        self._next = started + spec.initial_delay

    def due(self) -> float:
        """When the next attempt should start."""
        return self._next

    def record(self, result: ProbeResult, now: float) -> bool:
        """Account one attempt that ended at `now`; returns True if the verdict changed."""
        self._next = now + self.spec.period
        self.last_message = result.message
        if result.ok:
            self.successes += 1
            self.failures = 0
            flip = not self.verdict and self.successes >= self.spec.success_threshold
        else:
            self.failures += 1
            self.successes = 0
            flip = self.verdict and self.failures >= self.spec.failure_threshold
        if flip:
            self.verdict = not self.verdict
        return flip


# --- running one attempt -----------------------------------------------------------------

Dial = Callable[[str, int, float], Awaitable[socket.socket]]


def netns_dialer(netns: str | None) -> Dial:
    """A TCP connector whose sockets are made in `netns` (None: the caller's own netns)."""

    async def dial(host: str, port: int, limit: float) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if netns is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
        else:
            sock = await _socket_in(netns, family)
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), limit)
        except BaseException:
            sock.close()
            raise
        return sock

    return dial


async def _socket_in(netns: str, family: socket.AddressFamily) -> socket.socket:
    make = asyncio.ensure_future(run_in_netns(netns, socket.socket, family, socket.SOCK_STREAM))
    try:
        return await asyncio.shield(make)
    except asyncio.CancelledError:
        # the socket may still arrive: close it then, never leak it
        make.add_done_callback(
            lambda f: f.result().close() if not f.cancelled() and f.exception() is None else None
        )
        raise


def _oserror(exc: OSError) -> str:
    """ "connection refused" rather than asyncio's "Connect call failed ('10.244.1.3', 80)"."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


async def http_get(action: HttpGet, pod_ip: str, limit: float, dial: Dial) -> ProbeResult:
    host = action.host or pod_ip
    where = f"{action.scheme.lower()}://{host}:{action.port}{action.path}"
    try:
        async with asyncio.timeout(limit):
            sock = await dial(host, action.port, limit)
            tls = None
            if action.scheme == "HTTPS":
                tls = ssl.create_default_context()
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certs
            try:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=tls, server_hostname=host if tls else None
                )
            except BaseException:
                sock.close()
                raise
            try:
                status = await _exchange(reader, writer, host, action)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        return ProbeResult(False, f"Get {where}: timeout after {limit:g}s")
    except ssl.SSLError as exc:
        return ProbeResult(False, _short(f"Get {where}: TLS: {exc.reason or exc}"))
    except OSError as exc:
        return ProbeResult(False, _short(f"Get {where}: {_oserror(exc)}"))
    except (h11.ProtocolError, EOFError) as exc:
        return ProbeResult(False, _short(f"Get {where}: bad HTTP response: {exc}"))
    if 200 <= status < 400:
        return ProbeResult(True, f"HTTP probe succeeded with statuscode: {status}")
    return ProbeResult(False, f"HTTP probe failed with statuscode: {status}")


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, action: HttpGet
) -> int:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_BYTES)
    authority = f"[{host}]" if ":" in host else host
    request = h11.Request(
        method="GET",
        target=action.path or "/",
        headers=[
            ("Host", f"{authority}:{action.port}"),
            ("User-Agent", USER_AGENT),
            ("Accept", "*/*"),
            ("Connection", "close"),
        ],
    )
    writer.write(conn.send(request) + conn.send(h11.EndOfMessage()))
    await writer.drain()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            return int(event.status_code)
        if isinstance(event, h11.ConnectionClosed):
            raise EOFError("connection closed before a response")


async def tcp_socket(action: TcpSocket, pod_ip: str, limit: float, dial: Dial) -> ProbeResult:
    host = action.host or pod_ip
    try:
        sock = await dial(host, action.port, limit)
    except TimeoutError:
        return ProbeResult(False, f"dial tcp {host}:{action.port}: i/o timeout")
    except OSError as exc:
        return ProbeResult(False, _short(f"dial tcp {host}:{action.port}: {_oserror(exc)}"))
    sock.close()
    return ProbeResult(True)


async def exec_in_pod(action: Exec, pod_netns: str, limit: float) -> ProbeResult:
    argv = ["ip", "netns", "exec", pod_netns, *action.command]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the command and anything it forked
        await proc.wait()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return ProbeResult(False, f"command timed out after {limit:g}s")
    text = _short(out[:MAX_RESPONSE_BYTES].decode(errors="replace"))
    if proc.returncode == 0:
        return ProbeResult(True, text)
    return ProbeResult(False, f"command exited {proc.returncode}: {text}".rstrip(": "))


async def run_probe(spec: ProbeSpec, pod_ip: str, pod_netns: str, dial: Dial) -> ProbeResult:
    """One probe attempt; never raises for a failing target (the result says why)."""
    action = spec.action
    if isinstance(action, HttpGet):
        return await http_get(action, pod_ip, spec.timeout, dial)
    if isinstance(action, TcpSocket):
        return await tcp_socket(action, pod_ip, spec.timeout, dial)
    return await exec_in_pod(action, pod_netns, spec.timeout)
