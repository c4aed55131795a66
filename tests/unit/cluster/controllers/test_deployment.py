"""The Deployment controller: arithmetic and single steps (pure), and whole rollouts driven
through the real sync layer on a MemoryStore with a fake kubelet (sim.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.api.core import ReplicaSet
from ketch.cluster.controllers.deployment import (
    fenceposts,
    reconcile_deployment,
    scaled_value,
    template_hash,
)
from ketch.cluster.controllers.meta import POD_TEMPLATE_HASH_LABEL, SAFE_ALPHABET
from ketch.store import Manifest
from tests.unit.cluster.controllers.factory import NOW, deployment
from tests.unit.cluster.controllers.sim import Sim, deployment_manifest, is_ready, version_of


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [
        ("25%", 10, True, 3),
        ("25%", 10, False, 2),
        ("25%", 1, True, 1),
        ("25%", 1, False, 0),
        ("100%", 3, False, 3),
        (2, 10, True, 2),
        (None, 4, True, 1),
    ],
)
def test_scaled_value_rounds_like_kubernetes(
    value: int | str | None, total: int, up: bool, expected: int
) -> None:
    assert scaled_value(value, "25%", total, round_up=up) == expected


@pytest.mark.parametrize(
    ("replicas", "strategy", "expected"),
    [
        (10, None, (3, 2)),
        (1, None, (1, 0)),
        (
            3,
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            (1, 0),
        ),
        (
            3,
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}},
            (0, 1),
        ),
        (4, {"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": "50%"}}, (2, 2)),
        (2, {"rollingUpdate": {"maxUnavailable": 5}}, (1, 2)),  # capped at replicas
        (0, None, (0, 0)),
        (5, {"type": "Recreate"}, (0, 0)),
    ],
)
def test_fenceposts(
    replicas: int, strategy: dict[str, Any] | None, expected: tuple[int, int]
) -> None:
    assert fenceposts(deployment(replicas=replicas, strategy=strategy)) == expected


def test_template_hash_is_stable_and_name_safe() -> None:
    d1, d2, d3 = deployment(version="v1"), deployment(version="v1"), deployment(version="v2")
    h = template_hash(d1.spec.template)
    assert h == template_hash(d2.spec.template)
    assert h != template_hash(d3.spec.template)
    assert h != template_hash(d1.spec.template, collisions=1)
    assert set(h) <= set(SAFE_ALPHABET)
    assert 1 <= len(h) <= 10


def test_first_step_creates_the_replicaset() -> None:
    d = deployment(replicas=3)
    plan = reconcile_deployment(d, [], [], NOW)
    assert plan.create is not None
    rs = ReplicaSet.model_validate(plan.create)
    pod_hash = rs.labels[POD_TEMPLATE_HASH_LABEL]
    assert rs.name == f"web-{pod_hash}"
    assert rs.spec.replicas == 3
    assert rs.spec.selector.match_labels == {"app": "web", POD_TEMPLATE_HASH_LABEL: pod_hash}
    assert rs.spec.template.metadata is not None
    assert rs.spec.template.metadata.labels == {"app": "web", POD_TEMPLATE_HASH_LABEL: pod_hash}
    assert rs.annotations["deployment.kubernetes.io/revision"] == "1"
    (ref,) = rs.metadata.owner_references or []
    assert (ref.kind, ref.name, ref.uid, ref.controller) == (
        "Deployment",
        "web",
        "deploy-web",
        True,
    )
    conds = {c["type"]: c for c in plan.status["conditions"]}
    assert conds["Progressing"]["reason"] == "NewReplicaSetCreated"
    assert conds["Available"]["status"] == "False"


def test_name_collision_with_a_foreign_replicaset_takes_the_next_hash() -> None:
    d = deployment()
    first = reconcile_deployment(d, [], [], NOW).create
    assert first is not None
    squatter = dict(first)
    squatter["metadata"] = {**first["metadata"], "ownerReferences": [], "uid": "someone-else"}
    squatter["spec"] = {**first["spec"], "template": {**first["spec"]["template"]}}
    foreign = ReplicaSet.model_validate(squatter)
    plan = reconcile_deployment(d, [foreign], [], NOW)
    assert plan.create is not None
    assert plan.create["metadata"]["name"] != first["metadata"]["name"]


# --- whole rollouts through the sync layer ------------------------------------------------------


def live(sim: Sim) -> list[Manifest]:
    return [
        p for p in sim.pods() if (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
    ]


def test_scale_up_and_down_and_status() -> None:
    sim = Sim()
    sim.create(deployment_manifest(replicas=3))
    sim.settle()
    pods = sim.pods()
    assert len(pods) == 3
    assert all(is_ready(p) for p in pods)
    nodes = sorted(p["spec"]["nodeName"] for p in pods)
    assert nodes == ["node1", "node1", "node2"]  # spread over both nodes
    d = sim.store.get("Deployment", "default", "web")
    status = d["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (3, 3, 3)
    assert status["updatedReplicas"] == 3
    assert status["unavailableReplicas"] == 0
    assert status["observedGeneration"] == d["metadata"]["generation"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"

    sim.edit("Deployment", "web", lambda m: m["spec"].update(replicas=5))
    sim.settle()
    assert len(sim.pods()) == 5
    assert all(is_ready(p) for p in sim.pods())
    (rs,) = sim.kinds("ReplicaSet")
    assert rs["spec"]["replicas"] == 5
    assert rs["status"]["readyReplicas"] == 5

    sim.edit("Deployment", "web", lambda m: m["spec"].update(replicas=1))
    sim.settle()
    assert len(sim.pods()) == 1
    assert sim.store.get("Deployment", "default", "web")["status"]["replicas"] == 1


def test_rolling_update_surge_1_unavailable_0_never_exceeds_or_drops() -> None:
    sim = Sim(ready_per_round=1)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    sim.create(deployment_manifest(replicas=3, strategy=strategy))
    sim.settle()
    seen: list[tuple[int, int]] = []

    def invariant(s: Sim) -> None:
        pods = live(s)
        ready = sum(1 for p in pods if is_ready(p))
        seen.append((len(pods), ready))
        assert len(pods) <= 4, f"more than replicas+maxSurge pods: {len(pods)}"
        assert ready >= 3, f"fewer than replicas-maxUnavailable ready pods: {ready}"

    sim.checks.append(invariant)
    sim.edit(
        "Deployment",
        "web",
        lambda m: m["spec"]["template"]["spec"]["containers"][0].update(
            env=[{"name": "VERSION", "value": "v2"}]
        ),
    )
    sim.settle()
    pods = sim.pods()
    assert len(pods) == 3
    assert all(is_ready(p) for p in pods)
    assert {version_of(p) for p in pods} == {"v2"}
    assert (4, 3) in seen  # it did surge
    rses = {rs["metadata"]["name"]: rs for rs in sim.kinds("ReplicaSet")}
    assert sorted(rs["spec"]["replicas"] for rs in rses.values()) == [0, 3]
    new = next(rs for rs in rses.values() if rs["spec"]["replicas"] == 3)
    assert new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    status = sim.store.get("Deployment", "default", "web")["status"]
    assert status["updatedReplicas"] == 3
    conds = {c["type"]: c for c in status["conditions"]}
    assert (
        conds["Progressing"]["message"]
        == f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.'
    )


def test_rolling_update_with_defaults_keeps_availability_floor() -> None:
    sim = Sim(ready_per_round=2)
    sim.create(deployment_manifest(replicas=8))
    sim.settle()

    def invariant(s: Sim) -> None:
        pods = live(s)
        assert len(pods) <= 8 + 2  # 25% of 8 rounded up
        assert sum(1 for p in pods if is_ready(p)) >= 8 - 2  # 25% of 8 rounded down

    sim.checks.append(invariant)
    sim.edit(
        "Deployment",
        "web",
        lambda m: m["spec"]["template"]["metadata"]["labels"].update(tier="front"),
    )
    sim.settle()
    pods = sim.pods()
    assert len(pods) == 8
    assert all(p["metadata"]["labels"].get("tier") == "front" for p in pods)


def test_recreate_never_runs_old_and_new_together() -> None:
    sim = Sim(ready_per_round=3)
    sim.create(deployment_manifest(replicas=3, strategy={"type": "Recreate"}))
    sim.settle()

    def invariant(s: Sim) -> None:
        versions = {version_of(p) for p in live(s)}
        assert len(versions) <= 1, f"old and new pods together: {versions}"

    sim.checks.append(invariant)
    sim.edit(
        "Deployment",
        "web",
        lambda m: m["spec"]["template"]["spec"]["containers"][0].update(
            env=[{"name": "VERSION", "value": "v2"}]
        ),
    )
    sim.settle()
    assert sorted(version_of(p) for p in sim.pods()) == ["v2", "v2", "v2"]


def test_revision_history_limit_deletes_oldest_idle_replicasets() -> None:
    sim = Sim(ready_per_round=3)
    sim.create(deployment_manifest(replicas=2, history=1))
    sim.settle()
    for version in ("v2", "v3", "v4"):
        sim.edit(
            "Deployment",
            "web",
            lambda m, v=version: m["spec"]["template"]["spec"]["containers"][0].update(  # type: ignore[misc]
                env=[{"name": "VERSION", "value": v}]
            ),
        )
        sim.settle()
    revisions = sorted(
        int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"])
        for rs in sim.kinds("ReplicaSet")
    )
    assert revisions == [3, 4]  # the new one plus one old


def test_rollback_to_an_old_template_reuses_its_replicaset() -> None:
    sim = Sim(ready_per_round=3)
    sim.create(deployment_manifest(replicas=2))
    sim.settle()
    (first,) = sim.kinds("ReplicaSet")

    def set_version(v: str) -> None:
        sim.edit(
            "Deployment",
            "web",
            lambda m: m["spec"]["template"]["spec"]["containers"][0].update(
                env=[{"name": "VERSION", "value": v}]
            ),
        )
        sim.settle()

    set_version("v2")
    set_version("v1")
    rses = {rs["metadata"]["name"]: rs for rs in sim.kinds("ReplicaSet")}
    assert len(rses) == 2
    assert rses[first["metadata"]["name"]]["spec"]["replicas"] == 2


def test_deleting_the_deployment_collects_replicasets_and_pods() -> None:
    sim = Sim()
    sim.create(deployment_manifest(replicas=2))
    sim.settle()
    sim.store.delete("Deployment", "default", "web")
    sim.settle()
    assert sim.kinds("ReplicaSet") == []
    assert sim.pods() == []
