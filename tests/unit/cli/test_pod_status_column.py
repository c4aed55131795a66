"""`ketch get pods` STATUS as kubectl prints it: the phase unless a container says more."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.cli.output import pod_status_text


def pod(*containers: dict[str, Any], phase: str = "Running", **extra: Any) -> dict[str, Any]:
    meta = extra.pop("metadata", {"name": "p"})
    return {
        "metadata": meta,
        "status": {"phase": phase, **extra, "containerStatuses": list(containers)},
    }


RUNNING = {"name": "a", "ready": True, "state": {"running": {"startedAt": "x"}}}
LOOPING = {
    "name": "b",
    "ready": False,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
}


@pytest.mark.parametrize(
    ("manifest", "want"),
    [
        ({"metadata": {"name": "p"}}, "Pending"),
        (pod(RUNNING), "Running"),
        (pod(RUNNING, LOOPING), "CrashLoopBackOff"),  # 1/2 Running is not the whole story
        (pod(LOOPING, RUNNING), "CrashLoopBackOff"),
        (
            pod(
                {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}},
                phase="Pending",
            ),
            "ContainerCreating",
        ),
        (
            pod(
                {"name": "a", "state": {"terminated": {"reason": "Error", "exitCode": 3}}},
                phase="Failed",
            ),
            "Error",
        ),
        (
            pod({"name": "a", "state": {"terminated": {"exitCode": 2}}}, phase="Failed"),
            "ExitCode:2",
        ),
        (
            pod(
                {"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}},
                phase="Failed",
            ),
            "Signal:9",
        ),
        (pod(phase="Failed", reason="HostNetworkUnsupported"), "HostNetworkUnsupported"),
        (
            pod(
                RUNNING,
                {"name": "b", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}},
                conditions=[{"type": "Ready", "status": "False"}],
            ),
            "NotReady",
        ),
        (
            pod(
                {"name": "b", "state": {"terminated": {"reason": "Completed", "exitCode": 0}}},
                RUNNING,
                conditions=[{"type": "Ready", "status": "True"}],
            ),
            "Running",
        ),
        (pod(RUNNING, metadata={"name": "p", "deletionTimestamp": "t"}), "Terminating"),
    ],
)
def test_pod_status_text(manifest: dict[str, Any], want: str) -> None:
    assert pod_status_text(manifest) == want
