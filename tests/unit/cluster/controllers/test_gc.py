"""The garbage collector's decision: dependents whose owners are all gone."""

from __future__ import annotations

from typing import Any

from ketch.cluster.controllers.gc import identities, orphans


def obj(
    kind: str, name: str, uid: str, *owners: dict[str, Any], namespace: str = "default"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid}
    if owners:
        meta["ownerReferences"] = list(owners)
    return {"kind": kind, "metadata": meta}


def ref(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": True}


def names(objects: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objects]


def test_dependents_of_deleted_owners_go() -> None:
    objects = [
        obj("Deployment", "web", "d1"),
        obj("ReplicaSet", "web-a", "r1", ref("Deployment", "web", "d1")),
        obj("ReplicaSet", "old-b", "r2", ref("Deployment", "old", "gone")),
        obj("Pod", "web-a-x", "p1", ref("ReplicaSet", "web-a", "r1")),
        obj("Pod", "dead-y", "p2", ref("ReplicaSet", "dead", "r9")),
        obj("EndpointSlice", "svc-1", "e1", ref("Service", "svc", "s-old")),
        obj("Pod", "bare", "p3"),
    ]
    assert names(orphans(objects, identities(objects))) == ["svc-1", "dead-y", "old-b"]


def test_same_name_new_uid_is_a_different_owner() -> None:
    objects = [
        obj("Service", "svc", "s-new"),
        obj("EndpointSlice", "svc-1", "e1", ref("Service", "svc", "s-old")),
    ]
    assert names(orphans(objects, identities(objects))) == ["svc-1"]


def test_unknown_owner_kinds_and_surviving_owners_keep_the_object() -> None:
    objects = [
        obj("Deployment", "web", "d1"),
        obj("Pod", "sts-0", "p1", ref("StatefulSet", "sts", "x1")),
        obj(
            "Pod",
            "two-owners",
            "p2",
            ref("Deployment", "web", "d1"),
            ref("ReplicaSet", "gone", "r0"),
        ),
    ]
    assert orphans(objects, identities(objects)) == []


def test_cluster_scoped_owner_is_looked_up_without_namespace() -> None:
    node = {"kind": "Node", "metadata": {"name": "node1", "uid": "n1"}}
    pod = obj("Pod", "mirror", "p1", ref("Node", "node1", "n1"))
    assert orphans([pod], identities([pod, node])) == []
    assert names(orphans([pod], identities([pod]))) == ["mirror"]
