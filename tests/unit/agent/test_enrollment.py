"""Which pods the node agent enrolls (ZDS.md section 7) and what reconcile does about it."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.agent.enrollment import (
    Enroll,
    PodView,
    Remove,
    desired,
    enrollment_problem,
    plan,
    reconcile,
)

AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def pod(name: str = "p", **kw: Any) -> PodView:
    base: dict[str, Any] = {
        "uid": f"uid-{name}",
        "name": name,
        "namespace": "app",
        "node": "node1",
        "phase": "Running",
        "ips": ("10.244.1.2",),
    }
    base.update(kw)
    return PodView(**base)


@pytest.mark.parametrize(
    ("p", "ns_labels", "problem"),
    [
        (pod(), AMBIENT, None),  # namespace label
        (pod(labels=AMBIENT), {}, None),  # pod label alone
        (pod(labels={"istio.io/dataplane-mode": "none"}), AMBIENT, "=none"),  # opt-out
        (pod(), {}, "neither the pod nor namespace"),
        (pod(), {"istio.io/dataplane-mode": "sidecar"}, "neither"),
        (pod(host_network=True), AMBIENT, "hostNetwork"),
        (pod(labels={"app": "ztunnel"}), AMBIENT, "node proxy"),
        (pod(labels={"gateway.istio.io/managed": "istio.io-mesh-controller"}), AMBIENT, "waypoint"),
        (pod(annotations={"sidecar.istio.io/status": "{}"}), AMBIENT, "sidecar"),
        (pod(namespace="kube-system", labels=AMBIENT), {}, "excluded"),
        (pod(node="node2"), AMBIENT, "node node2"),
        (pod(node=""), AMBIENT, "unscheduled"),
        (pod(phase="Pending"), AMBIENT, "Pending"),
        (pod(phase="Succeeded"), AMBIENT, "Succeeded"),
        (pod(ips=()), AMBIENT, "no IP"),
    ],
)
def test_enrollment_rule(p: PodView, ns_labels: dict[str, str], problem: str | None) -> None:
    got = enrollment_problem(p, ns_labels, node="node1")
    if problem is None:
        assert got is None
    else:
        assert got is not None
        assert problem in got


def test_from_manifest() -> None:
    m = {
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "app",
            "uid": "u1",
            "labels": {"app": "web"},
            "annotations": {"ambient.istio.io/redirection": "enabled"},
        },
        "spec": {"nodeName": "node1", "serviceAccountName": "web", "hostNetwork": True},
        "status": {"phase": "Running", "podIP": "10.244.1.5"},
    }
    v = PodView.from_manifest(m)
    assert (v.uid, v.key, v.node, v.service_account, v.ips) == (
        "u1",
        "app/web",
        "node1",
        "web",
        ("10.244.1.5",),
    )
    assert v.host_network
    assert v.redirection == "enabled"
    m["status"]["podIPs"] = [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]
    assert PodView.from_manifest(m).ips == ("10.244.1.5", "fd00::5")


A, B, C = pod("a"), pod("b"), pod("c")


@pytest.mark.parametrize(
    ("want", "enrolled", "running", "stay", "actions"),
    [
        ({}, {}, (), (), []),
        ({"uid-a": A}, {}, (), (), [Enroll(A)]),
        ({"uid-a": A}, {"uid-a": A}, (), (), []),
        # label removed while the pod runs: its rules are deleted
        ({}, {"uid-a": A}, {"uid-a"}, (), [Remove(A, True)]),
        # pod gone or terminal: nothing to delete inside it
        ({}, {"uid-a": A}, (), (), [Remove(A, False)]),
        # enrolled by the CNI event before it reached Running: stays
        ({}, {"uid-a": A}, {"uid-a"}, {"uid-a"}, []),
        # removals first, each list by uid
        (
            {"uid-c": C, "uid-b": B},
            {"uid-a": A},
            (),
            (),
            [Remove(A, False), Enroll(B), Enroll(C)],
        ),
    ],
)
def test_reconcile(
    want: dict[str, PodView],
    enrolled: dict[str, PodView],
    running: set[str],
    stay: set[str],
    actions: list[object],
) -> None:
    assert reconcile(want, enrolled, running, stay) == actions


def test_plan_over_the_store_view() -> None:
    ns = {"app": AMBIENT, "plain": {}}
    running = pod("run")
    starting = pod("starting", phase="Pending", ips=())
    done = pod("done", phase="Succeeded")
    other_node = pod("far", node="node2")
    opted_out = pod("out", labels={"istio.io/dataplane-mode": "none"})
    plain = pod("plain", namespace="plain")
    pods = [running, starting, done, other_node, opted_out, plain]
    assert desired(pods, ns, node="node1") == {"uid-run": running}
    enrolled = {p.uid: p for p in (starting, done, opted_out, plain)}
    assert plan(pods, ns, enrolled, node="node1") == [
        Remove(done, False),  # terminal
        Remove(opted_out, True),  # still runs: rules deleted
        Remove(plain, True),
        Enroll(running),
    ]  # `starting` stays: the CNI event enrolled it, it is not Running yet
    # a pod deleted from the store leaves too
    assert plan([], ns, {"uid-run": running}, node="node1") == [Remove(running, False)]
