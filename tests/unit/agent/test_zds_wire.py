"""The agent's ZDS server and the node proxy's ZDS client over a real SEQPACKET socket
(no root: the netns fd passed is this process's own, /proc/self/ns/net). The node proxy is
an in-memory fake of the two `Ztunnel` methods the client calls; everything else is real.

Then hostile peers on both ends: oversized datagrams, fds where none belong, an add
without its fd, an fd that is not a netns, garbage protobuf, an unknown oneof, silence."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ketch.agent.zds_server import Nacked, NoNodeProxy, SnapshotEntry, ZdsServer
from ketch.zds.messages import (
    Add,
    Del,
    Hello,
    SnapshotSent,
    WorkloadInfo,
    encode_hello,
    encode_request,
)
from ketch.zds.transport import listen_seqpacket
from ketch.ztunnel.pod import PodHandle
from ketch.ztunnel.proxy import ProxyError
from ketch.ztunnel.zds_client import ZdsClient


@dataclass
class FakeProxy:
    """The part of `Ztunnel` the ZDS client drives: pods by uid, each owning its fd."""

    pods: dict[str, PodHandle] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)

    async def add_pod(self, h: PodHandle) -> None:
        if h.uid in self.fail:
            os.close(h.netns_fd)
            raise ProxyError(f"pod {h.name}: cannot bind 15001")
        old = self.pods.pop(h.uid, None)
        if old is not None:
            os.close(old.netns_fd)
        self.pods[h.uid] = h

    async def remove_pod(self, uid: str) -> None:
        old = self.pods.pop(uid, None)
        if old is not None:
            os.close(old.netns_fd)

    def pod(self, uid: str) -> object | None:
        return self.pods.get(uid)


def add(uid: str) -> Add:
    return Add(uid, WorkloadInfo(f"pod-{uid}", "app", "sa"))


async def until(cond: Callable[[], object], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - polling state of other tasks
            await asyncio.sleep(0.01)


@dataclass
class Rig:
    server: ZdsServer
    client: ZdsClient
    proxy: FakeProxy
    entries: list[SnapshotEntry]
    captured: dict[str, bool]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    entries = [SnapshotEntry(add("a"), fd), SnapshotEntry(add("k"), None)]
    server = ZdsServer(tmp_path / "z.sock", lambda: entries)
    await server.start()
    proxy = FakeProxy()
    captured: dict[str, bool] = {}

    async def rules(_fd: int) -> bool:
        return captured.get("all", True)

    client = ZdsClient(proxy, tmp_path / "z.sock", rules_check=rules)  # type: ignore[arg-type]
    await client.start()
    try:
        yield Rig(server, client, proxy, entries, captured)
    finally:
        await client.stop()
        await server.close()
        for h in list(proxy.pods.values()):
            os.close(h.netns_fd)
        os.close(fd)


async def test_snapshot_then_incremental(rig: Rig) -> None:
    await until(lambda: rig.client.ready)
    assert set(rig.proxy.pods) == {"a"}  # keep "k" has no pod to start here
    assert rig.server.connected == 1
    # incremental add and del
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        await rig.server.add(add("b"), fd)
        assert rig.proxy.pods["b"].name == "pod-b"
        first = rig.proxy.pods["b"].netns_fd
        await rig.server.add(add("b"), fd)  # same netns inode: a no-op, the fd kept
        assert rig.proxy.pods["b"].netns_fd == first
    finally:
        os.close(fd)
    assert await rig.server.delete("b") == 1
    assert set(rig.proxy.pods) == {"a"}
    assert rig.client.ready


async def test_nack_keeps_the_pod_pending(rig: Rig) -> None:
    await until(lambda: rig.client.ready)
    rig.proxy.fail.add("c")
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(Nacked, match="cannot bind 15001"):
            await rig.server.add(add("c"), fd)
        assert not rig.client.ready  # readiness held
        assert rig.client.pending_pods()[0]["name"] == "pod-c"
        # missing redirection rules: NACKed with the reason, not served
        rig.captured["all"] = False
        with pytest.raises(Nacked, match="redirection rules are missing"):
            await rig.server.add(add("d"), fd)
        assert "d" not in rig.proxy.pods
    finally:
        os.close(fd)
    await rig.server.delete("c")
    await rig.server.delete("d")
    assert rig.client.ready


async def test_reconnect_reconciles_against_the_new_snapshot(rig: Rig) -> None:
    await until(lambda: rig.client.ready)
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        await rig.server.add(add("b"), fd)
    finally:
        os.close(fd)
    assert set(rig.proxy.pods) == {"a", "b"}
    # the agent restarts and knows only "a": b is stopped at snapshot_sent; a keeps serving
    a_fd = rig.proxy.pods["a"].netns_fd
    path = rig.server.path
    await rig.server.close()
    await until(lambda: not rig.client.connected)
    assert set(rig.proxy.pods) == {"a", "b"}  # agent loss: pods keep serving
    assert not rig.client.ready
    server2 = ZdsServer(path, lambda: [rig.entries[0]])
    await server2.start()
    try:
        await until(lambda: rig.client.ready, within=20)
        assert set(rig.proxy.pods) == {"a"}
        assert rig.proxy.pods["a"].netns_fd == a_fd  # same netns: not restarted
    finally:
        await server2.close()


async def test_no_node_proxy(tmp_path: Path) -> None:
    server = ZdsServer(tmp_path / "z.sock", list)
    await server.start()
    try:
        with pytest.raises(NoNodeProxy):
            await server.add(add("a"), 0)
        assert await server.delete("a") == 0
    finally:
        await server.close()


# ----------------------------------------------------------------- a hostile agent


def _rights(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


HOSTILE: dict[str, Callable[[int, int], tuple[bytes, list[Any]]]] = {
    "oversized": lambda ns, _: (b"\x0a" * 3000, []),
    "fd on a del": lambda ns, _: (encode_request(Del("x")), _rights([ns])),
    "add without fd": lambda ns, _: (encode_request(add("x")), []),
    "fd that is not a netns": lambda ns, null: (encode_request(add("x")), _rights([null])),
    "garbage protobuf": lambda ns, _: (b"\xff\xfe\xfd\xfc", []),
    "unknown oneof": lambda ns, _: (b"\x32\x00", []),
    "two fds": lambda ns, null: (encode_request(add("x")), _rights([ns, ns])),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_agent(case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The client drops the connection with a protocol error (no traceback, no leaked fd,
    no pod started) and connects again."""
    listener = listen_seqpacket(tmp_path / "h.sock")
    proxy = FakeProxy()

    async def rules(_fd: int) -> bool:
        return True

    client = ZdsClient(proxy, tmp_path / "h.sock", rules_check=rules)  # type: ignore[arg-type]
    ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    loop = asyncio.get_running_loop()
    before = len(os.listdir("/proc/self/fd"))
    await client.start()
    try:
        conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
        assert conn.recv(100) == encode_hello(Hello())
        data, anc = HOSTILE[case](ns, null)
        conn.sendmsg([data], anc)
        # the client hangs up: EOF on our side
        conn.setblocking(False)
        await until(lambda: client.connects == 1 and not client.connected)
        assert proxy.pods == {}
        assert "protocol error" in client.last_error or "lost" in client.last_error
        conn.close()
        conn2, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)  # it comes back
        conn2.close()
    finally:
        await client.stop()
        listener.close()
    assert len(os.listdir("/proc/self/fd")) <= before + 2  # ns, null
    os.close(ns)
    os.close(null)
    assert "Traceback" not in caplog.text


