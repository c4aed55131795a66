"""The Deployment controller's decision, pure: ReplicaSets to create, scale or delete, and the
Deployment's status. One call decides one step; the writes it causes bring the next call.

- Each distinct pod template gets a ReplicaSet `<deployment>-<pod-template-hash>`: the hash
  of the template, also the `pod-template-hash` label on the ReplicaSet, its selector and its
  pods, so ReplicaSets of one Deployment never select each other's pods. The ReplicaSet whose
  template equals the Deployment's (ignoring that label) is the *new* one, all others *old*.
  If a foreign object holds the name, the next hash (collision count 1, 2, ...) is used.
- RollingUpdate follows Kubernetes' deployment controller: `maxSurge` (default 25%, rounded
  up) bounds the pods of all ReplicaSets above `replicas`; `maxUnavailable` (default 25%,
  rounded down; 1 if both resolve to 0) bounds how many may be unavailable. The new
  ReplicaSet scales up within the surge; old ReplicaSets scale down first by their
  unavailable pods, then as far as availability allows, oldest first.
- Recreate scales every old ReplicaSet to 0, waits until their pods are gone, then creates
  (or scales) the new one to `replicas`.
- When the rollout is complete, old ReplicaSets beyond `revisionHistoryLimit` (default 10)
  that run nothing are deleted, lowest revision first.
- Status: replicas, updatedReplicas, readyReplicas, availableReplicas, unavailableReplicas,
  observedGeneration; conditions Available (MinimumReplicasAvailable) and Progressing
  (NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable, and
  ProgressDeadlineExceeded after 600 s without progress, Kubernetes' default deadline).

Not done (Kubernetes does): proportional scaling of several live ReplicaSets in the middle of
a rollout (Ketch scales the new one and lets the rolling update drain the old), `paused`,
rollback annotations, adopting orphan ReplicaSets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ketch.api.base import Condition
from ketch.api.core import Deployment, DeploymentStatus, Pod, PodTemplateSpec, ReplicaSet
from ketch.cluster.controllers.meta import (
    POD_TEMPLATE_HASH_LABEL,
    REVISION_ANNOTATION,
    TERMINAL_PHASES,
    condition_dict,
    find_condition,
    fmt_time,
    is_controlled_by,
    owner_reference,
    parse_time,
    short_hash,
)

DEFAULT_SURGE = "25%"
DEFAULT_UNAVAILABLE = "25%"
DEFAULT_HISTORY = 10
PROGRESS_DEADLINE = dt.timedelta(seconds=600)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class DeploymentPlan:
    create: dict[str, Any] | None = None  # a new ReplicaSet manifest
    scale: dict[str, int] = field(default_factory=dict)  # ReplicaSet name -> spec.replicas
    delete: list[ReplicaSet] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


# --- arithmetic ---------------------------------------------------------------------------


def scaled_value(value: int | str | None, default: str, total: int, *, round_up: bool) -> int:
    """An int-or-percent against `total`, rounded as Kubernetes' GetScaledValueFromIntOrPercent."""
    v = default if value is None else value
    if isinstance(v, int):
        return v
    pct = int(v.rstrip("%"))
    return -(-pct * total // 100) if round_up else pct * total // 100


def fenceposts(d: Deployment) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) resolved for a RollingUpdate Deployment; (0, 0) for Recreate."""
    strategy = d.spec.strategy
    if strategy is not None and strategy.type == "Recreate":
        return 0, 0
    ru = strategy.rolling_update if strategy else None
    replicas = d.spec.replicas
    surge = scaled_value(ru.max_surge if ru else None, DEFAULT_SURGE, replicas, round_up=True)
    unavailable = scaled_value(
        ru.max_unavailable if ru else None, DEFAULT_UNAVAILABLE, replicas, round_up=False
    )
    if surge == 0 and unavailable == 0:
        unavailable = 1  # Kubernetes' fencepost: a rollout must be able to make progress
    return surge, min(unavailable, replicas)


# --- templates ----------------------------------------------------------------------------


def template_key(template: PodTemplateSpec) -> dict[str, Any]:
    """A template as written, without the pod-template-hash label (for equality and hash)."""
    body = template.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
    meta = dict(body.get("metadata") or {})
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != POD_TEMPLATE_HASH_LABEL}
    meta = {k: v for k, v in meta.items() if k != "labels" and v not in ({}, [], None)}
    if labels:
        meta["labels"] = labels
    body["metadata"] = meta
    return body


def template_hash(template: PodTemplateSpec, collisions: int = 0) -> str:
    return short_hash([template_key(template), collisions])


def _revision(rs: ReplicaSet) -> int:
    try:
        return int(rs.annotations.get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def _created(rs: ReplicaSet) -> tuple[dt.datetime, str]:
    return parse_time(rs.metadata.creation_timestamp) or _EPOCH, rs.name


def _new_rs_manifest(
    d: Deployment, name: str, pod_hash: str, replicas: int, revision: int
) -> dict[str, Any]:
    template = d.spec.template.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
    tmeta = dict(template.get("metadata") or {})
    labels = {**(tmeta.get("labels") or {}), POD_TEMPLATE_HASH_LABEL: pod_hash}
    tmeta["labels"] = labels
    template["metadata"] = tmeta
    selector = d.spec.selector.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
    selector["matchLabels"] = {
        **(selector.get("matchLabels") or {}),
        POD_TEMPLATE_HASH_LABEL: pod_hash,
    }
    spec: dict[str, Any] = {"replicas": replicas, "selector": selector, "template": template}
    if d.spec.min_ready_seconds:
        spec["minReadySeconds"] = d.spec.min_ready_seconds
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": d.namespace,
            "labels": labels,
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [owner_reference(d)],
        },
        "spec": spec,
    }


def _find_new(
    d: Deployment, owned: Sequence[ReplicaSet], all_rs: Sequence[ReplicaSet]
) -> tuple[ReplicaSet | None, str, str]:
    """(the new ReplicaSet or None, the name it has or would get, its hash)."""
    want = template_key(d.spec.template)
    for rs in sorted(owned, key=_created):
        if template_key(rs.spec.template) == want:
            return rs, rs.name, rs.labels.get(POD_TEMPLATE_HASH_LABEL, "")
    names = {rs.name for rs in all_rs}
    for collisions in range(100):
        pod_hash = template_hash(d.spec.template, collisions)
        name = f"{d.name}-{pod_hash}"
        if name not in names:
            return None, name, pod_hash
    raise RuntimeError(f"{d.namespace}/{d.name}: 100 ReplicaSet name collisions")


# --- the step -----------------------------------------------------------------------------


class _View:
    """ReplicaSets with their spec.replicas as this step has changed them."""

    def __init__(self, plan: DeploymentPlan, rses: Sequence[ReplicaSet]) -> None:
        self.plan = plan
        self.rses = list(rses)

    def spec(self, rs: ReplicaSet) -> int:
        return self.plan.scale.get(rs.name, rs.spec.replicas)

    def available(self, rs: ReplicaSet) -> int:
        # Never count more available pods than the ReplicaSet is asked to keep: its status
        # may lag a scale-down this controller just made.
        status = rs.status.available_replicas if rs.status else None
        return min(status or 0, self.spec(rs))

    def set(self, rs: ReplicaSet, replicas: int) -> None:
        if replicas == rs.spec.replicas:
            self.plan.scale.pop(rs.name, None)
        else:
            self.plan.scale[rs.name] = replicas

    def total(self, rses: Sequence[ReplicaSet] | None = None) -> int:
        return sum(self.spec(rs) for rs in (self.rses if rses is None else rses))


def _new_replicas(d: Deployment, view: _View, current_new: int) -> int:
    surge, _ = fenceposts(d)
    max_total = d.spec.replicas + surge
    current = view.total()
    if current >= max_total:
        return current_new
    return current_new + min(max_total - current, d.spec.replicas - current_new)


def _scale_down_old(d: Deployment, view: _View, new: ReplicaSet, old: list[ReplicaSet]) -> bool:
    active_old = [rs for rs in old if view.spec(rs) > 0]
    if not active_old:
        return False
    _, max_unavailable = fenceposts(d)
    min_available = d.spec.replicas - max_unavailable
    new_unavailable = view.spec(new) - view.available(new)
    max_scaled_down = view.total() - min_available - new_unavailable
    if max_scaled_down <= 0:
        return False
    changed = False
    # 1. Old pods that are not available anyway go first (they cost no availability).
    cleaned = 0
    for rs in sorted(active_old, key=_created):
        if cleaned >= max_scaled_down:
            break
        unhealthy = view.spec(rs) - view.available(rs)
        if unhealthy <= 0:
            continue
        step = min(max_scaled_down - cleaned, unhealthy)
        view.set(rs, view.spec(rs) - step)
        cleaned += step
        changed = True
    # 2. Then as many available ones as the availability floor allows, oldest first.
    available = sum(view.available(rs) for rs in view.rses)
    budget = available - min_available
    for rs in sorted(active_old, key=_created):
        if budget <= 0:
            break
        if view.spec(rs) == 0:
            continue
        step = min(view.spec(rs), budget)
        view.set(rs, view.spec(rs) - step)
        budget -= step
        changed = True
    return changed


def _old_pods_running(old: Sequence[ReplicaSet], pods: Sequence[Pod]) -> bool:
    if any((rs.status.replicas if rs.status else 0) > 0 for rs in old):
        return True
    return any(
        is_controlled_by(p, rs)
        for p in pods
        if not (p.status is not None and p.status.phase in TERMINAL_PHASES)
        for rs in old
    )


def _cleanup(d: Deployment, view: _View, old: list[ReplicaSet]) -> None:
    limit = (
        d.spec.revision_history_limit
        if d.spec.revision_history_limit is not None
        else DEFAULT_HISTORY
    )
    extra = len(old) - limit
    if extra <= 0:
        return
    for rs in sorted(old, key=lambda r: (_revision(r), *_created(r)))[:extra]:
        status = rs.status
        idle = view.spec(rs) == 0 and (status.replicas if status else 0) == 0
        observed = status.observed_generation if status else None
        current = observed is None or observed >= (rs.metadata.generation or 0)
        if idle and current:
            view.plan.delete.append(rs)


def reconcile_deployment(
    d: Deployment,
    replicasets: Sequence[ReplicaSet],
    pods: Sequence[Pod],
    now: dt.datetime,
) -> DeploymentPlan:
    """One step for `d`, given every ReplicaSet and Pod of its namespace."""
    plan = DeploymentPlan()
    owned = [rs for rs in replicasets if is_controlled_by(rs, d)]
    new, new_name, pod_hash = _find_new(d, owned, replicasets)
    old = [rs for rs in owned if rs is not new]
    view = _View(plan, owned)
    recreate = d.spec.strategy is not None and d.spec.strategy.type == "Recreate"
    next_revision = max((_revision(rs) for rs in owned), default=0) + 1
    created = False
    if recreate:
        active_old = [rs for rs in old if rs.spec.replicas > 0]
        if active_old:
            for rs in active_old:
                view.set(rs, 0)
        elif _old_pods_running(old, pods):
            pass  # wait until every old pod is gone
        elif new is None:
            plan.create = _new_rs_manifest(d, new_name, pod_hash, d.spec.replicas, next_revision)
            created = True
        elif new.spec.replicas != d.spec.replicas:
            view.set(new, d.spec.replicas)
        elif _complete(d, owned, new):
            _cleanup(d, view, old)
    elif new is None:
        replicas = _new_replicas(d, view, 0)
        plan.create = _new_rs_manifest(d, new_name, pod_hash, replicas, next_revision)
        created = True
    elif view.spec(new) > d.spec.replicas:
        view.set(new, d.spec.replicas)
    elif (want := _new_replicas(d, view, view.spec(new))) != view.spec(new):
        view.set(new, want)
    elif not _scale_down_old(d, view, new, old) and _complete(d, owned, new):
        _cleanup(d, view, old)
    plan.status = _status(d, view, new, new_name, created, now)
    return plan


def _complete(d: Deployment, owned: Sequence[ReplicaSet], new: ReplicaSet | None) -> bool:
    if new is None or new.status is None:
        return False
    total = sum(rs.status.replicas if rs.status else 0 for rs in owned)
    available = sum((rs.status.available_replicas or 0) if rs.status else 0 for rs in owned)
    return (
        new.status.replicas == d.spec.replicas
        and total == d.spec.replicas
        and available == d.spec.replicas
        and new.spec.replicas == d.spec.replicas
    )


def _status(
    d: Deployment,
    view: _View,
    new: ReplicaSet | None,
    new_name: str,
    created: bool,
    now: dt.datetime,
) -> dict[str, Any]:
    rses = view.rses

    def sum_of(attr: str) -> int:
        return sum(getattr(rs.status, attr) or 0 for rs in rses if rs.status is not None)

    available = sum_of("available_replicas")
    status: dict[str, Any] = {
        "observedGeneration": d.metadata.generation or 1,
        "replicas": sum_of("replicas"),
        "updatedReplicas": new.status.replicas if new is not None and new.status else 0,
        "readyReplicas": sum_of("ready_replicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(view.total() - available, 0),
    }
    old_status = d.status
    conditions = list(old_status.conditions or []) if old_status else []
    _, max_unavailable = fenceposts(d)
    if available >= d.spec.replicas - max_unavailable:
        avail = ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    else:
        avail = (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    conditions = _put(conditions, "Available", *avail, now=now, touch=False)
    complete = (
        status["updatedReplicas"] == d.spec.replicas
        and status["replicas"] == d.spec.replicas
        and available == d.spec.replicas
        and new is not None
    )
    progressing = find_condition(conditions, "Progressing")
    if complete:
        conditions = _put(
            conditions,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            f'ReplicaSet "{new_name}" has successfully progressed.',
            now=now,
            touch=False,
        )
    elif created:
        conditions = _put(
            conditions,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            f'Created new replica set "{new_name}"',
            now=now,
            touch=True,
        )
    elif _made_progress(old_status, status) or progressing is None:
        conditions = _put(
            conditions,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            f'ReplicaSet "{new_name}" is progressing.',
            now=now,
            touch=True,
        )
    elif progressing.status == "True" and progressing.reason != "NewReplicaSetAvailable":
        since = parse_time(progressing.last_update_time or progressing.last_transition_time)
        if since is not None and now - since > PROGRESS_DEADLINE:
            conditions = _put(
                conditions,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{new_name}" has timed out progressing.',
                now=now,
                touch=True,
            )
    status["conditions"] = [condition_dict(c) for c in conditions]
    return status


def _made_progress(old: DeploymentStatus | None, new: dict[str, Any]) -> bool:
    if old is None:
        return True
    old_old = (old.replicas or 0) - (old.updated_replicas or 0)
    new_old = int(new["replicas"]) - int(new["updatedReplicas"])
    return bool(
        new["updatedReplicas"] > (old.updated_replicas or 0)
        or new_old < old_old
        or new["readyReplicas"] > (old.ready_replicas or 0)
        or new["availableReplicas"] > (old.available_replicas or 0)
    )


def _put(
    conditions: list[Condition],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    touch: bool,
) -> list[Condition]:
    """Set a condition. Unchanged status and reason keep the old one (no write churn) unless
    `touch` (progress was made: lastUpdateTime moves)."""
    old = find_condition(conditions, type_)
    if old is not None and old.status == status and old.reason == reason and not touch:
        return conditions
    stamp = fmt_time(now)
    transition = old.last_transition_time if old is not None and old.status == status else stamp
    new = Condition.model_validate(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastUpdateTime": stamp,
            "lastTransitionTime": transition,
        }
    )
    out = [new if c.type == type_ else c for c in conditions]
    if old is None:
        out.append(new)
    return out
