"""The agent's ZDS server: node proxies connect here (ZDS.md sections 1 and 4).

- Listens on a unix SOCK_SEQPACKET socket (a stale file is replaced), accepts at most
  `MAX_ACCEPT_PER_SECOND` connections a second.
- Per connection (`AgentSession`): the hello within `HELLO_TIMEOUT`, then the snapshot
  (`snapshot()`: an add with the netns fd per enrolled pod, a keep for a pod without one)
  and `snapshot_sent`; then incremental requests. One request in flight, each ack awaited
  for `ACK_TIMEOUT`; a missing ack, a protocol error or EOF ends the connection.
- `add()` goes to the newest connection only (during an upgrade the new node proxy takes
  the new pods), `delete()` to all of them.
- Keepalive: after `KEEPALIVE_INTERVAL` of idleness a read with a 10 ms deadline: timeout
  means alive, EOF ends the connection, a message is a protocol error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ketch.util.tasks import spawn
from ketch.zds.messages import (
    Ack,
    Add,
    Del,
    Keep,
    ZdsProtocolError,
    decode_ack,
    decode_hello,
    encode_request,
)
from ketch.zds.session import AgentSession, Queued
from ketch.zds.transport import ConnectionClosed, ZdsSocket, close_fds, listen_seqpacket

log = logging.getLogger("ketch.agent.zds")

HELLO_TIMEOUT = 5.0
ACK_TIMEOUT = 5.0
KEEPALIVE_INTERVAL = 5.0
MAX_ACCEPT_PER_SECOND = 5


class NoNodeProxy(Exception):
    """No node proxy is connected (or it went away before acknowledging): retryable."""


class Nacked(Exception):
    """The node proxy refused the request; the message is its reason."""


@dataclass(frozen=True)
class SnapshotEntry:
    """One pod of the snapshot: with an fd it is sent as add, without as keep."""

    add: Add
    netns_fd: int | None


@dataclass(eq=False)
class _Ticket:
    """A queued request's fd (a dup the ticket owns, so a pod removed meanwhile cannot
    close it or let its number be reused under us) and who waits for the ack."""

    fd: int | None = None
    future: asyncio.Future[Ack] | None = None

    @classmethod
    def owning(cls, fd: int | None, future: asyncio.Future[Ack] | None = None) -> _Ticket:
        return cls(os.dup(fd) if fd is not None else None, future)

    def release(self) -> None:
        if self.fd is not None:
            close_fds([self.fd])
            self.fd = None


@dataclass(eq=False)
class _Conn:
    sock: ZdsSocket
    number: int
    session: AgentSession = field(default_factory=AgentSession)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class ZdsServer:
    """See the module docstring. `snapshot()` is called when a node proxy says hello."""

    def __init__(self, path: str | Path, snapshot: Callable[[], Sequence[SnapshotEntry]]) -> None:
        self.path = Path(path)
        self._snapshot = snapshot
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: list[_Conn] = []  # past the hello, oldest first
        self._all: set[_Conn] = set()
        self._count = 0
        self.on_connect: list[Callable[[], None]] = []

    @property
    def connected(self) -> int:
        """Node proxies past their hello."""
        return len(self._conns)

    async def start(self) -> None:
        self._listener = listen_seqpacket(self.path)
        self._accept_task = spawn(self._accept_loop(), name="agent-zds-accept")
        log.info("ZDS: listening on %s", self.path)

    async def close(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        for c in list(self._all):
            if c.task is not None:
                c.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await c.task
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _accept_loop(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(self._listener)
            self._count += 1
            conn = _Conn(ZdsSocket(sock), self._count)
            self._all.add(conn)
            conn.task = spawn(self._serve(conn), name=f"agent-zds-conn-{conn.number}")
            await asyncio.sleep(1.0 / MAX_ACCEPT_PER_SECOND)  # istio-cni's accept limit

    # ------------------------------------------------------------------ one connection

    async def _serve(self, conn: _Conn) -> None:
        try:
            await self._converse(conn)
        except ConnectionClosed as e:
            log.info("ZDS: node proxy connection %d closed (%s)", conn.number, e)
        except ZdsProtocolError as e:
            log.warning("ZDS: node proxy connection %d: protocol error: %s", conn.number, e)
        except TimeoutError:
            log.warning(
                "ZDS: node proxy connection %d: no answer within %.0fs; closing it",
                conn.number,
                ACK_TIMEOUT,
            )
        finally:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
        self._all.discard(conn)
        conn.sock.close()
        for q in conn.session.drop_queued():
            t = q.token
            if isinstance(t, _Ticket):
                t.release()
            if isinstance(t, _Ticket) and t.future is not None and not t.future.done():
                t.future.set_exception(
                    NoNodeProxy("no node proxy: it disconnected before acknowledging")
                )

    async def _recv(self, conn: _Conn, within: float) -> tuple[bytes, list[int]]:
        async with asyncio.timeout(within):
            return await conn.sock.recv()

    async def _converse(self, conn: _Conn) -> None:
        data, fds = await self._recv(conn, HELLO_TIMEOUT)
        close_fds(fds)
        hello = decode_hello(data, len(fds))
        conn.session.receive_hello(hello)
        entries = list(self._snapshot())
        conn.session.queue_snapshot(
            Queued(e.add if e.netns_fd is not None else Keep(e.add.uid), _Ticket.owning(e.netns_fd))
            for e in entries
        )
        self._conns.append(conn)
        log.info(
            "ZDS: node proxy connection %d: hello; sending a snapshot of %d pod(s)",
            conn.number,
            len(entries),
        )
        for cb in self.on_connect:
            cb()
        while True:
            q = conn.session.next_request()
            if q is None:
                await self._idle(conn)
                continue
            ticket = q.token if isinstance(q.token, _Ticket) else _Ticket()
            fds_out = [ticket.fd] if isinstance(q.request, Add) and ticket.fd is not None else []
            try:
                await conn.sock.send(encode_request(q.request), fds_out)
            finally:
                ticket.release()  # the kernel holds its own reference once sent
            data, fds = await self._recv(conn, ACK_TIMEOUT)
            try:
                ack = decode_ack(data, len(fds))
            finally:
                close_fds(fds)
            conn.session.receive_ack(ack)
            if ack.error:
                log.warning("ZDS: node proxy NACKed %s: %s", q.request, ack.error)
            if ticket.future is not None and not ticket.future.done():
                ticket.future.set_result(ack)

    async def _idle(self, conn: _Conn) -> None:
        """Nothing to send: wait for a request to be queued while watching the socket, so
        a node proxy that goes away is noticed at once (istio-cni probes every 5 s with a
        10 ms read; reading all the time finds EOF sooner and anything it sends unasked
        is a protocol error either way)."""
        reader = spawn(_recv_outcome(conn.sock), name=f"agent-zds-idle-{conn.number}")
        waker = spawn(conn.wake.wait(), name=f"agent-zds-wake-{conn.number}")
        try:
            await asyncio.wait(
                {reader, waker}, timeout=KEEPALIVE_INTERVAL, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        conn.wake.clear()
        if reader.cancelled():
            return
        outcome = reader.result()
        if isinstance(outcome, Exception):
            raise outcome  # ConnectionClosed at EOF, ZdsProtocolError for a truncated one
        data, fds = outcome
        close_fds(fds)
        raise ZdsProtocolError(f"unexpected message from the node proxy while idle: {data!r}")

    # ------------------------------------------------------------------ requests

    async def add(self, add: Add, netns_fd: int, *, within: float = 2 * ACK_TIMEOUT) -> None:
        """Send `add` (with the fd) to the newest node proxy and wait for its ack.
        Raises NoNodeProxy (retryable) or Nacked (with the node proxy's reason)."""
        if not self._conns:
            raise NoNodeProxy("no node proxy is connected")
        conn = self._conns[-1]
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        conn.session.queue(add, _Ticket.owning(netns_fd, fut))
        conn.wake.set()
        try:
            async with asyncio.timeout(within):
                ack = await fut
        except TimeoutError:
            raise NoNodeProxy(f"the node proxy did not acknowledge within {within:.0f}s") from None
        if ack.error:
            raise Nacked(ack.error)

    async def delete(self, uid: str, *, within: float = 2 * ACK_TIMEOUT) -> int:
        """Send `del` to every connected node proxy; returns how many acknowledged it."""
        futs: list[asyncio.Future[Ack]] = []
        for conn in list(self._conns):
            fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
            conn.session.queue(Del(uid), _Ticket(None, fut))
            conn.wake.set()
            futs.append(fut)
        if not futs:
            return 0
        done, pending = await asyncio.wait(futs, timeout=within)
        for p in pending:
            p.cancel()
        ok = 0
        for d in done:
            if not d.cancelled() and d.exception() is None and d.result().ok:
                ok += 1
        return ok


async def _recv_outcome(sock: ZdsSocket) -> tuple[bytes, list[int]] | Exception:
    """`sock.recv()` with its failure as the result (read by `_idle`, not logged by spawn)."""
    try:
        return await sock.recv()
    except (ConnectionClosed, ZdsProtocolError) as e:
        return e


__all__ = ["Nacked", "NoNodeProxy", "SnapshotEntry", "ZdsServer"]
