"""Pod status from runtime facts: phase table, conditions, container states."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from ketch.api.core import PodStatus
from ketch.cluster.podstatus import (
    ContainerFacts,
    PodFacts,
    Running,
    Terminated,
    Waiting,
    phase,
    pod_status,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=30)
RUN = Running(T0)
OK = Terminated(0, "Completed", T0, T1)
FAIL = Terminated(1, "Error", T0, T1)
CREATING = Waiting("ContainerCreating")
BACKOFF = Waiting("CrashLoopBackOff", "back-off 10s")


def c(state: Any, last: Terminated | None = None, readiness: bool | None = None) -> ContainerFacts:
    return ContainerFacts("c", state, last, 0, readiness)


@pytest.mark.parametrize(
    ("policy", "states", "expected"),
    [
        ("Always", [CREATING], "Pending"),
        ("Always", [RUN], "Running"),
        ("Always", [RUN, CREATING], "Pending"),  # one still waiting for its first start
        ("Always", [RUN, c(BACKOFF, FAIL)], "Running"),
        ("Always", [c(BACKOFF, OK)], "Running"),  # stopped, will restart
        ("Always", [OK], "Running"),
        ("OnFailure", [OK, OK], "Succeeded"),
        ("OnFailure", [OK, c(BACKOFF, FAIL)], "Running"),  # the failed one is restarted
        ("Never", [OK, OK], "Succeeded"),
        ("Never", [OK, FAIL], "Failed"),
        ("Never", [RUN, FAIL], "Running"),
        ("Never", [], "Pending"),
    ],
)
def test_phase(policy: Any, states: list[Any], expected: str) -> None:
    containers = tuple(s if isinstance(s, ContainerFacts) else c(s) for s in states)
    assert phase(PodFacts(policy, containers)) == expected


def test_refused_pod_is_failed_with_reason() -> None:
    facts = PodFacts("Always", (c(Waiting("PodRefused", "no")),), refused=("R", "why"))
    status = pod_status(facts, None, T0)
    assert status["phase"] == "Failed"
    assert (status["reason"], status["message"]) == ("R", "why")
    PodStatus.model_validate(status)


def full_facts(**kw: Any) -> PodFacts:
    base: dict[str, Any] = {
        "restart_policy": "Always",
        "containers": (ContainerFacts("web", RUN, FAIL, 2, None, "python:3"),),
        "pod_ip": "10.244.1.2",
        "host_ip": "172.18.0.1",
        "start_time": T0,
    }
    base.update(kw)
    return PodFacts(**base)


def test_running_ready_pod_status_is_complete_and_valid() -> None:
    status = pod_status(full_facts(), None, T1)
    PodStatus.model_validate(status)
    assert status["phase"] == "Running"
    assert status["podIP"] == "10.244.1.2"
    assert status["podIPs"] == [{"ip": "10.244.1.2"}]
    assert status["hostIP"] == "172.18.0.1"
    assert status["hostIPs"] == [{"ip": "172.18.0.1"}]
    assert status["startTime"] == "2026-01-01T12:00:00Z"
    assert [(x["type"], x["status"]) for x in status["conditions"]] == [
        ("PodScheduled", "True"),
        ("Initialized", "True"),
        ("ContainersReady", "True"),
        ("Ready", "True"),
    ]
    assert status["containerStatuses"] == [
        {
            "name": "web",
            "ready": True,
            "started": True,
            "restartCount": 2,
            "state": {"running": {"startedAt": "2026-01-01T12:00:00Z"}},
            "lastState": {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "startedAt": "2026-01-01T12:00:00Z",
                    "finishedAt": "2026-01-01T12:00:30Z",
                }
            },
            "image": "python:3",
        }
    ]


@pytest.mark.parametrize(
    ("state", "readiness", "ready"),
    [
        (RUN, None, True),  # no readiness probe: ready when running
        (RUN, True, True),
        (RUN, False, False),
        (BACKOFF, None, False),
        (OK, None, False),
    ],
)
def test_container_readiness(state: Any, readiness: bool | None, ready: bool) -> None:
    facts = full_facts(containers=(ContainerFacts("web", state, None, 0, readiness),))
    status = pod_status(facts, None, T0)
    cs = status["containerStatuses"][0]
    assert cs["ready"] is ready
    conds = {x["type"]: x for x in status["conditions"]}
    assert conds["Ready"]["status"] == ("True" if ready else "False")
    if not ready:
        assert conds["Ready"]["reason"] in ("ContainersNotReady", "PodCompleted")


def test_unready_message_names_the_containers() -> None:
    facts = full_facts(
        containers=(
            ContainerFacts("a", RUN, None, 0, False),
            ContainerFacts("b", RUN, None, 0, True),
            ContainerFacts("c", BACKOFF, FAIL, 1),
        )
    )
    ready = next(x for x in pod_status(facts, None, T0)["conditions"] if x["type"] == "Ready")
    assert ready["message"] == "containers with unready status: [a c]"


def test_transition_time_kept_while_a_condition_holds() -> None:
    first = pod_status(full_facts(), None, T0)
    later = pod_status(full_facts(), first, T1)
    assert later == first  # nothing changed: nothing to write
    unready = full_facts(containers=(ContainerFacts("web", RUN, None, 0, False),))
    flipped = pod_status(unready, first, T1)
    times = {x["type"]: x["lastTransitionTime"] for x in flipped["conditions"]}
    assert times["PodScheduled"] == "2026-01-01T12:00:00Z"
    assert times["Ready"] == "2026-01-01T12:00:30Z"


def test_waiting_and_terminated_states() -> None:
    facts = full_facts(
        containers=(
            ContainerFacts("a", Waiting("ContainerCreating", "sandbox: boom")),
            ContainerFacts("b", Terminated(137, "Error", T0, T1, signal=9, message="killed")),
        ),
        pod_ip=None,
        start_time=None,
    )
    status = pod_status(facts, None, T0)
    PodStatus.model_validate(status)
    assert "podIP" not in status
    assert "startTime" not in status
    a, b = status["containerStatuses"]
    assert a["state"] == {"waiting": {"reason": "ContainerCreating", "message": "sandbox: boom"}}
    assert a["lastState"] == {}
    assert a["started"] is False
    assert b["state"]["terminated"]["signal"] == 9
    assert b["state"]["terminated"]["message"] == "killed"