# ----------------------------------------------------------------- a hostile node proxy


@pytest.mark.parametrize(
    "first",
    [
        b"",  # hangs up at once
        b"\x08\x02",  # hello V2
        b"\xff\xff",  # garbage
        b"\x08\x01" * 600,  # oversized
        None,  # never says hello
    ],
)
async def test_hostile_node_proxy(
    first: bytes | None, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    monkeypatch.setattr("ketch.agent.zds_server.HELLO_TIMEOUT", 0.3)
    monkeypatch.setattr("ketch.agent.zds_server.KEEPALIVE_INTERVAL", 0.2)
    server = ZdsServer(tmp_path / "z.sock", list)
    await server.start()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(str(tmp_path / "z.sock"))
        if first is not None:
            if first:
                sock.send(first)
            else:
                sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        assert await asyncio.to_thread(sock.recv, 2000) == b""  # the agent hung up on it
        assert server.connected == 0
        # a good node proxy still gets served
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)) as ok:
            ok.settimeout(5)
            ok.connect(str(tmp_path / "z.sock"))
            ok.send(encode_hello(Hello()))
            assert await asyncio.to_thread(ok.recv, 2000) == encode_request(SnapshotSent())
            ok.send(b"\x0a\x00")
            await until(lambda: server.connected == 1)
            # an ack nobody asked for is a protocol error
            ok.send(b"\x0a\x00")
            await until(lambda: server.connected == 0, within=10)
    finally:
        sock.close()
        await server.close()
    assert "Traceback" not in caplog.text
