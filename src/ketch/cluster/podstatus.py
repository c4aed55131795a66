"""A Pod's status from what the kubelet observed, pure (Kubernetes' `generateAPIPodStatus`).

The kubelet keeps plain facts per pod (`PodFacts`: its address, when it started, and per
container the current state, the last termination, restarts and the readiness verdict)
and turns them into the `status` of the Pod object here. The result is deterministic for
the same facts and previous status (condition `lastTransitionTime`s are carried over while
a condition keeps its value), so the kubelet writes the store only when something changed.

Phase (as `getPhase` in pkg/kubelet/kubelet_pods.go):
- Pending while any container waits without ever having run (sandbox, first start);
- Running while a container runs, or all stopped but will be restarted;
- Succeeded when all exited 0 and none will restart; Failed when all stopped, one failed,
  and `restartPolicy: Never`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

RestartPolicy = Literal["Always", "OnFailure", "Never"]


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Running:
    started_at: dt.datetime


@dataclass(frozen=True)
class Waiting:
    reason: str  # ContainerCreating, CrashLoopBackOff, PodInitializing, ...
    message: str | None = None


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str  # Completed, Error, OOMKilled, StartError, ...
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    signal: int | None = None
    message: str | None = None


State = Running | Waiting | Terminated


@dataclass(frozen=True)
class ContainerFacts:
    name: str
    state: State
    last: Terminated | None = None
    restart_count: int = 0
    #: the readiness probe's verdict; None when the container has no readiness probe
    readiness: bool | None = None
    image: str | None = None

    @property
    def ready(self) -> bool:
        return isinstance(self.state, Running) and self.readiness is not False


@dataclass(frozen=True)
class PodFacts:
    restart_policy: RestartPolicy
    containers: tuple[ContainerFacts, ...]
    pod_ip: str | None = None
    host_ip: str | None = None
    start_time: dt.datetime | None = None
    #: the kubelet refused the pod (e.g. hostNetwork): (reason, message); phase Failed
    refused: tuple[str, str] | None = None


def terminated_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def phase(facts: PodFacts) -> str:
    if facts.refused is not None:
        return "Failed"
    running = waiting = stopped = succeeded = 0
    for c in facts.containers:
        if isinstance(c.state, Running):
            running += 1
        elif isinstance(c.state, Terminated):
            stopped += 1
            succeeded += c.state.exit_code == 0
        elif c.last is not None:  # waiting to restart after a run: it has stopped
            stopped += 1
            succeeded += c.last.exit_code == 0
        else:
            waiting += 1
    if waiting or not facts.containers:
        return "Pending"
    if running:
        return "Running"
    # every container has stopped
    if facts.restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if facts.restart_policy == "Never":
        return "Failed"
    return "Running"  # OnFailure: the failed ones are restarted


def _state(state: State) -> dict[str, Any]:
    if isinstance(state, Running):
        return {"running": {"startedAt": rfc3339(state.started_at)}}
    if isinstance(state, Waiting):
        waiting: dict[str, Any] = {"reason": state.reason}
        if state.message:
            waiting["message"] = state.message
        return {"waiting": waiting}
    term: dict[str, Any] = {"exitCode": state.exit_code, "reason": state.reason}
    if state.signal is not None:
        term["signal"] = state.signal
    if state.message:
        term["message"] = state.message
    if state.started_at is not None:
        term["startedAt"] = rfc3339(state.started_at)
    if state.finished_at is not None:
        term["finishedAt"] = rfc3339(state.finished_at)
    return {"terminated": term}


def container_status(c: ContainerFacts) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": c.name,
        "ready": c.ready,
        "started": isinstance(c.state, Running),
        "restartCount": c.restart_count,
        "state": _state(c.state),
        "lastState": _state(c.last) if c.last is not None else {},
    }
    if c.image:
        out["image"] = c.image
    return out


def _condition(
    ctype: str,
    ok: bool,
    now: dt.datetime,
    previous: Mapping[str, Mapping[str, Any]],
    reason: str | None = None,
    message: str | None = None,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(ctype)
    since = (
        before.get("lastTransitionTime")
        if before is not None and before.get("status") == status
        else None
    )
    cond: dict[str, Any] = {
        "type": ctype,
        "status": status,
        "lastTransitionTime": since or rfc3339(now),
    }
    if reason and not ok:
        cond["reason"] = reason
    if message and not ok:
        cond["message"] = message
    return cond


def pod_status(
    facts: PodFacts, previous: Mapping[str, Any] | None, now: dt.datetime
) -> dict[str, Any]:
    """The Pod's `status` (wire form) for `facts`; `previous` is the status stored now."""
    prev_conditions = {
        str(c.get("type")): c
        for c in ((previous or {}).get("conditions") or [])
        if isinstance(c, Mapping)
    }
    ph = phase(facts)
    status: dict[str, Any] = {"phase": ph}
    if facts.refused is not None:
        status["reason"], status["message"] = facts.refused
    if facts.host_ip:
        status["hostIP"] = facts.host_ip
        status["hostIPs"] = [{"ip": facts.host_ip}]
    if facts.pod_ip:
        status["podIP"] = facts.pod_ip
        status["podIPs"] = [{"ip": facts.pod_ip}]
    if facts.start_time is not None:
        status["startTime"] = rfc3339(facts.start_time)

    unready = [c.name for c in facts.containers if not c.ready]
    if ph in ("Succeeded", "Failed"):
        reason, message = "PodCompleted", None
    else:
        reason = "ContainersNotReady"
        message = f"containers with unready status: [{' '.join(unready)}]"
    all_ready = not unready and bool(facts.containers) and ph == "Running"
    status["conditions"] = [
        _condition("PodScheduled", True, now, prev_conditions),
        _condition("Initialized", facts.refused is None, now, prev_conditions, "PodRefused"),
        _condition("ContainersReady", all_ready, now, prev_conditions, reason, message),
        _condition("Ready", all_ready, now, prev_conditions, reason, message),
    ]
    status["containerStatuses"] = [container_status(c) for c in facts.containers]
    return status
