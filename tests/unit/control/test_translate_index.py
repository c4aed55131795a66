"""The selector indexes of `translate/workloads.py` give what a scan of every object gives."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.api import Service, from_manifest
from ketch.control.translate.peer_authentication import workload_policy_names
from ketch.control.translate.workloads import (
    PolicyIndex,
    SelectorIndex,
    service_index,
    workload_services,
)
from ketch.mesh import (
    Action,
    Authorization,
    MtlsMode,
    PeerAuthentication,
    Scope,
    selector_matches,
)

NAMESPACES = ["ns-a", "ns-b", "istio-system"]
KEYS = ["app", "tier", "v"]
VALUES = ["x", "y"]

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(labels_st, max_size=12), labels_st)
def test_selector_index_equals_scan(
    selectors: list[dict[str, str]], labels: dict[str, str]
) -> None:
    index = SelectorIndex((i, s) for i, s in enumerate(selectors))
    assert index.matching(labels) == [
        i for i, s in enumerate(selectors) if selector_matches(s, labels)
    ]


def _service(rng: random.Random, i: int) -> Service:
    selector = {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, 2))}
    manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": rng.choice(NAMESPACES)},
        "spec": {
            "selector": selector,
            "ports": [{"port": 80, "targetPort": rng.choice([8080, "http", "nope"])}],
        },
    }
    obj = from_manifest(manifest)
    assert isinstance(obj, Service)
    return obj


def _pod_manifest(rng: random.Random, i: int) -> dict[str, object]:
    labels = {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, 3))}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{i}", "namespace": rng.choice(NAMESPACES), "labels": labels},
        "spec": {
            "containers": [
                {"name": "c", "command": ["x"], "ports": [{"name": "http", "containerPort": 8080}]}
            ]
        },
    }


def test_random_store_index_equals_brute_force() -> None:
    rng = random.Random(20261202)
    for _ in range(20):
        services = [_service(rng, i) for i in range(rng.randint(0, 25))]
        authorizations = [
            Authorization(
                name=f"pol-{i}",
                namespace=rng.choice(NAMESPACES),
                scope=Scope.WORKLOAD_SELECTOR,
                action=rng.choice([Action.ALLOW, Action.DENY]),
                selector={k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(0, 2))},
            )
            for i in range(rng.randint(0, 25))
        ]
        pas = [
            PeerAuthentication(
                name=f"pa-{i}",
                namespace=rng.choice(NAMESPACES),
                mode=rng.choice(list(MtlsMode)),
                selector=(
                    {k: rng.choice(VALUES) for k in rng.sample(KEYS, rng.randint(1, 2))}
                    if rng.random() < 0.5
                    else None
                ),
            )
            for i in range(rng.randint(0, 6))
        ]
        pas = [
            PeerAuthentication(
                name=p.name,
                namespace=p.namespace,
                mode=p.mode,
                selector=p.selector,
                port_modes={8080: rng.choice(list(MtlsMode))} if p.selector else {},
            )
            if rng.random() < 0.5
            else p
            for p in pas
        ]
        index = PolicyIndex.build(authorizations, pas)
        by_ns = service_index(services)
        for i in range(30):
            pod = from_manifest(_pod_manifest(rng, i))
            ns = pod.namespace or "default"
            # the services: the index's candidates give what all the Services give
            candidates = by_ns[ns].matching(pod.labels) if ns in by_ns else []
            assert workload_services(pod, candidates) == workload_services(pod, services)  # type: ignore[arg-type]
            # the policies: a scan of every policy, as names_for did before the index
            expected = sorted(
                a.key
                for a in authorizations
                if a.namespace in (ns, "istio-system")
                and a.selector is not None
                and selector_matches(a.selector, pod.labels)
            )
            derived = workload_policy_names(pas, ns, pod.labels)
            assert index.names_for(ns, pod.labels) == (*expected, *derived)
