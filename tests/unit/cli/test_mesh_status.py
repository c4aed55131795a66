"""The MESH column of `ketch get pods -o wide` (ketch.cli.mesh_status), table-tested."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.cli.mesh_status import mesh_status, namespace_labels

AMBIENT_NS = {"istio.io/dataplane-mode": "ambient"}


def pod(
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    phase: str = "Running",
    namespace: str = "app",
    host_network: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": namespace,
            "uid": "u1",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"nodeName": "node1", "hostNetwork": host_network},
        "status": {"phase": phase, "podIP": "10.244.1.2"},
    }


ENABLED = {"ambient.istio.io/redirection": "enabled"}
PENDING = {"ambient.istio.io/redirection": "pending"}


@pytest.mark.parametrize(
    ("manifest", "ns_labels", "want"),
    [
        (pod(annotations=ENABLED), AMBIENT_NS, "ambient"),
        (pod(annotations=ENABLED), {}, "ambient"),  # the agent's word; removal is on its way
        (pod(annotations=PENDING), AMBIENT_NS, "pending"),  # e.g. no node proxy yet
        (pod(), AMBIENT_NS, "pending"),  # the rule says yes, the agent has not yet
        (pod(phase="Pending"), AMBIENT_NS, "pending"),  # not started yet
        (pod(labels={"istio.io/dataplane-mode": "ambient"}), {}, "pending"),  # pod label
        (pod(), {}, "none"),
        (pod(labels={"istio.io/dataplane-mode": "none"}), AMBIENT_NS, "none"),
        (pod(host_network=True), AMBIENT_NS, "none"),
        (pod(labels={"app": "ztunnel"}), AMBIENT_NS, "none"),
        (pod(namespace="kube-system"), AMBIENT_NS, "none"),
        (pod(phase="Succeeded", annotations=ENABLED), AMBIENT_NS, "none"),
        (pod(annotations={"ambient.istio.io/redirection": "garbage"}), {}, "none"),
    ],
)
def test_mesh_status(manifest: dict[str, Any], ns_labels: dict[str, str], want: str) -> None:
    assert mesh_status(manifest, ns_labels) == want


def test_namespace_labels() -> None:
    got = namespace_labels(
        [
            {"metadata": {"name": "shop", "labels": AMBIENT_NS}},
            {"metadata": {"name": "plain"}},
        ]
    )
    assert got == {"shop": AMBIENT_NS, "plain": {}}
