"""Properties of the push core over random inputs (Hypothesis): applying the deltas gives
the new snapshot; a client following a stream's responses ends up holding exactly the
snapshot, whatever it held before reconnecting; the debouncer never loses an event and
never pushes early."""

from __future__ import annotations

from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from ketch.control.push import (
    Debouncer,
    Snapshot,
    snapshot_delta,
)
from ketch.xds.session import ServerStream
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

names = st.sampled_from([f"n{i}" for i in range(6)])
versions = st.sampled_from(["1", "2", "3"])
type_maps = st.dictionaries(names, versions, max_size=6)
snapshots = st.fixed_dictionaries({ADDRESS_TYPE: type_maps, AUTHORIZATION_TYPE: type_maps})


def as_snapshot(spec: dict[str, dict[str, str]], version: int = 0) -> Snapshot:
    return Snapshot(
        version, {t: {n: (v, f"{n}@{v}") for n, v in m.items()} for t, m in spec.items()}
    )


@given(snapshots, snapshots)
def test_applying_the_deltas_gives_the_new_snapshot(
    old: dict[str, dict[str, str]], new: dict[str, dict[str, str]]
) -> None:
    state = {t: dict(m) for t, m in old.items()}
    for delta in snapshot_delta(as_snapshot(old), as_snapshot(new)):
        for name, (version, _) in delta.changed.items():
            state[delta.type_url][name] = version
        for name in delta.removed:
            del state[delta.type_url][name]
    assert state == new


def _entry(name: str, version: str) -> tuple[str, Any]:
    return version, any_pb2.Any(type_url=ADDRESS_TYPE, value=f"{name}@{version}".encode())


@given(type_maps, st.lists(type_maps, min_size=1, max_size=5), st.lists(st.booleans(), max_size=5))
def test_a_client_following_the_stream_holds_the_snapshot(
    held_before: dict[str, str], snapshots_: list[dict[str, str]], acks: list[bool]
) -> None:
    s = ServerStream()
    client = dict(held_before)
    s.on_request(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=ADDRESS_TYPE, initial_resource_versions=held_before
        )
    )
    for i, spec in enumerate(snapshots_):
        response = s.respond(ADDRESS_TYPE, {n: _entry(n, v) for n, v in spec.items()})
        if response is not None:
            for r in response.resources:
                assert r.resource.value == f"{r.name}@{r.version}".encode()
                client[r.name] = r.version
            for name in response.removed_resources:
                client.pop(name, None)
            ack = discovery_pb2.DeltaDiscoveryRequest(
                type_url=ADDRESS_TYPE, response_nonce=response.nonce
            )
            if i < len(acks) and not acks[i]:
                ack.error_detail.message = "rejected"
            assert s.on_request(ack) == []
        assert client == spec


@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), max_size=40))
def test_debouncer_loses_nothing_and_never_pushes_early(times: list[float]) -> None:
    deb = Debouncer()
    pushed = 0
    events_in_burst: list[float] = []
    for now in sorted(times):
        due = deb.deadline()
        if due is not None and due <= now:
            push = deb.poll(due)
            assert push is not None
            pushed += push.events
            events_in_burst = []
        deb.event(now)
        events_in_burst.append(now)
        # Not due before the quiet window after the last event, unless the burst is old.
        early = deb.poll(now + deb.quiet / 2)
        if early is not None:
            assert now + deb.quiet / 2 >= events_in_burst[0] + deb.max_delay
            pushed += early.events
            events_in_burst = []
    due = deb.deadline()
    if due is not None:
        push = deb.poll(due)
        assert push is not None
        pushed += push.events
    assert pushed == len(times)
    assert deb.pending == 0
