"""The pure parts of the cluster fabric: what `ketch down` takes by name, node configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.cluster.fabric import (
    ClusterFabricError,
    FabricNode,
    check_nodes,
    destroy,
    node_config,
    owned_netns,
)
from ketch.cluster.layout import ClusterLayout

LAYOUT = ClusterLayout(Path("/tmp/x"), "t")


def test_owned_netns_takes_only_this_cluster() -> None:
    pod = LAYOUT.pod_netns("0b6a3c1e-uid")
    names = [
        "t-u",
        "t-n-node1",
        "t-n-node-2",
        pod,
        "t-x",  # not a name the layout makes
        "t-p-nothex12345",
        "t-p-abc",  # too short to be a pod hash
        "tx-u",  # cluster "tx"
        "tx-n-node1",
        "t2-n-node1",
        "ketch-u",
        "other",
        "t-n-",  # empty node name
        "t-n-Bad",
    ]
    # pods first, then nodes, the underlay last
    assert owned_netns(LAYOUT, names) == [pod, "t-n-node-2", "t-n-node1", "t-u"]


def test_owned_netns_of_the_default_cluster() -> None:
    k = ClusterLayout(Path("/x"))
    assert owned_netns(k, ["ketch-u", "ketch-n-node1", "ketchy-u", "kn12ab34-u", "t-u"]) == [
        "ketch-n-node1",
        "ketch-u",
    ]


def test_node_config_routes_to_every_other_node() -> None:
    nodes = [FabricNode("node1", 1), FabricNode("node3", 3), FabricNode("node2", 2)]
    lines = node_config(LAYOUT, nodes[2], nodes)
    assert lines == [
        "link set lo up",
        "addr replace 10.96.0.10/32 dev lo",
        "addr replace 172.18.0.2/24 dev eth0",
        "link set eth0 up",
        "route replace 10.244.1.0/24 via 172.18.0.1",
        "route replace 10.244.3.0/24 via 172.18.0.3",
    ]
    # idempotent commands only: re-running `ketch up` never duplicates
    assert not any(line.startswith(("addr add", "route add")) for line in lines)


@pytest.mark.parametrize(
    ("nodes", "msg"),
    [
        ([FabricNode("a", 1), FabricNode("b", 1)], "both have index 1"),
        ([FabricNode("a", 1), FabricNode("a", 2)], "listed twice"),
    ],
)
def test_check_nodes(nodes: list[FabricNode], msg: str) -> None:
    with pytest.raises(ClusterFabricError, match=msg):
        check_nodes(nodes)


@pytest.mark.parametrize(("name", "index"), [("Node1", 1), ("n_1", 1), ("ok", 0), ("ok", 255)])
def test_fabric_node_validation(name: str, index: int) -> None:
    with pytest.raises(ClusterFabricError):
        FabricNode(name, index)


def test_destroy_removes_only_this_clusters_pod_uts_files(tmp_path: Path) -> None:
    # nothing of cluster `t` exists in /run/netns: destroy has only files to remove
    layout = ClusterLayout(tmp_path, "tuts")
    uts, etc = tmp_path / "uts", tmp_path / "etc"
    uts.mkdir()
    etc.mkdir()
    mine = ["tuts-p-0123456789ab", "tuts-p-ba9876543210"]
    others = ["tutsx-p-0123456789ab", "tuts-p-short", "other"]
    for name in mine + others:
        (uts / name).touch()
    report = destroy(layout, etc_root=etc, uts_root=uts, kill_grace=0)
    assert sorted(report.uts) == mine
    assert report.errors == []
    assert sorted(p.name for p in uts.iterdir()) == sorted(others)
