"""The SEQPACKET layer with real sockets (socketpair): fds in SCM_RIGHTS, truncation
refused with every received fd closed, EOF, and the netns check of a passed fd."""

from __future__ import annotations

import array
import os
import socket

import pytest

from ketch.zds.messages import ZdsProtocolError
from ketch.zds.transport import ConnectionClosed, ZdsSocket, check_netns_fd, listen_seqpacket


def _pair() -> tuple[ZdsSocket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return ZdsSocket(a), b


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_datagram_with_fd() -> None:
    z, peer = _pair()
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        peer.sendmsg(
            [b"\x0a\x00"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        )
        data, fds = await z.recv()
        assert data == b"\x0a\x00"
        assert len(fds) == 1
        assert fds[0] != fd
        check_netns_fd(fds[0])
        assert os.get_inheritable(fds[0]) is False  # MSG_CMSG_CLOEXEC
        os.close(fds[0])
        await z.send(b"\x08\x01", [fd])
        data2, anc, _, _ = peer.recvmsg(100, socket.CMSG_SPACE(8))
        assert data2 == b"\x08\x01"
        assert anc[0][1] == socket.SCM_RIGHTS
        os.close(array.array("i", anc[0][2][:4])[0])
    finally:
        os.close(fd)
        z.close()
        peer.close()


async def test_oversized_datagram_is_refused() -> None:
    z, peer = _pair()
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        before = set(os.listdir("/proc/self/fd"))
        peer.sendmsg(
            [b"\x00" * 2000], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        )
        with pytest.raises(ZdsProtocolError, match="truncated"):
            await z.recv()
        assert set(os.listdir("/proc/self/fd")) <= before  # the received fd was closed
    finally:
        os.close(fd)
        z.close()
        peer.close()


async def test_too_many_fds_are_all_closed() -> None:
    z, peer = _pair()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(12)]
    try:
        before = set(os.listdir("/proc/self/fd"))
        peer.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        with pytest.raises(ZdsProtocolError, match="truncated"):
            await z.recv()
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        for fd in fds:
            os.close(fd)
        z.close()
        peer.close()


async def test_eof() -> None:
    z, peer = _pair()
    peer.close()
    with pytest.raises(ConnectionClosed):
        await z.recv()
    with pytest.raises(ConnectionClosed):
        await z.send(b"x")
    z.close()


@pytest.mark.parametrize("path", ["/dev/null", "/proc/self/ns/uts", "pipe"])
def test_not_a_netns(path: str) -> None:
    if path == "pipe":
        r, w = os.pipe()
        os.close(w)
        fd = r
    else:
        fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ZdsProtocolError, match="not a"):
            check_netns_fd(fd)
    finally:
        os.close(fd)


async def test_listener_replaces_a_stale_socket(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "d", "ztunnel.sock")
    first = listen_seqpacket(path)
    first.close()  # the file stays behind, as after a crash
    second = listen_seqpacket(path)
    try:
        z = await ZdsSocket.connect(path)
        conn, _ = second.accept()
        await z.send(b"hi")
        assert conn.recv(10) == b"hi"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        conn.close()
        z.close()
    finally:
        second.close()
