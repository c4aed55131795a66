"""Any interleaving of enrolments, removals, deliveries and disconnects between a well-
behaved agent (`AgentSession` per connection) and a node proxy (`ProxySession` across
connections) raises no protocol error, and once the node proxy is connected and everything
is delivered, it runs exactly the pods the agent holds and is ready."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ketch.zds.messages import Ack, Add, Del, Hello, WorkloadInfo
from ketch.zds.session import (
    AgentSession,
    ForgetPod,
    KeepPod,
    ProxySession,
    Queued,
    StartPod,
    StopAllExcept,
    StopPod,
)

UIDS = st.sampled_from(["a", "b", "c", "d"])


def add(uid: str) -> Add:
    return Add(uid, WorkloadInfo(uid, "ns", "sa"))


class Handoff(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.enrolled: set[str] = set()  # the agent's cache
        self.running: set[str] = set()  # pods the node proxy serves
        self.proxy = ProxySession()
        self.agent: AgentSession | None = None

    def _connect(self) -> None:
        self.agent = AgentSession()
        self.agent.receive_hello(Hello())
        self.agent.queue_snapshot(Queued(add(u)) for u in sorted(self.enrolled))

    def _deliver_one(self) -> bool:
        assert self.agent is not None
        q = self.agent.next_request()
        if q is None:
            return False
        cmd = self.proxy.on_request(q.request)
        if isinstance(cmd, StartPod):
            self.running.add(cmd.add.uid)
            self.proxy.add_result(cmd.add.uid)
        elif isinstance(cmd, StopPod):
            self.running.discard(cmd.uid)
        elif isinstance(cmd, StopAllExcept):
            self.running &= cmd.keep
        else:
            assert isinstance(cmd, ForgetPod | KeepPod)
        self.agent.receive_ack(Ack())
        return True

    @rule()
    @precondition(lambda self: self.agent is None)
    def connect(self) -> None:
        self._connect()

    @rule()
    @precondition(lambda self: self.agent is not None)
    def disconnect(self) -> None:
        assert self.agent is not None
        self.agent.drop_queued()
        self.agent = None
        self.proxy.reset()

    @rule(uid=UIDS)
    def enroll(self, uid: str) -> None:
        if uid in self.enrolled:
            return
        self.enrolled.add(uid)
        if self.agent is not None:
            self.agent.queue(add(uid))

    @rule(uid=UIDS)
    def remove(self, uid: str) -> None:
        if uid not in self.enrolled:
            return
        self.enrolled.discard(uid)
        if self.agent is not None:
            self.agent.queue(Del(uid))

    @rule(n=st.integers(1, 4))
    @precondition(lambda self: self.agent is not None)
    def deliver(self, n: int) -> None:
        for _ in range(n):
            if not self._deliver_one():
                break

    @invariant()
    def in_sync_when_idle(self) -> None:
        # a connection with its snapshot done and nothing in flight: both sides agree
        if self.agent is not None and self.agent.idle and self.proxy.snapshot_done:
            assert self.running == self.enrolled
            assert self.proxy.ready

    def teardown(self) -> None:
        if self.agent is None:
            self._connect()
        while self._deliver_one():
            pass
        assert self.running == self.enrolled
        assert self.proxy.ready


TestHandoff = Handoff.TestCase
TestHandoff.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
