"""The controllers' thin I/O layer: read the store, ask a pure core, write what it decided.

Each `sync_*` function reconciles one key against the store as it is now (no cache, so no
stale reads), synchronously; `run.py` calls them in worker threads. Every write is a
compare-and-swap on the resourceVersion that was read (or a create-only), so a concurrent
writer (a user's `ketch apply`, a kubelet's status update) makes the write fail with
ConflictError instead of being overwritten; the caller requeues the key and the next pass
decides again from fresh state. Objects a core cannot parse are skipped with one log line.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import ValidationError

from ketch.api.base import Condition, Resource
from ketch.api.core import Deployment, Node, Pod, ReplicaSet, Service
from ketch.api.discovery import SERVICE_NAME_LABEL, EndpointSlice
from ketch.api.registry import KINDS
from ketch.cluster.controllers import deployment as deploy_core
from ketch.cluster.controllers import endpoints as ep_core
from ketch.cluster.controllers import gc as gc_core
from ketch.cluster.controllers import replicaset as rs_core
from ketch.cluster.controllers import scheduler
from ketch.cluster.controllers.meta import (
    TERMINAL_PHASES,
    condition_dict,
    field,
    find_condition,
    items,
    set_condition,
)
from ketch.store import ConflictError, Manifest, NotFoundError, Store

log = logging.getLogger("ketch.cluster.controllers")
M = TypeVar("M", bound=Resource)
_reported: set[tuple[str, str, str, str]] = set()


def parse(model: type[M], manifest: Manifest) -> M | None:
    """The object as `model`, or None (logged once per resourceVersion) if it is invalid."""
    try:
        return model.model_validate(manifest)
    except ValidationError as e:
        meta = manifest.get("metadata") or {}
        key = (
            str(manifest.get("kind")),
            str(meta.get("namespace") or ""),
            str(meta.get("name")),
            str(meta.get("resourceVersion")),
        )
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        _warn_once(key, f"skipping invalid {key[0]} {key[1]}/{key[2]}: {where}: {first['msg']}")
        return None


def _warn_once(key: tuple[str, str, str, str], message: str) -> None:
    if key not in _reported:
        _reported.add(key)
        log.warning("%s", message)


def parse_all(model: type[M], manifests: Iterable[Manifest]) -> list[M]:
    return [obj for m in manifests if (obj := parse(model, m)) is not None]


def checked(manifest: Manifest) -> Manifest:
    """Validate what a controller is about to write (a failure is a Ketch bug, not a user's)."""
    KINDS[str(manifest["kind"])].model.model_validate(manifest)
    return manifest


def _rv(obj: Resource) -> str | None:
    return obj.metadata.resource_version


# --- scheduler ----------------------------------------------------------------------------


def sync_scheduler(store: Store, now: dt.datetime) -> bool:
    """Bind every unscheduled pod; mark the ones that cannot be placed. True if some write
    hit a conflict (run again)."""
    nodes = parse_all(Node, store.list("Node").items)
    counts: Counter[str] = Counter()
    todo: list[Pod] = []
    node_names = {n.name for n in nodes}
    for m in store.list("Pod").items:
        spec, status = field(m, "spec"), field(m, "status")
        if status.get("phase") in TERMINAL_PHASES:
            continue
        bound = spec.get("nodeName")
        if not isinstance(bound, str):
            bound = None  # garbage: the pod will not parse, and is skipped below
        if bound:
            counts[bound] += 1
        scheduled = next(
            (c for c in items(status, "conditions") if c.get("type") == "PodScheduled"), None
        )
        if (
            not bound
            or bound not in node_names
            or (scheduled is not None and scheduled.get("reason") == "NodeNotFound")
        ):
            pod = parse(Pod, m)
            if pod is not None:
                todo.append(pod)
    todo.sort(key=lambda p: (p.metadata.creation_timestamp or "", p.namespace, p.name))
    conflicted = False
    for pod in todo:
        decision = scheduler.schedule(pod, nodes, counts, now)
        try:
            if isinstance(decision, scheduler.Bind):
                if _bind(store, pod, decision.node, now):
                    counts[decision.node] += 1
            elif scheduler.should_delete_orphan(pod, decision, now):
                store.delete("Pod", pod.namespace, pod.name, resource_version=_rv(pod))
                log.info(
                    "deleted pod %s/%s: its node %s has been gone for %ds; its controller "
                    "replaces it",
                    pod.namespace,
                    pod.name,
                    pod.spec.node_name,
                    scheduler.ORPHAN_QUARANTINE.total_seconds(),
                )
            elif isinstance(decision, scheduler.Keep):
                _set_scheduled(store, pod, "True", None, None, now)
            else:
                _set_scheduled(store, pod, "False", decision.reason, decision.message, now)
        except ConflictError:
            conflicted = True
        except NotFoundError:
            pass  # deleted meanwhile
    return conflicted


def _with_condition(manifest: Manifest, cond: Condition, now: dt.datetime) -> Manifest:
    """`manifest` with one status condition merged in; every other status field kept."""
    out = copy.deepcopy(manifest)
    status = out.setdefault("status", {})
    old = [Condition.model_validate(c) for c in status.get("conditions") or []]
    status["conditions"] = [condition_dict(c) for c in set_condition(old, cond, now=now)]
    status.setdefault("phase", "Pending")
    return out


def _bind(store: Store, pod: Pod, node: str, now: dt.datetime) -> bool:
    current = store.get("Pod", pod.namespace, pod.name)
    if (current.get("spec") or {}).get("nodeName"):
        return False  # someone bound it meanwhile
    updated = _with_condition(current, Condition(type="PodScheduled", status="True"), now)
    updated["spec"]["nodeName"] = node
    store.apply([checked(updated)])
    log.info("bound pod %s/%s to node %s", pod.namespace, pod.name, node)
    return True


def _set_scheduled(
    store: Store,
    pod: Pod,
    status: str,
    reason: str | None,
    message: str | None,
    now: dt.datetime,
) -> None:
    old = find_condition(pod.status.conditions if pod.status else None, "PodScheduled")
    if old is not None and (old.status, old.reason, old.message) == (status, reason, message):
        return
    if status == "True" and old is None:
        return  # a pod placed by its author: nothing to say
    current = store.get("Pod", pod.namespace, pod.name)
    cond = Condition(type="PodScheduled", status=status, reason=reason, message=message)  # type: ignore[arg-type]
    store.apply([checked(_with_condition(current, cond, now))])
    if status == "False":
        log.info("pod %s/%s not scheduled (%s): %s", pod.namespace, pod.name, reason, message)


# --- ReplicaSet ---------------------------------------------------------------------------


def sync_replicaset(store: Store, namespace: str, name: str, now: dt.datetime) -> float | None:
    """Reconcile one ReplicaSet; the result is when to look again (minReadySeconds)."""
    try:
        manifest = store.get("ReplicaSet", namespace, name)
    except NotFoundError:
        return None
    rs = parse(ReplicaSet, manifest)
    if rs is None:
        return None
    pods = parse_all(Pod, store.list("Pod", namespace).items)
    plan = rs_core.reconcile_replicaset(rs, pods, now)
    for pod_manifest in plan.create:
        store.apply([checked(pod_manifest)], create_only=True)
        log.info(
            "replicaset %s/%s: created pod %s", namespace, name, pod_manifest["metadata"]["name"]
        )
    for pod in plan.delete:
        try:
            store.delete("Pod", namespace, pod.name, resource_version=_rv(pod))
        except NotFoundError:
            continue
        log.info("replicaset %s/%s: deleted pod %s", namespace, name, pod.name)
    _write_status(store, manifest, plan.status)
    return plan.requeue_after


def _write_status(store: Store, manifest: Manifest, status: dict[str, Any]) -> None:
    if manifest.get("status") == status:
        return
    updated = {**manifest, "status": status}
    store.apply([checked(updated)])


# --- Deployment ---------------------------------------------------------------------------


def sync_deployment(store: Store, namespace: str, name: str, now: dt.datetime) -> None:
    try:
        manifest = store.get("Deployment", namespace, name)
    except NotFoundError:
        return
    d = parse(Deployment, manifest)
    if d is None:
        return
    rs_manifests = {m["metadata"]["name"]: m for m in store.list("ReplicaSet", namespace).items}
    rses = parse_all(ReplicaSet, rs_manifests.values())
    pods = parse_all(Pod, store.list("Pod", namespace).items)
    plan = deploy_core.reconcile_deployment(d, rses, pods, now)
    where = f"deployment {namespace}/{name}"
    if plan.create is not None:
        store.apply([checked(plan.create)], create_only=True)
        log.info(
            "%s: created replicaset %s (%d replicas)",
            where,
            plan.create["metadata"]["name"],
            plan.create["spec"]["replicas"],
        )
    for rs_name, replicas in plan.scale.items():
        rs_m = copy.deepcopy(rs_manifests[rs_name])
        old = rs_m["spec"].get("replicas")
        rs_m["spec"]["replicas"] = replicas
        store.apply([checked(rs_m)])
        log.info("%s: scaled replicaset %s from %s to %d", where, rs_name, old, replicas)
    for rs in plan.delete:
        try:
            store.delete("ReplicaSet", namespace, rs.name, resource_version=_rv(rs))
        except NotFoundError:
            continue
        log.info("%s: deleted old replicaset %s (revision history limit)", where, rs.name)
    _write_status(store, manifest, plan.status)


# --- endpoints ----------------------------------------------------------------------------


def sync_endpoints(store: Store, namespace: str) -> None:
    """Bring every managed EndpointSlice of `namespace` in line with its Services and Pods.
    Creates and updates go before deletes, so a regrouping never leaves a gap."""
    services = parse_all(Service, store.list("Service", namespace).items)
    pods = parse_all(Pod, store.list("Pod", namespace).items)
    slices = parse_all(EndpointSlice, store.list("EndpointSlice", namespace).items)
    by_service: dict[str, list[EndpointSlice]] = {}
    for s in slices:
        svc_name = s.labels.get(SERVICE_NAME_LABEL)
        if svc_name:
            by_service.setdefault(svc_name, []).append(s)
    diffs: list[ep_core.SliceDiff] = []
    for svc in services:
        desired = ep_core.desired_slices(svc, pods)
        diffs.append(ep_core.diff_slices(desired, by_service.pop(svc.name, [])))
    for leftovers in by_service.values():  # slices of Services that are gone
        diffs.append(ep_core.diff_slices([], leftovers))
    existing_names = {s.name for s in slices}
    for diff in diffs:
        for m in diff.create:
            name = m["metadata"]["name"]
            if name in existing_names:  # held by a slice of another Service: never overwrite
                _warn_once(
                    ("EndpointSlice", namespace, name, "held"),
                    f"EndpointSlice {namespace}/{name} belongs to another Service; the "
                    f"endpoint controller cannot write {name} until it is deleted",
                )
                continue
            store.apply([checked(m)], create_only=True)
        for m in diff.update:
            store.apply([checked(m)])
    for diff in diffs:
        for s in diff.delete:
            with contextlib.suppress(NotFoundError):
                store.delete("EndpointSlice", namespace, s.name, resource_version=_rv(s))


# --- garbage collection -------------------------------------------------------------------


def sync_gc(store: Store, namespace: str) -> None:
    """Delete the objects of `namespace` whose owners are all gone. Dependents are listed
    (in one read) before the cluster-scoped owners, so an owner created meanwhile cannot be
    missed."""
    objects = store.list(None, namespace).items
    existing = gc_core.identities(objects)
    existing |= gc_core.identities(store.list("Node").items)
    existing |= gc_core.identities(store.list("Namespace").items)
    for m in gc_core.orphans(objects, existing):
        meta = m["metadata"]
        try:
            store.delete(
                m["kind"], namespace, meta["name"], resource_version=meta.get("resourceVersion")
            )
        except NotFoundError:
            continue
        log.info(
            "garbage collected %s %s/%s (its owner is gone)", m["kind"], namespace, meta["name"]
        )
