"""`IncrementalMesh` against the reference, `translate_all`: after every step of random
sequences of creates, updates and deletes (of every translated kind, invalid manifests
included), the incremental snapshot equals a full translation of the objects held."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.control.translate.incremental import IncrementalMesh, MeshChanges, object_key
from ketch.control.translate.snapshot import MeshSnapshot, translate_all

NAMESPACES = ("a", "b", "istio-system")
LABELS = {"app": ("x", "y"), "tier": ("1", "2")}


def _labels(rng: random.Random) -> dict[str, str]:
    return {k: rng.choice(vs) for k, vs in LABELS.items() if rng.random() < 0.6}


def _selector(rng: random.Random) -> dict[str, Any] | None:
    labels = _labels(rng)
    return {"matchLabels": labels} if labels and rng.random() < 0.8 else None


def make_object(rng: random.Random) -> dict[str, Any]:
    """One random manifest from a small universe of names, so that updates and deletes hit
    objects that exist and selectors overlap."""
    kind = rng.choice(
        ["Pod"] * 4
        + ["Service"] * 2
        + ["AuthorizationPolicy"] * 2
        + ["PeerAuthentication", "Namespace", "Node", "Gateway"]
    )
    ns = rng.choice(NAMESPACES)
    if kind == "Namespace":
        labels = {"istio.io/use-waypoint": "wp"} if rng.random() < 0.5 else {}
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": ns, "labels": labels}}
    if kind == "Node":
        zone = rng.choice(["z1", "z2", None])
        labels = {"topology.kubernetes.io/zone": zone} if zone else {}
        name = rng.choice(["n1", "n2"])
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "labels": labels}}
    if kind == "Gateway":
        return {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": kind,
            "metadata": {
                "name": "wp",
                "namespace": ns,
                "labels": {"istio.io/waypoint-for": rng.choice(["service", "workload", "all"])},
            },
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        }
    if kind == "Pod":
        i = rng.randrange(6)
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {
                "name": f"p{i}",
                "namespace": ns,
                "labels": _labels(rng),
                "annotations": {"ambient.istio.io/redirection": "enabled"}
                if rng.random() < 0.7
                else {},
            },
            "spec": {
                "nodeName": rng.choice(["n1", "n2", "n3"]),
                "containers": [
                    {
                        "name": "c",
                        "command": ["sleep", "1"],
                        "ports": [{"name": "http", "containerPort": rng.choice([8080, 8081])}],
                    }
                ],
            },
            "status": {
                "phase": rng.choice(["Running", "Running", "Succeeded"]),
                "podIP": f"10.0.{NAMESPACES.index(ns)}.{i + 1}" if rng.random() < 0.9 else None,
                "conditions": [{"type": "Ready", "status": rng.choice(["True", "False"])}],
            },
        }
        if rng.random() < 0.05:
            pod["spec"]["containers"] = "not a list"  # invalid: warned about, left out
        return pod
    if kind == "Service":
        selector = _labels(rng)
        return {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": f"s{rng.randrange(3)}", "namespace": ns},
            "spec": {
                "selector": selector or None,
                "clusterIP": rng.choice(["10.96.0.1", "10.96.0.2", "None"]),
                "ports": [{"name": "http", "port": 80, "targetPort": rng.choice(["http", 9090])}],
            },
        }
    if kind == "AuthorizationPolicy":
        spec: dict[str, Any] = {
            "action": rng.choice(["ALLOW", "DENY"]),
            "rules": [{"from": [{"source": {"namespaces": [rng.choice(NAMESPACES)]}}]}],
        }
        selector = _selector(rng)
        if selector:
            spec["selector"] = selector
        if rng.random() < 0.1:
            spec["rules"] = [{"to": [{"operation": {"methods": ["GET"]}}]}]  # L7: warned
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": kind,
            "metadata": {"name": f"ap{rng.randrange(4)}", "namespace": ns},
            "spec": spec,
        }
    spec = {"mtls": {"mode": rng.choice(["STRICT", "PERMISSIVE", "DISABLE", "UNSET"])}}
    selector = _selector(rng)
    if selector:
        spec["selector"] = selector
        if rng.random() < 0.5:
            mode = rng.choice(["STRICT", "PERMISSIVE", "DISABLE"])
            spec["portLevelMtls"] = {"8080": {"mode": mode}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {
            "name": f"pa{rng.randrange(2)}",
            "namespace": ns,
            "creationTimestamp": f"2026-01-0{rng.randrange(1, 4)}T00:00:00Z",
        },
        "spec": spec,
    }


def _key(m: dict[str, Any]) -> tuple[str, str, str]:
    key = object_key(m)
    assert key is not None
    return key


def _comparable(s: MeshSnapshot) -> tuple[object, ...]:
    return (
        dict(s.workloads),
        dict(s.services),
        dict(s.authorizations),
        dict(s.peer_authentications),
        sorted(s.warnings),
    )


def run_sequence(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    store: dict[tuple[str, str, str], dict[str, Any]] = {}
    mesh = IncrementalMesh()
    previous = translate_all([])
    for _ in range(steps):
        upserted: dict[tuple[str, str, str], dict[str, Any]] = {}
        deleted: set[tuple[str, str, str]] = set()
        for _ in range(rng.choice([1, 1, 1, 2, 5])):  # a debounced push: several changes
            if store and rng.random() < 0.25:
                key = rng.choice(sorted(store))
                deleted.add(key)
                upserted.pop(key, None)
                store.pop(key)
            else:
                m = make_object(rng)
                key = _key(m)
                store[key] = m
                upserted[key] = m
                deleted.discard(key)
        changes = mesh.apply(upserted.values(), deleted)
        expected = translate_all(list(store.values()))
        got = mesh.snapshot()
        assert _comparable(got) == _comparable(expected)
        # every resource that differs from the previous step is reported as touched
        for attr, touched in (
            ("workloads", changes.workloads),
            ("services", changes.services),
            ("authorizations", changes.authorizations),
        ):
            before, after = getattr(previous, attr), getattr(expected, attr)
            differ = {n for n in {*before, *after} if before.get(n) != after.get(n)}
            assert differ <= touched, attr
        previous = expected


@pytest.mark.parametrize("seed", range(40))
def test_incremental_equals_full_translation(seed: int) -> None:
    run_sequence(seed, steps=60)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=40))
def test_incremental_equals_full_translation_hypothesis(seed: int, steps: int) -> None:
    run_sequence(seed, steps)


def test_reset_equals_full_translation_and_reports_removals() -> None:
    rng = random.Random(7)
    objects = {_key(m): m for m in (make_object(rng) for _ in range(80))}
    mesh = IncrementalMesh()
    mesh.apply(objects.values())
    first = mesh.snapshot()
    kept = dict(list(objects.items())[:20])
    changes = mesh.reset(kept.values())
    assert _comparable(mesh.snapshot()) == _comparable(translate_all(list(kept.values())))
    assert set(first.workloads) - set(mesh.workloads) <= changes.workloads


def test_a_policy_rule_change_touches_one_authorization_and_no_workload() -> None:
    """The cheap case the push relies on: same selector, other rules."""
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": "a", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}]},
            "status": {"phase": "Running", "podIP": f"10.0.0.{i + 1}"},
        }
        for i in range(5)
    ]

    def policy(action: str) -> dict[str, Any]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "ap", "namespace": "a"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "action": action},
        }

    mesh = IncrementalMesh()
    first = mesh.apply([*pods, policy("ALLOW")])
    assert len(first.workloads) == 5
    assert all(w.authorization_policies == ("a/ap",) for w in mesh.workloads.values())
    again = mesh.apply([policy("DENY")])
    assert again == MeshChanges(authorizations=frozenset({"a/ap"}))
    gone = mesh.apply(deleted=[("AuthorizationPolicy", "a", "ap")])
    assert gone.authorizations == {"a/ap"}
    assert len(gone.workloads) == 5
    assert all(w.authorization_policies == () for w in mesh.workloads.values())
