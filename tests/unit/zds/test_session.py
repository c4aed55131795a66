"""Both ends of a ZDS connection as tables (ZDS.md sections 4 and 5)."""

from __future__ import annotations

import pytest

from ketch.zds.messages import Ack, Add, Del, Hello, Keep, SnapshotSent, WorkloadInfo
from ketch.zds.messages import ZdsProtocolError as PE
from ketch.zds.session import (
    AgentSession,
    AgentState,
    ForgetPod,
    KeepPod,
    ProxySession,
    Queued,
    StartPod,
    StopAllExcept,
    StopPod,
)


def add(uid: str) -> Add:
    return Add(uid, WorkloadInfo(uid, "ns", "sa"))


# ----------------------------------------------------------------- agent side


def test_agent_hello_snapshot_incremental() -> None:
    s = AgentSession()
    assert s.next_request() is None
    with pytest.raises(RuntimeError):
        s.queue(add("x"))  # nothing before the hello
    s.receive_hello(Hello())
    assert s.state is AgentState.SNAPSHOT
    s.queue_snapshot([Queued(add("a"), "ta"), Queued(Keep("b"), "tb")])
    s.queue(Del("c"), "tc")  # incremental while the snapshot is in flight: after it
    sent = []
    while (q := s.next_request()) is not None:
        assert s.next_request() is None  # one outstanding message at a time
        sent.append(q.request)
        done = s.receive_ack(Ack("" if q.request != Keep("b") else "nope"))
        assert done is q
    assert sent == [add("a"), Keep("b"), SnapshotSent(), Del("c")]
    assert s.state is AgentState.INCREMENTAL


@pytest.mark.parametrize(
    ("setup", "bad"),
    [
        ("fresh", lambda s: s.receive_ack(Ack())),  # ack before anything was sent
        ("hello", lambda s: s.receive_hello(Hello())),  # second hello
        ("hello", lambda s: s.receive_ack(Ack())),  # ack with nothing outstanding
    ],
)
def test_agent_protocol_errors(setup: str, bad: object) -> None:
    s = AgentSession()
    if setup == "hello":
        s.receive_hello(Hello())
    with pytest.raises(PE):
        bad(s)  # type: ignore[operator]


def test_agent_drop_queued_returns_unacked() -> None:
    s = AgentSession()
    s.receive_hello(Hello())
    s.queue_snapshot([])
    s.queue(add("a"), 1)
    s.queue(Del("b"), 2)
    first = s.next_request()
    assert first is not None
    assert first.request == SnapshotSent()
    dropped = s.drop_queued()
    assert [q.token for q in dropped] == [None, 1, 2]
    assert s.next_request() is None


def test_agent_snapshot_only_adds_and_keeps() -> None:
    s = AgentSession()
    s.receive_hello(Hello())
    with pytest.raises(ValueError, match="adds and keeps"):
        s.queue_snapshot([Queued(Del("a"))])


# ----------------------------------------------------------------- node proxy side

# (requests in order, expected commands, protocol error expected at the last one)
TABLE = [
    # adds and keeps before the snapshot are remembered; snapshot_sent keeps exactly them
    (
        [add("a"), Keep("b"), SnapshotSent()],
        [StartPod(add("a")), KeepPod("b"), StopAllExcept(frozenset({"a", "b"}))],
        False,
    ),
    # del before the snapshot forgets the uid
    (
        [add("a"), Del("a"), SnapshotSent()],
        [StartPod(add("a")), ForgetPod("a"), StopAllExcept(frozenset())],
        False,
    ),
    # after the snapshot: add starts, del stops at once
    (
        [SnapshotSent(), add("c"), Del("c")],
        [StopAllExcept(frozenset()), StartPod(add("c")), StopPod("c")],
        False,
    ),
    ([SnapshotSent(), Keep("a")], [StopAllExcept(frozenset())], True),  # keep after
    ([SnapshotSent(), SnapshotSent()], [StopAllExcept(frozenset())], True),  # second one
]


@pytest.mark.parametrize(("requests", "commands", "error"), TABLE)
def test_proxy_state_machine(requests: list[object], commands: list[object], error: bool) -> None:
    s = ProxySession()
    got = []
    for i, r in enumerate(requests):
        if error and i == len(requests) - 1:
            with pytest.raises(PE):
                s.on_request(r)  # type: ignore[arg-type]
            break
        got.append(s.on_request(r))  # type: ignore[arg-type]
    assert got == commands


def test_proxy_readiness_and_pending() -> None:
    s = ProxySession()
    assert not s.ready
    s.on_request(add("a"))
    s.add_result("a", "listeners: address in use")
    s.on_request(add("b"))
    s.add_result("b")
    s.on_request(SnapshotSent())
    assert not s.ready
    assert s.pending == {"a": "listeners: address in use"}
    s.add_result("a")  # the retry worked
    assert s.ready
    # a failed add, then its del: nothing pending any more
    s.on_request(add("c"))
    s.add_result("c", "boom")
    assert not s.ready
    s.on_request(Del("c"))
    assert s.ready


def test_proxy_reset_reconciles_on_the_next_snapshot() -> None:
    s = ProxySession()
    for r in (add("a"), add("b"), SnapshotSent()):
        s.on_request(r)
    s.add_result("b", "failed")
    s.reset()  # the agent went away: pods keep serving, readiness drops
    assert not s.ready
    assert not s.snapshot_done
    s.on_request(Keep("a"))  # new connection, new snapshot: only a
    assert s.on_request(SnapshotSent()) == StopAllExcept(frozenset({"a"}))
    assert s.pending == {}  # b's pending entry went with it
    assert s.ready
