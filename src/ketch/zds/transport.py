"""The ZDS socket: unix SOCK_SEQPACKET, one message per datagram, fds in SCM_RIGHTS.

The thin I/O layer under `messages` and `session`, used by both the agent (listens) and the
node proxy (connects). `ZdsSocket` wraps a non-blocking socket on the running event loop
(`add_reader`/`add_writer`, so it works on asyncio and uvloop alike):

- `send(data, fds=())` is one `sendmsg` with the fds as one SCM_RIGHTS control message;
- `recv()` is one `recvmsg` into a `MAX_MESSAGE` buffer with `MSG_CMSG_CLOEXEC`. A datagram
  cut short (`MSG_TRUNC`: longer than the buffer; `MSG_CTRUNC`: more fds than the control
  buffer holds) is a protocol error, and every fd that arrived is closed before raising;
  an empty read is the peer closing (`ConnectionClosed`).

`check_netns_fd(fd)` tells whether a received fd is a network namespace (`NS_GET_NSTYPE`
ioctl == CLONE_NEWNET; on kernels without it, the fd's inode device equals nsfs's, the
device of /proc/self/ns/net).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Sequence
from pathlib import Path

from ketch.zds.messages import MAX_MESSAGE, ZdsProtocolError

MAX_FDS = 4  # room in the control buffer: more than one fd is reported, not truncated
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
CLONE_NEWNET = 0x40000000
_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class ConnectionClosed(Exception):
    """The peer closed the ZDS connection (EOF or reset)."""


def check_netns_fd(fd: int) -> None:
    """Raise ZdsProtocolError unless `fd` is a network namespace."""
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EINVAL):
            raise ZdsProtocolError(f"the fd passed with add is not a netns: {e.strerror}") from None
        try:
            same_fs = os.fstat(fd).st_dev == os.stat("/proc/self/ns/net").st_dev
        except OSError as e2:
            raise ZdsProtocolError(f"the fd passed with add: {e2.strerror}") from None
        if not same_fs:
            raise ZdsProtocolError("the fd passed with add is not a namespace file") from None
        return
    if kind != CLONE_NEWNET:
        raise ZdsProtocolError(
            f"the fd passed with add is a namespace of type {kind:#x}, not a network namespace"
        )


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class ZdsSocket:
    """One connected SEQPACKET socket on the running loop (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._closed = False

    @classmethod
    async def connect(cls, path: str | Path) -> ZdsSocket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, os.fspath(path))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    async def _wait(self, readable: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self.sock.fileno()
        if fd < 0:
            raise ConnectionClosed("socket closed")

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        if readable:
            loop.add_reader(fd, ready)
        else:
            loop.add_writer(fd, ready)
        try:
            await fut
        finally:
            if readable:
                loop.remove_reader(fd)
            else:
                loop.remove_writer(fd)

    async def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"ZDS message of {len(data)} bytes exceeds {MAX_MESSAGE}")
        anc = (
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        )
        while True:
            try:
                self.sock.sendmsg([data], anc)
                return
            except (BlockingIOError, InterruptedError):
                await self._wait(readable=False)
            except (BrokenPipeError, ConnectionResetError, OSError) as e:
                if isinstance(e, OSError) and e.errno == errno.EBADF:
                    raise ConnectionClosed("socket closed") from None
                raise ConnectionClosed(f"send failed: {e.strerror or e}") from None

    async def recv(self) -> tuple[bytes, list[int]]:
        """One datagram and the fds that came with it (the caller owns the fds)."""
        while True:
            try:
                data, anc, flags, _ = self.sock.recvmsg(
                    MAX_MESSAGE, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC
                )
                break
            except (BlockingIOError, InterruptedError):
                await self._wait(readable=True)
            except (ConnectionResetError, OSError) as e:
                raise ConnectionClosed(f"receive failed: {e.strerror or e}") from None
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                fds.extend(arr)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            close_fds(fds)
            what = "message longer than" if flags & socket.MSG_TRUNC else "control data over"
            raise ZdsProtocolError(f"datagram truncated: {what} the {MAX_MESSAGE}-byte buffer")
        if not data and not fds:
            raise ConnectionClosed("peer closed the connection")
        return data, fds


def listen_seqpacket(path: str | Path, *, mode: int = 0o600) -> socket.socket:
    """Bind a SEQPACKET listener at `path` (a stale socket file is removed first; the
    directory is created). Non-blocking."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if p.is_socket():
            p.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.bind(os.fspath(p))
        os.chmod(p, mode)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = [
    "ConnectionClosed",
    "ZdsSocket",
    "check_netns_fd",
    "close_fds",
    "listen_seqpacket",
]
