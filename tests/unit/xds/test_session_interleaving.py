"""Any interleaving of config changes, full and incremental pushes, delayed ACKs, NACKs
(the client rejecting chosen resource versions) and reconnects keeps the two ends
consistent: after the client stops rejecting, a final full push and its ACK leave the
client holding exactly the server's snapshot, and the server reports SYNCED."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from google.protobuf import any_pb2, wrappers_pb2
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, ClientStream, ServerStream, SyncState

TYPES = (ADDRESS_TYPE, AUTHORIZATION_TYPE)
NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
TYPE = st.sampled_from(TYPES)


def _packed(name: str, version: str) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(wrappers_pb2.StringValue(value=f"{name}@{version}"))
    return out


class Session(RuleBasedStateMachine):
    #: types the client looks up on demand (subscribed by name, not wildcard)
    ON_DEMAND: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.demanded: dict[str, set[str]] = {t: set() for t in TYPES}
        self.snapshot: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.counter = 0
        self.client = ClientStream(TYPES, on_demand=self.ON_DEMAND)
        self.store: dict[str, dict[str, str]] = {t: {} for t in TYPES}
        self.poison: set[tuple[str, str, str]] = set()
        self.connect()

    # -- plumbing -----------------------------------------------------------------------

    def connect(self) -> None:
        n = iter(range(1, 1_000_000))
        self.server = ServerStream(TYPES, nonces=lambda: f"n{next(n)}")
        self.to_client: deque[DeltaDiscoveryResponse] = deque()
        self.to_server: deque[DeltaDiscoveryRequest] = deque(
            self.client.initial_requests(Node(id="ztunnel~10.0.0.1~z.ns~ns.svc.cluster.local"))
        )

    def resources(self, type_url: str) -> dict[str, tuple[str, any_pb2.Any]]:
        return {n: (v, _packed(n, v)) for n, v in self.snapshot[type_url].items()}

    def send(self, resp: DeltaDiscoveryResponse | None) -> None:
        if resp is not None:
            self.to_client.append(resp)

    def apply(
        self, type_url: str, upserts: list[tuple[str, any_pb2.Any]], removals: list[str]
    ) -> Mapping[str, str]:
        rejected: dict[str, str] = {}
        for name, packed in upserts:
            value = wrappers_pb2.StringValue()
            assert packed.Unpack(value)
            version = value.value.split("@", 1)[1]
            if (type_url, name, version) in self.poison:
                rejected[name] = f"version {version} is poisoned"
            else:
                self.store[type_url][name] = version
        for name in removals:
            self.store[type_url].pop(name, None)
        return rejected

    def deliver_one_to_client(self) -> None:
        self.to_server.append(self.client.on_response(self.to_client.popleft(), self.apply))

    def deliver_one_to_server(self) -> None:
        for type_url in self.server.on_request(self.to_server.popleft()):
            self.send(self.server.respond(type_url, self.resources(type_url)))

    def drain(self) -> None:
        while self.to_client or self.to_server:
            if self.to_server:
                self.deliver_one_to_server()
            else:
                self.deliver_one_to_client()

    # -- rules --------------------------------------------------------------------------

    @rule(type_url=TYPE, name=NAMES)
    def change(self, type_url: str, name: str) -> None:
        self.counter += 1
        self.snapshot[type_url][name] = f"v{self.counter}"

    @rule(type_url=TYPE, name=NAMES)
    def delete(self, type_url: str, name: str) -> None:
        self.snapshot[type_url].pop(name, None)

    @rule(type_url=TYPE)
    def full_push(self, type_url: str) -> None:
        self.send(self.server.respond(type_url, self.resources(type_url), full=True))

    @rule(type_url=TYPE, pick=st.sets(NAMES), gone=st.sets(NAMES))
    def incremental_push(self, type_url: str, pick: set[str], gone: set[str]) -> None:
        changed = {n: r for n, r in self.resources(type_url).items() if n in pick}
        removed = {n for n in gone if n not in self.snapshot[type_url]}
        self.send(self.server.respond(type_url, changed, full=False, removed=removed))

    @rule(type_url=TYPE, name=NAMES)
    def poison_current(self, type_url: str, name: str) -> None:
        if name in self.snapshot[type_url]:
            self.poison.add((type_url, name, self.snapshot[type_url][name]))

    @rule()
    def to_client_one(self) -> None:
        if self.to_client:
            self.deliver_one_to_client()

    @rule()
    def to_server_one(self) -> None:
        if self.to_server:
            self.deliver_one_to_server()

    @rule(type_url=TYPE, name=NAMES)
    def demand(self, type_url: str, name: str) -> None:
        if type_url in self.ON_DEMAND:
            self.demanded[type_url].add(name)
            self.to_server.append(self.client.demand(type_url, [name]))

    @rule()
    def reconnect(self) -> None:
        self.connect()

    # -- checks -------------------------------------------------------------------------

    @invariant()
    def client_versions_match_what_was_applied(self) -> None:
        for t in TYPES:
            assert dict(self.client.versions(t)) == self.store[t]

    def teardown(self) -> None:
        self.poison.clear()
        self.drain()
        for t in TYPES:
            self.send(self.server.respond(t, self.resources(t), full=True))
        self.drain()
        for t in TYPES:
            expected = self.snapshot[t]
            if t in self.ON_DEMAND:
                expected = {n: v for n, v in expected.items() if n in self.demanded[t]}
            assert self.store[t] == expected, t
            assert dict(self.client.versions(t)) == expected
            assert self.server.status(t).state is SyncState.SYNCED
            assert self.client.synced(t)
        # Nothing more to send: the server's view equals the client's.
        for t in TYPES:
            assert self.server.respond(t, self.resources(t), full=True) is None


class OnDemandSession(Session):
    """The same with Address looked up on demand (ztunnel's XDS_ON_DEMAND)."""

    ON_DEMAND = (ADDRESS_TYPE,)


_SETTINGS = settings(max_examples=300, stateful_step_count=40, deadline=None)
Session.TestCase.settings = _SETTINGS
OnDemandSession.TestCase.settings = _SETTINGS
TestSession = Session.TestCase
TestOnDemandSession = OnDemandSession.TestCase
