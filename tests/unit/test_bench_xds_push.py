"""bench/xds_push.py's pure parts: the synthetic store translates without warnings into the
expected resources, a changed policy keeps its resource name, percentiles and the report.
The measuring itself runs only as `uv run --frozen python bench/xds_push.py`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import xds_push

from ketch.control.build import MeshBuild
from ketch.store.memory import MemoryStore
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE


def test_synthetic_store_translates_cleanly() -> None:
    store = MemoryStore()
    store.apply(xds_push.make_objects(pods=60, services=6, policies=5, nodes=3))
    warned: list[str] = []
    resources = MeshBuild(warn=warned.append)(store)
    assert warned == []
    assert len(resources[ADDRESS_TYPE]) == 60 + 6
    names = set(resources[AUTHORIZATION_TYPE])
    assert names == {xds_push.policy_resource_name(p, 6) for p in range(5)}

    before = resources[AUTHORIZATION_TYPE]
    store.apply([xds_push.policy(3, 6, 1)])
    after = MeshBuild()(store)[AUTHORIZATION_TYPE]
    changed = {n for n in after if after[n][0] != before[n][0]}
    assert changed == {xds_push.policy_resource_name(3, 6)}


def test_many_namespaces_and_addresses_stay_valid() -> None:
    objects = xds_push.make_objects(pods=300, services=250, policies=2, nodes=2)
    assert sum(o["kind"] == "Namespace" for o in objects) == 2
    ips = [o["status"]["podIP"] for o in objects if o["kind"] == "Pod"]
    assert len(set(ips)) == 300
    assert xds_push._ip(0, 65536 + 258) == "10.1.1.2"


def test_percentile_interpolates() -> None:
    assert xds_push.pct([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert xds_push.pct([1.0, 2.0], 0.99) == 1.99
    assert xds_push.pct([0.2], 0.99) == 0.2


def test_report_states_targets() -> None:
    args = argparse.Namespace(pods=10, services=1, policies=1, clients=2, changes=2, decode=False)
    res = xds_push.Result(
        args, objects=13, sync_s=0.5, sync_per_client=[0.4, 0.5], changes=[0.15, 0.25]
    )
    text = xds_push.report(res)
    assert "full sync of 10 clients under 1 s: met (500 ms)" in text
    # p99 of [150, 250] ms is 249 ms: 149 ms beyond the debounce
    assert "MISSED (149 ms)" in text


def test_mesh_build_caches_validate_and_encode_only_changes() -> None:
    """A rebuilt MeshBuild re-validates only written manifests and re-encodes only changed
    mesh objects, and gives exactly what a from-scratch build gives."""
    store = MemoryStore()
    store.apply(xds_push.make_objects(pods=60, services=6, policies=5, nodes=3))
    build = MeshBuild()
    first = build(store)
    assert build.validated == len(store.list().items)
    assert build.encoded == 60 + 6 + 5
    assert build(store) == first == MeshBuild()(store)
    assert (build.validated, build.encoded) == (0, 0)

    # a policy rewrite with the same selector: one manifest, one Authorization
    store.apply([xds_push.policy(3, 6, 1)])
    after = build(store)
    assert (build.validated, build.encoded) == (1, 1)
    assert after == MeshBuild()(store)
    assert after[ADDRESS_TYPE] == first[ADDRESS_TYPE]

    # a pod relabelled away from its service: that pod's workload changes, and so does
    # nothing else (the Service resource lists no endpoints)
    pod = next(o for o in store.list().items if o["kind"] == "Pod")
    relabelled = {**pod, "metadata": {**pod["metadata"], "labels": {"app": "elsewhere"}}}
    store.apply([relabelled])
    again = build(store)
    assert (build.validated, build.encoded) == (1, 1)
    assert again == MeshBuild()(store)
    assert list(again[ADDRESS_TYPE]) == list(MeshBuild()(store)[ADDRESS_TYPE])

    # a delete drops the object from the caches and the output
    store.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])
    gone = build(store)
    assert (build.validated, build.encoded) == (0, 0)
    assert gone == MeshBuild()(store)
    assert len(gone[ADDRESS_TYPE]) == 60 + 6 - 1


def test_mesh_build_update_from_watch_events_equals_a_full_build() -> None:
    """The push's incremental path: `update(changes)` with the store's events gives the
    snapshot a from-scratch build gives, validating and encoding only what changed."""
    from ketch.control.push import SnapshotHolder, StoreChange

    store = MemoryStore()
    store.apply(xds_push.make_objects(pods=60, services=6, policies=5, nodes=3))
    build = MeshBuild()
    holder = SnapshotHolder(lambda: build(store), build.update)
    holder.rebuild()
    revision = store.revision()

    def step(write: Any) -> list[Any]:
        nonlocal revision
        write()
        events = store.events(revision)
        revision = store.revision()
        deltas = holder.rebuild([StoreChange(revision, events)])
        full = MeshBuild()(store)
        assert {t: dict(r) for t, r in holder.current.resources.items()} == full
        return deltas

    # a policy rewrite with the same selector: one manifest, one Authorization, no Address
    (delta,) = step(lambda: store.apply([xds_push.policy(3, 6, 1)]))
    assert (build.validated, build.encoded) == (1, 1)
    assert (delta.type_url, list(delta.changed)) == (
        AUTHORIZATION_TYPE,
        [xds_push.policy_resource_name(3, 6)],
    )
    pod = next(o for o in store.list().items if o["kind"] == "Pod")
    relabelled = {**pod, "metadata": {**pod["metadata"], "labels": {"app": "elsewhere"}}}
    (delta,) = step(lambda: store.apply([relabelled]))
    assert (build.validated, build.encoded) == (1, 1)
    assert delta.type_url == ADDRESS_TYPE
    svc = next(o for o in store.list().items if o["kind"] == "Service")
    step(lambda: store.delete("Service", svc["metadata"]["namespace"], svc["metadata"]["name"]))
    step(lambda: store.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"]))
    ns = next(o for o in store.list().items if o["kind"] == "Namespace")
    labelled = {**ns, "metadata": {**ns["metadata"], "labels": {"istio.io/use-waypoint": "w"}}}
    step(lambda: store.apply([labelled]))
    # several writes in one push, one object written twice: the last write counts
    step(
        lambda: (
            store.apply([xds_push.policy(1, 6, 2)]),
            store.apply([xds_push.policy(1, 6, 3)]),
            store.delete("AuthorizationPolicy", *_policy_key(store, 2)),
        )
    )
    step(lambda: store.delete("Namespace", "", ns["metadata"]["name"]))  # with its contents
    # a resync: a full build of the same store changes nothing
    assert holder.rebuild([StoreChange(revision, resync=True)]) == []


def _policy_key(store: MemoryStore, index: int) -> tuple[str, str]:
    ap = [o for o in store.list().items if o["kind"] == "AuthorizationPolicy"][index]
    return ap["metadata"]["namespace"], ap["metadata"]["name"]
