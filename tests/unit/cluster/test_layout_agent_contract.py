"""The node agent finds a pod's netns from `ClusterLayout.netns_template()`; the kubelet
creates it as `ClusterLayout.pod_netns(uid)`. Both must name the same file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.agent.agent import uid_hash
from ketch.cluster.layout import ClusterLayout


@pytest.mark.parametrize(
    "uid", ["0b7c6f9e-1d2a-4c8e-9f00-123456789abc", "x", "pod-uid-with-dashes"]
)
def test_agent_template_names_the_kubelets_netns(uid: str) -> None:
    layout = ClusterLayout(Path("/var/lib/k"), "kc")
    path = layout.netns_template().format(uidhash=uid_hash(uid), uid=uid, name="p", namespace="n")
    assert path == f"/run/netns/{layout.pod_netns(uid)}"
