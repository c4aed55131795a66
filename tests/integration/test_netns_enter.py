"""Entering namespaces: threads, fds, sockets staying where they were made."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from ketch.netns import (
    NetnsEnterError,
    close_netns,
    current_netns_id,
    in_netns,
    netns_fd,
    ns_run,
    open_netns,
    run_in_netns,
    serve_netns,
    stop_serving,
)

from .conftest import TwoNodes

pytestmark = pytest.mark.integration


def _netns_file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def test_in_netns_by_name_path_and_fd(two_nodes: TwoNodes) -> None:
    pod = two_nodes.a
    expected = _netns_file_id(pod.netns_path)
    home = current_netns_id()
    assert in_netns(pod.netns, current_netns_id) == expected
    assert in_netns(pod.netns_path, current_netns_id) == expected
    fd = open_netns(pod.netns)
    try:
        assert in_netns(fd, current_netns_id) == expected
        os.fstat(fd)  # borrowed fd left open
    finally:
        close_netns(fd)
    close_netns(fd)  # closing twice is harmless
    assert current_netns_id() == home


def test_exceptions_propagate_and_caller_stays(two_nodes: TwoNodes) -> None:
    home = current_netns_id()

    def boom() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        in_netns(two_nodes.a.netns, boom)
    assert current_netns_id() == home


def test_a_non_netns_fd_is_refused() -> None:
    with open("/dev/null") as f, pytest.raises(NetnsEnterError, match="setns"):
        in_netns(f.fileno(), current_netns_id)


async def test_run_in_netns_keeps_the_loop_thread_home(two_nodes: TwoNodes) -> None:
    home = current_netns_id()
    results = await asyncio.gather(
        run_in_netns(two_nodes.a.netns, current_netns_id),
        run_in_netns(two_nodes.b.netns, current_netns_id),
    )
    assert list(results) == [
        _netns_file_id(two_nodes.a.netns_path),
        _netns_file_id(two_nodes.b.netns_path),
    ]
    assert current_netns_id() == home


def test_socket_made_in_a_pod_stays_in_the_pod(two_nodes: TwoNodes) -> None:
    a = two_nodes.a

    def make() -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    sock = in_netns(a.netns, make)
    with sock:
        # the pod's address only exists in the pod netns: binding proves where the socket is
        sock.bind((a.ip, 0))
    with socket.socket() as here, pytest.raises(OSError, match="assign"):
        here.bind((a.ip, 0))


def test_ns_run_with_a_held_fd(two_nodes: TwoNodes) -> None:
    with netns_fd(two_nodes.b.netns) as fd:
        out = ns_run(fd, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert "10.244.2.2/32" in out


async def test_a_served_netns_runs_calls_on_one_worker_thread(two_nodes: TwoNodes) -> None:
    import threading

    home = current_netns_id()
    expected = _netns_file_id(two_nodes.a.netns_path)
    fd = open_netns(two_nodes.a.netns)
    try:
        serve_netns(fd)
        assert serve_netns(fd) is serve_netns(fd)  # one worker per fd
        where = await asyncio.gather(*(run_in_netns(fd, current_netns_id) for _ in range(20)))
        assert set(where) == {expected}
        names = {await run_in_netns(fd, lambda: threading.current_thread().name) for _ in range(5)}
        assert names == {f"netns-worker:fd{fd}"}
        with pytest.raises(ZeroDivisionError):
            await run_in_netns(fd, lambda: 1 // 0)  # errors reach the caller...
        assert await run_in_netns(fd, current_netns_id) == expected  # ...the worker lives on
        stop_serving(fd)
        # afterwards: a fresh thread per call, same result
        assert await run_in_netns(fd, lambda: threading.current_thread().name) != names.pop()
        assert await run_in_netns(fd, current_netns_id) == expected
    finally:
        stop_serving(fd)
        close_netns(fd)
    assert current_netns_id() == home


def test_serving_a_non_netns_fd_is_refused() -> None:
    import threading

    before = threading.active_count()
    with open("/dev/null") as f, pytest.raises(NetnsEnterError, match="setns"):
        serve_netns(f.fileno())
    assert threading.active_count() == before
