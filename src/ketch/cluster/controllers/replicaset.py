"""The ReplicaSet controller's decision, pure: which pods to create or delete, and the status.

`reconcile_replicaset(rs, pods, now)` looks at the pods the ReplicaSet controls (an
ownerReference with `controller: true` and the ReplicaSet's uid) and returns a
`ReplicaSetPlan`:
- too few live pods: create `<rs>-<5 random chars>` pods from the template, with the
  template's labels and annotations and a controller reference to the ReplicaSet;
- too many: delete the least valuable first, in Kubernetes' order (ActivePodsWithRanks):
  unscheduled before scheduled; Pending before Unknown before Running; not ready before
  ready; pods on nodes crowded with this ReplicaSet's pods first; ready for a shorter time
  first; more restarts first; newer first;
- at most BURST (500) creations or deletions per pass, as Kubernetes' burstReplicas;
- pods in a terminal phase (Succeeded/Failed) are not counted and are deleted (Kubernetes
  leaves them to its pod GC; a local cluster has no use for them and the replacement is
  created in the same pass);
- status: replicas, fullyLabeledReplicas, readyReplicas, availableReplicas (Ready for at
  least `minReadySeconds`), observedGeneration, counted on the pods as they will be after
  the plan runs.

Not done (Kubernetes does): adopting orphan pods that match the selector and releasing owned
pods that stopped matching; the slow-start batching of creations.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ketch.api.core import Pod, ReplicaSet
from ketch.cluster.controllers.meta import (
    TERMINAL_PHASES,
    find_condition,
    is_controlled_by,
    owner_reference,
    parse_time,
    random_suffix,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
BURST = 500
"""At most this many pods created or deleted per pass (Kubernetes' burstReplicas): a typo
like `replicas: 50000` fills the store gradually, the controllers stay responsive, and the
next pass (the status write queues one) continues."""
_PHASE_RANK = {"Pending": 0, None: 0, "Unknown": 1, "Running": 2}


@dataclass(frozen=True)
class ReplicaSetPlan:
    create: list[dict[str, Any]] = field(default_factory=list)  # Pod manifests
    delete: list[Pod] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    requeue_after: float | None = None  # seconds until a pod becomes available


def is_terminal(pod: Pod) -> bool:
    return pod.status is not None and pod.status.phase in TERMINAL_PHASES


def ready_since(pod: Pod) -> dt.datetime | None:
    """When the pod last became Ready, or None if it is not Ready."""
    cond = find_condition(pod.status.conditions if pod.status else None, "Ready")
    if cond is None or cond.status != "True":
        return None
    return parse_time(cond.last_transition_time) or _EPOCH


def is_available(pod: Pod, min_ready_seconds: int, now: dt.datetime) -> bool:
    since = ready_since(pod)
    if since is None:
        return False
    return min_ready_seconds == 0 or since + dt.timedelta(seconds=min_ready_seconds) <= now


def _restarts(pod: Pod) -> int:
    return sum(
        s.restart_count for s in (pod.status.container_statuses if pod.status else None) or []
    )


def deletion_order(pods: Sequence[Pod]) -> list[Pod]:
    """`pods` sorted least valuable first (the ones to delete on scale-down)."""
    on_node = Counter(p.spec.node_name for p in pods if p.spec.node_name)

    def key(pod: Pod) -> tuple[Any, ...]:
        phase = pod.status.phase if pod.status else None
        since = ready_since(pod)
        created = parse_time(pod.metadata.creation_timestamp) or _EPOCH
        return (
            1 if pod.spec.node_name else 0,
            _PHASE_RANK.get(phase, 0),
            0 if since is None else 1,
            -on_node[pod.spec.node_name] if pod.spec.node_name else 0,
            -(since or _EPOCH).timestamp(),
            -_restarts(pod),
            -created.timestamp(),
            pod.name,
        )

    return sorted(pods, key=key)


def new_pod(rs: ReplicaSet, name: str) -> dict[str, Any]:
    """A pod from the ReplicaSet's template, controlled by it."""
    template = rs.spec.template
    meta: dict[str, Any] = {"name": name, "namespace": rs.namespace}
    tmeta = template.metadata
    if tmeta is not None and tmeta.labels:
        meta["labels"] = dict(tmeta.labels)
    if tmeta is not None and tmeta.annotations:
        meta["annotations"] = dict(tmeta.annotations)
    meta["ownerReferences"] = [owner_reference(rs)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": template.spec.model_dump(by_alias=True, exclude_unset=True, exclude_none=True),
    }


def reconcile_replicaset(
    rs: ReplicaSet,
    pods: Sequence[Pod],
    now: dt.datetime,
    *,
    suffix: Callable[[], str] = random_suffix,
) -> ReplicaSetPlan:
    """What to do for `rs`, given every pod of its namespace."""
    owned = [p for p in pods if is_controlled_by(p, rs)]
    terminal = [p for p in owned if is_terminal(p)]
    active = [p for p in owned if not is_terminal(p)]
    want = rs.spec.replicas
    create: list[dict[str, Any]] = []
    delete: list[Pod] = list(terminal)
    if len(active) < want:
        taken = {p.name for p in pods}
        while len(active) + len(create) < want and len(create) < BURST:
            name = f"{rs.name}-{suffix()}"
            if name in taken:
                continue
            taken.add(name)
            create.append(new_pod(rs, name))
    elif len(active) > want:
        victims = deletion_order(active)[: min(len(active) - want, BURST)]
        delete += victims
        gone = {p.name for p in victims}
        active = [p for p in active if p.name not in gone]
    min_ready = rs.spec.min_ready_seconds or 0
    template_labels = (
        rs.spec.template.metadata.labels if rs.spec.template.metadata else None
    ) or {}
    ready = [p for p in active if ready_since(p) is not None]
    available = [p for p in ready if is_available(p, min_ready, now)]
    labeled = sum(
        1 for p in active if all(p.labels.get(k) == v for k, v in template_labels.items())
    )
    status: dict[str, Any] = {
        "replicas": len(active) + len(create),
        "fullyLabeledReplicas": labeled + len(create),
        "readyReplicas": len(ready),
        "availableReplicas": len(available),
    }
    if rs.metadata.generation is not None:
        status["observedGeneration"] = rs.metadata.generation
    requeue: float | None = None
    for pod in ready:
        since = ready_since(pod)
        if since is not None and not is_available(pod, min_ready, now):
            wait = (since + dt.timedelta(seconds=min_ready) - now).total_seconds()
            requeue = wait if requeue is None else min(requeue, wait)
    return ReplicaSetPlan(create, delete, status, requeue)
