"""Open connections of the node proxy: tracking (for policy re-checks, pod removal, drain,
config_dump) and the plain TCP <-> TCP splice used by passthrough paths.

`ConnectionTracker` is pure bookkeeping: a listener `register()`s a connection with what it
knows (direction, pod, addresses, the `rbac.Connection` for inbound ones) and a `closer`
callable that aborts the connection's I/O; `unregister()` when it ends. The proxy asks it
for `inbound_infos()` (input of `rbac.recheck`), `for_pod(uid)`, and `close(ids)`; `wait_empty`
lets drain wait for connections to finish on their own.

`splice()` copies bytes between two TCP streams with callback protocols (no task switch and
no Python loop iteration per chunk beyond forwarding the bytes), with half-close each way
and back-pressure through the transports' pause/resume, like `hbone.relay()` does for a
tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

from ketch.ztunnel.rbac import Connection

log = logging.getLogger("ketch.ztunnel.connections")


class Direction(enum.Enum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"  # HBONE on 15008
    INBOUND_PLAINTEXT = "inbound_plaintext"  # 15006


@dataclass(eq=False)
class TrackedConn:
    id: int
    pod_uid: str
    direction: Direction
    src: str  # "ip:port"
    dst: str
    closer: Callable[[str], None] = field(repr=False)
    info: Connection | None = None  # inbound: what authorization decided on
    src_identity: str = ""
    dst_identity: str = ""
    started: float = field(default_factory=time.time)
    # pushes the bytes moved so far into the metrics (set once the relay runs); called
    # periodically by the proxy so counters of long-lived connections do not wait for close
    report: Callable[[], None] | None = field(default=None, repr=False)

    def describe(self) -> dict[str, str | float | int]:
        d: dict[str, str | float | int] = {
            "id": self.id,
            "pod": self.pod_uid,
            "direction": self.direction.value,
            "src": self.src,
            "dst": self.dst,
            "started": round(self.started, 3),
        }
        if self.src_identity:
            d["src_identity"] = self.src_identity
        if self.dst_identity:
            d["dst_identity"] = self.dst_identity
        return d


class ConnectionTracker:
    """Registry of open connections (see the module docstring)."""

    def __init__(self) -> None:
        self._conns: dict[int, TrackedConn] = {}
        self._ids = itertools.count(1)
        self._empty: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def register(
        self,
        pod_uid: str,
        direction: Direction,
        src: str,
        dst: str,
        closer: Callable[[str], None],
        *,
        info: Connection | None = None,
        src_identity: str = "",
        dst_identity: str = "",
    ) -> TrackedConn:
        c = TrackedConn(
            next(self._ids), pod_uid, direction, src, dst, closer, info, src_identity, dst_identity
        )
        self._conns[c.id] = c
        return c

    def unregister(self, conn: TrackedConn) -> None:
        self._conns.pop(conn.id, None)
        if not self._conns and self._empty is not None:
            self._empty.set()

    def get(self, cid: int) -> TrackedConn | None:
        return self._conns.get(cid)

    def all(self) -> list[TrackedConn]:
        return list(self._conns.values())

    def for_pod(self, uid: str) -> list[TrackedConn]:
        return [c for c in self._conns.values() if c.pod_uid == uid]

    def inbound_infos(self) -> dict[int, Connection]:
        """Inbound connections with their authorization input, for `rbac.recheck`."""
        return {c.id: c.info for c in self._conns.values() if c.info is not None}

    def close(self, ids: Iterable[int], reason: str) -> list[TrackedConn]:
        """Abort these connections (their closers run now; each unregisters when its task
        notices). Unknown ids are ignored. Returns the connections closed."""
        closed = []
        for cid in list(ids):
            c = self._conns.get(cid)
            if c is not None:
                closed.append(c)
                try:
                    c.closer(reason)
                except (OSError, ValueError) as e:
                    # its sockets were closed already (the peer went away meanwhile); the
                    # connection's own task finishes the cleanup: go on with the others
                    log.debug("connection %s -> %s was already closing: %s", c.src, c.dst, e)
        return closed

    async def wait_empty(self, within: float) -> bool:
        """Wait until no connection is open (True) or `within` seconds passed (False)."""
        if not self._conns:
            return True
        if self._empty is None or self._empty.is_set():
            self._empty = asyncio.Event()
        try:
            async with asyncio.timeout(max(0.0, within)):
                await self._empty.wait()
        except TimeoutError:
            return not self._conns
        return True


# --------------------------------------------------------------------------- TCP splice


@dataclass(frozen=True)
class SpliceResult:
    """`a_to_b` / `b_to_a`: bytes copied each way; `error` the first failure, if any."""

    a_to_b: int
    b_to_a: int
    error: BaseException | None = None


class _Side(asyncio.Protocol):
    """One TCP transport of a splice; forwards what it reads to the other side."""

    def __init__(self, splice: _Splice) -> None:
        self.s = splice
        self.tr: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.count = 0
        self.eof_in = False  # peer half-closed towards us
        self.paused_reading = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.count += len(data)
        assert self.other is not None
        assert self.other.tr is not None
        self.other.tr.write(data)

    def eof_received(self) -> bool:
        self.eof_in = True
        o = self.other
        assert o is not None
        assert o.tr is not None
        if o.tr.can_write_eof() and not o.tr.is_closing():
            o.tr.write_eof()
        self.s.check_done()
        return True  # keep our write side open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not (self.eof_in and self.other is not None and self.other.eof_in):
            self.s.fail(exc or ConnectionResetError("TCP peer closed the connection early"))
        self.s.finish()

    # our transport's write buffer is full: stop reading the other side
    def pause_writing(self) -> None:
        o = self.other
        if o is not None and o.tr is not None and not o.paused_reading:
            o.paused_reading = True
            o.tr.pause_reading()

    def resume_writing(self) -> None:
        o = self.other
        if o is not None and o.tr is not None and o.paused_reading:
            o.paused_reading = False
            if not o.tr.is_closing():
                o.tr.resume_reading()


class _Splice:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.a = _Side(self)
        self.b = _Side(self)
        self.a.other, self.b.other = self.b, self.a
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = loop.create_future()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.abort()

    def abort(self) -> None:
        for s in (self.a, self.b):
            if s.tr is not None and not s.tr.is_closing():
                reset_transport(s.tr)
        self.finish()

    def check_done(self) -> None:
        if self.a.eof_in and self.b.eof_in:
            for s in (self.a, self.b):
                if s.tr is not None:
                    s.tr.close()
            self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Splice:
    """A running splice: `abort()` resets both sides; `await wait()` for the result."""

    def __init__(self, inner: _Splice) -> None:
        self._s = inner

    def abort(self) -> None:
        self._s.abort()

    def counts(self) -> tuple[int, int]:
        """Bytes copied so far: (a_to_b, b_to_a)."""
        return self._s.a.count, self._s.b.count

    async def wait(self) -> SpliceResult:
        try:
            await self._s.done
        except BaseException:
            self._s.abort()
            raise
        return SpliceResult(self._s.a.count, self._s.b.count, self._s.error)


async def start_splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock: socket.socket
) -> Splice:
    """Take over the accepted stream (reader, writer) as side A and connect the already
    connected socket `sock` as side B. Bytes the reader had buffered go to B first."""
    loop = asyncio.get_running_loop()
    s = _Splice(loop)
    tr_a = cast(asyncio.Transport, writer.transport)
    tr_a.pause_reading()
    # asyncio has no public way to take back a StreamReader's buffer (see hbone.relay).
    buffered = getattr(reader, "_buffer", None)
    leftover = bytes(buffered) if isinstance(buffered, bytearray) else b""
    if isinstance(buffered, bytearray):
        buffered.clear()
    reader_eof = bool(getattr(reader, "_eof", False))
    try:
        await loop.create_connection(lambda: s.b, sock=sock)
    except BaseException:
        tr_a.abort()
        sock.close()
        raise
    s.a.tr = tr_a
    tr_a.set_protocol(s.a)
    if leftover:
        s.a.data_received(leftover)
    if reader_eof:
        s.a.eof_received()
    elif tr_a.is_closing():
        s.fail(ConnectionResetError("client closed before the upstream was connected"))
    else:
        tr_a.resume_reading()
    return Splice(s)


_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_transport(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), the way a refused proxy connection ends.
    Safe on a transport that is already closed: asyncio's socket then raises OSError
    (EBADF), uvloop's pseudo-socket ValueError (fd -1); either way there is nothing left
    to reset, and `abort()` of a closed transport is a no-op."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    cast(asyncio.Transport, transport).abort()


def reset_stream(writer: asyncio.StreamWriter) -> None:
    reset_transport(writer.transport)
