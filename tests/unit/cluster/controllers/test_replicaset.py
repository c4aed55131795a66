"""The ReplicaSet controller's decision: create, delete in Kubernetes' order, status."""

from __future__ import annotations

import itertools
import re

import pytest

from ketch.api.core import Pod
from ketch.cluster.controllers.meta import SAFE_ALPHABET
from ketch.cluster.controllers.replicaset import BURST, deletion_order, reconcile_replicaset
from tests.unit.cluster.controllers.factory import NOW, pod, replicaset

LABELS = {"app": "web", "pod-template-hash": "abc"}


def test_creates_missing_pods_from_the_template() -> None:
    rs = replicaset(replicas=3)
    existing = pod("web-abc-aaaaa", labels=LABELS, owner=rs)
    plan = reconcile_replicaset(rs, [existing], NOW)
    assert plan.delete == []
    assert len(plan.create) == 2
    for m in plan.create:
        name = m["metadata"]["name"]
        assert re.fullmatch(rf"web-abc-[{SAFE_ALPHABET}]{{5}}", name)
        assert m["metadata"]["labels"] == LABELS
        assert m["metadata"]["namespace"] == "default"
        (ref,) = m["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ReplicaSet",
            "web-abc",
            "rs-web-abc",
            True,
        )
        assert m["spec"]["containers"][0]["command"][0] == "python3"
        Pod.model_validate(m)
    assert plan.status["replicas"] == 3


def test_generated_names_avoid_existing_pods() -> None:
    rs = replicaset(replicas=2)
    taken = pod("web-abc-bbbbb", labels={"other": "x"})  # not ours, but holds a name
    names = iter(["bbbbb", "bbbbb", "ccccc", "ddddd"])
    plan = reconcile_replicaset(rs, [taken], NOW, suffix=lambda: next(names))
    assert [m["metadata"]["name"] for m in plan.create] == ["web-abc-ccccc", "web-abc-ddddd"]


def test_only_counts_pods_it_controls() -> None:
    rs = replicaset(replicas=1)
    other = replicaset("web-xyz")
    mine = pod("web-abc-11111", labels=LABELS, owner=rs, node_name="n1", ready=True)
    foreign = pod("web-xyz-22222", labels=LABELS, owner=other, node_name="n1", ready=True)
    orphan = pod("bare", labels=LABELS, node_name="n1", ready=True)
    plan = reconcile_replicaset(rs, [mine, foreign, orphan], NOW)
    assert plan.create == []
    assert plan.delete == []
    assert plan.status["replicas"] == 1


@pytest.mark.parametrize(
    ("pods", "first"),
    [
        # unscheduled before scheduled
        ([dict(name="a", node_name="n1", ready=True), dict(name="b")], "b"),
        # Pending before Running
        ([dict(name="a", node_name="n1", phase="Running"), dict(name="b", node_name="n1")], "b"),
        # not ready before ready
        (
            [
                dict(name="a", node_name="n1", phase="Running", ready=True),
                dict(name="b", node_name="n2", phase="Running"),
            ],
            "b",
        ),
        # crowded node first
        (
            [
                dict(name="a", node_name="n1", ready=True),
                dict(name="b", node_name="n2", ready=True),
                dict(name="c", node_name="n2", ready=True, ready_for=500, created_ago=600),
            ],
            "b",
        ),
        # ready for less time first
        (
            [
                dict(name="a", node_name="n1", ready=True, ready_for=10),
                dict(name="b", node_name="n2", ready=True, ready_for=500),
            ],
            "a",
        ),
        # more restarts first
        (
            [
                dict(name="a", node_name="n1", ready=True, restarts=0),
                dict(name="b", node_name="n2", ready=True, restarts=4),
            ],
            "b",
        ),
        # newer first
        (
            [
                dict(name="a", node_name="n1", ready=True, created_ago=50),
                dict(name="b", node_name="n2", ready=True, created_ago=900),
            ],
            "a",
        ),
    ],
)
def test_deletion_ranking(pods: list[dict], first: str) -> None:  # type: ignore[type-arg]
    built = [pod(**kw) for kw in pods]
    for perm in itertools.permutations(built):
        assert deletion_order(list(perm))[0].name == first


def test_scale_down_deletes_the_least_valuable() -> None:
    rs = replicaset(replicas=2)
    pods = [
        pod("web-abc-ready1", labels=LABELS, owner=rs, node_name="n1", ready=True),
        pod("web-abc-ready2", labels=LABELS, owner=rs, node_name="n2", ready=True),
        pod("web-abc-pendng", labels=LABELS, owner=rs),
        pod("web-abc-notrdy", labels=LABELS, owner=rs, node_name="n1", phase="Running"),
    ]
    plan = reconcile_replicaset(rs, pods, NOW)
    assert plan.create == []
    assert sorted(p.name for p in plan.delete) == ["web-abc-notrdy", "web-abc-pendng"]
    assert plan.status == {
        "replicas": 2,
        "fullyLabeledReplicas": 2,
        "readyReplicas": 2,
        "availableReplicas": 2,
        "observedGeneration": 1,
    }


def test_scale_to_zero() -> None:
    rs = replicaset(replicas=0)
    pods = [pod(f"web-abc-{i}", labels=LABELS, owner=rs, node_name="n1") for i in range(3)]
    plan = reconcile_replicaset(rs, pods, NOW)
    assert len(plan.delete) == 3
    assert plan.status["replicas"] == 0


def test_terminal_pods_are_replaced_and_removed() -> None:
    rs = replicaset(replicas=2)
    pods = [
        pod("web-abc-ok", labels=LABELS, owner=rs, node_name="n1", ready=True),
        pod("web-abc-dead", labels=LABELS, owner=rs, node_name="n1", phase="Failed"),
    ]
    plan = reconcile_replicaset(rs, pods, NOW)
    assert [p.name for p in plan.delete] == ["web-abc-dead"]
    assert len(plan.create) == 1
    assert plan.status["replicas"] == 2
    assert plan.status["readyReplicas"] == 1


def test_min_ready_seconds_counts_available_and_requeues() -> None:
    rs = replicaset(replicas=3, min_ready=30)
    pods = [
        pod("web-abc-old", labels=LABELS, owner=rs, node_name="n1", ready=True, ready_for=100),
        pod("web-abc-new", labels=LABELS, owner=rs, node_name="n1", ready=True, ready_for=10),
        pod("web-abc-not", labels=LABELS, owner=rs, node_name="n1", phase="Running"),
    ]
    plan = reconcile_replicaset(rs, pods, NOW)
    assert plan.status["readyReplicas"] == 2
    assert plan.status["availableReplicas"] == 1
    assert plan.requeue_after == pytest.approx(20)


def test_fully_labeled_counts_template_labels() -> None:
    rs = replicaset(replicas=2)
    pods = [
        pod("web-abc-1", labels=LABELS, owner=rs, node_name="n1"),
        pod("web-abc-2", labels={"app": "web"}, owner=rs, node_name="n1"),
    ]
    plan = reconcile_replicaset(rs, pods, NOW)
    assert plan.status["fullyLabeledReplicas"] == 1


def test_creations_and_deletions_come_in_bursts() -> None:
    big = replicaset(replicas=BURST * 3)
    plan = reconcile_replicaset(big, [], NOW)
    assert len(plan.create) == BURST
    small = replicaset(replicas=0)
    pods = [pod(f"web-abc-{i}", labels=LABELS, owner=small) for i in range(BURST + 7)]
    assert len(reconcile_replicaset(small, pods, NOW).delete) == BURST
