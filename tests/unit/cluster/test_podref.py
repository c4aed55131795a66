"""Which pod `ketch logs` / `ketch exec` pick for NAME, pod/NAME, deploy/NAME (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.cluster.podref import PodRef, PodRefError, best_pod, parse


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("web-1", PodRef("Pod", "web-1")),
        ("pod/web-1", PodRef("Pod", "web-1")),
        ("po/web-1", PodRef("Pod", "web-1")),
        ("pods/web-1", PodRef("Pod", "web-1")),
        ("deploy/web", PodRef("Deployment", "web")),
        ("deployment/web", PodRef("Deployment", "web")),
        ("Deployment/web", PodRef("Deployment", "web")),
        ("deployments.apps/web", PodRef("Deployment", "web")),
        ("rs/web-7c", PodRef("ReplicaSet", "web-7c")),
        ("replicaset/web-7c", PodRef("ReplicaSet", "web-7c")),
    ],
)
def test_parse(text: str, want: PodRef) -> None:
    assert parse(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty pod name"),
        ("deploy/", "expected NAME or TYPE/NAME"),
        ("deploy/a/b", "expected NAME or TYPE/NAME"),
        ("svc/web", "cannot pick a pod of a 'svc'; use pod/NAME, deploy/NAME or rs/NAME"),
        ("/web", "cannot pick a pod of a ''"),
    ],
)
def test_parse_refuses_with_what_is_accepted(text: str, says: str) -> None:
    with pytest.raises(PodRefError) as info:
        parse(text)
    assert says in str(info.value)


def pod(
    name: str,
    *,
    node: str | None = "node1",
    phase: str = "Running",
    ready: bool = True,
    restarts: int = 0,
    created: str = "2026-01-01T00:00:00Z",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "c", "restartCount": restarts}],
        },
    }


@pytest.mark.parametrize(
    ("pods", "best"),
    [
        ([], None),
        ([pod("a")], "a"),
        ([pod("a", node=None), pod("b")], "b"),  # scheduled first
        ([pod("a", phase="Pending"), pod("b", phase="Unknown")], "b"),
        ([pod("a", phase="Pending"), pod("b")], "b"),  # Running first
        ([pod("a", ready=False), pod("b")], "b"),  # ready first
        ([pod("a"), pod("b", restarts=2)], "b"),  # more restarts: interesting logs
        ([pod("a", created="2026-02-01T00:00:00Z"), pod("b")], "b"),  # the oldest
        ([pod("b"), pod("a")], "a"),  # a tie: by name, so the answer is stable
        ([pod("a", created=""), pod("b", created="2026-03-01T00:00:00Z")], "b"),
    ],
)
def test_best_pod(pods: list[dict[str, Any]], best: str | None) -> None:
    got = best_pod(pods)
    assert (got["metadata"]["name"] if got else None) == best


def test_best_pod_survives_junk_status() -> None:
    junk: dict[str, Any] = {
        "metadata": {"name": "j"},
        "spec": {},
        "status": {"conditions": ["x", None], "containerStatuses": [7, {"restartCount": None}]},
    }
    assert best_pod([junk, pod("a")])["metadata"]["name"] == "a"  # type: ignore[index]
