"""The garbage collector's decision, pure: which objects lost their owners.

An object whose `ownerReferences` all point at owners that no longer exist (no object of
that kind and name with that uid) is deleted: the pods of a deleted ReplicaSet, the
ReplicaSets of a deleted Deployment, the EndpointSlices of a deleted Service. This is
Kubernetes' background cascading deletion, which `kubectl delete` uses by default.

Fails safe: a reference to a kind Ketch does not know (it cannot tell whether that owner
exists) keeps the object; an object with no owner references is never touched. Unlike
Kubernetes, an object keeping some but not all of its owners is left as it is (Kubernetes
removes the dangling references).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ketch.api.registry import KINDS
from ketch.cluster.controllers.meta import field, items
from ketch.store import Manifest, ObjectKey

# (kind, namespace, name, uid) of every object that exists.
Identity = tuple[str, str, str, str]


def identities(objects: Iterable[Manifest]) -> set[Identity]:
    out: set[Identity] = set()
    for m in objects:
        meta = field(m, "metadata")
        out.add(
            (
                str(m.get("kind")),
                str(meta.get("namespace") or ""),
                str(meta.get("name")),
                str(meta.get("uid")),
            )
        )
    return out


def _owner_exists(ref: dict[str, Any], namespace: str, existing: set[Identity]) -> bool:
    info = KINDS.get(str(ref.get("kind")))
    if info is None:
        return True  # unknown kind: cannot tell, keep the dependent
    scope = namespace if info.namespaced else ""
    return (info.kind, scope, str(ref.get("name")), str(ref.get("uid"))) in existing


def orphans(objects: Sequence[Manifest], existing: set[Identity]) -> list[Manifest]:
    """The objects of `objects` to delete, given `existing` (everything that exists, across
    the namespaces and cluster scope the owners may live in)."""
    out: list[Manifest] = []
    for m in objects:
        meta = field(m, "metadata")
        refs = items(meta, "ownerReferences")
        if not refs:
            continue
        namespace = str(meta.get("namespace") or "")
        if not any(_owner_exists(r, namespace, existing) for r in refs):
            out.append(m)
    out.sort(key=lambda m: ObjectKey.of(m))
    return out
