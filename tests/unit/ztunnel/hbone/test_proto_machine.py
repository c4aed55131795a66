"""Stateful Hypothesis test: random API calls on a client/server pair, bytes pumped between.

Small windows force queueing behind flow control. Invariants: only our own exceptions,
every stream delivers a prefix of what was sent, in order, and once everything is
acknowledged and pumped, un-reset streams deliver everything that was sent.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ketch.ztunnel.hbone import proto
from ketch.ztunnel.hbone.errors import ErrorCode, UsageError
from ketch.ztunnel.hbone.proto import HboneConnection, Role

WINDOW = 20_000
PATTERN = bytes(range(251)) * 200


class PairMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        kw = {"stream_window": WINDOW, "connection_window": 65_535, "max_frame_size": 16_384}
        self.c = HboneConnection(Role.CLIENT, **kw)
        self.s = HboneConnection(Role.SERVER, **kw)
        self.sent: dict[tuple[str, int], bytearray] = {}
        self.got: dict[tuple[str, int], bytearray] = {}
        self.unacked: dict[tuple[str, int], int] = {}
        self.requests: list[int] = []
        self.open: set[int] = set()  # 2xx exchanged, as the client saw it
        self.reset: set[int] = set()
        self.ended: set[tuple[str, int]] = set()  # receiver side saw END_STREAM

    def _conn(self, side: str) -> HboneConnection:
        return self.c if side == "c" else self.s

    def _pump(self) -> None:
        for _ in range(50):
            a, b = self.c.data_to_send(), self.s.data_to_send()
            if not a and not b:
                return
            self._events("s", self.s.receive_data(a) if a else [])
            self._events("c", self.c.receive_data(b) if b else [])
        raise AssertionError("never quiet")

    def _events(self, side: str, events: list[proto.Event]) -> None:
        for e in events:
            if isinstance(e, proto.ConnectRequest):
                self.requests.append(e.stream_id)
            elif isinstance(e, proto.ConnectResponse) and e.status == 200:
                self.open.add(e.stream_id)
            elif isinstance(e, proto.Data):
                key = (side, e.stream_id)
                self.got.setdefault(key, bytearray()).extend(e.data)
                self.unacked[key] = self.unacked.get(key, 0) + len(e.data)
            elif isinstance(e, proto.StreamEnded):
                self.ended.add((side, e.stream_id))
            elif isinstance(e, proto.StreamReset):
                self.reset.add(e.stream_id)

    @precondition(lambda self: self.c.can_open_stream())
    @rule()
    def open_stream(self) -> None:
        self.c.connect("10.0.0.1:80")
        self._pump()

    @precondition(lambda self: bool(self.requests))
    @rule(status=st.sampled_from([200, 200, 200, 503]))
    def respond(self, status: int) -> None:
        sid = self.requests.pop(0)
        try:
            self.s.respond(sid, status)
        except UsageError:
            assert sid in self.reset
        self._pump()

    @rule(
        side=st.sampled_from(["c", "s"]),
        pick=st.integers(0, 50),
        size=st.integers(0, 30_000),
        end=st.booleans(),
    )
    def send(self, side: str, pick: int, size: int, end: bool) -> None:
        if not self.open:
            return
        sid = sorted(self.open)[pick % len(self.open)]
        off = len(self.sent.get((side, sid), b"")) + sid
        data = PATTERN[off % 251 : off % 251 + size]  # position-dependent: catches reordering
        try:
            self._conn(side).send_data(sid, data, end=end)
        except UsageError:
            return  # closed / half-closed / reset: the core refused, nothing was queued
        self.sent.setdefault((side, sid), bytearray()).extend(data)
        self._pump()

    @rule(side=st.sampled_from(["c", "s"]), pick=st.integers(0, 50))
    def reset_stream(self, side: str, pick: int) -> None:
        if self.open:
            sid = sorted(self.open)[pick % len(self.open)]
            self._conn(side).reset(sid, ErrorCode.CANCEL)
            self.reset.add(sid)
            self._pump()

    @rule(side=st.sampled_from(["c", "s"]))
    def ack(self, side: str) -> None:
        for (sd, sid), n in list(self.unacked.items()):
            if sd == side and n:
                self._conn(side).ack_data(sid, n)
                self.unacked[(sd, sid)] = 0
        self._pump()

    @rule()
    def ping(self) -> None:
        self.c.ping(b"12345678")
        self._pump()

    @invariant()
    def delivered_is_prefix_of_sent(self) -> None:
        for (side, sid), got in self.got.items():
            sender = "s" if side == "c" else "c"
            assert self.sent.get((sender, sid), b"").startswith(got)

    @invariant()
    def receiver_never_holds_more_than_a_window(self) -> None:
        for n in self.unacked.values():
            assert n <= WINDOW

    def teardown(self) -> None:
        # Acknowledge everything until quiet: all data on un-reset streams arrives.
        for _ in range(100):
            self.ack("c")
            self.ack("s")
            if not any(self.unacked.values()):
                break
        for (side, sid), sent in self.sent.items():
            receiver = "s" if side == "c" else "c"
            if sid not in self.reset:
                assert self.got.get((receiver, sid), b"") == sent


PairMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestPair = PairMachine.TestCase
