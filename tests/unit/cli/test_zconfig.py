"""`ketch ztunnel-config` tables from a config dump (no proxy needed)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from ketch.cli.common import CliError
from ketch.cli.zconfig import SECTIONS, resolve_section, table_rows

# the shape `ketch.ztunnel.configdump` writes (ztunnel's)
DUMP = {
    "workloads": [
        {
            "uid": "u1",
            "namespace": "app",
            "name": "a",
            "workloadIps": ["10.0.0.1", "fd00::1"],
            "node": "n1",
            "protocol": "HBONE",
            "trustDomain": "cluster.local",
            "serviceAccount": "a",
            "waypoint": {"destination": "/10.0.9.8", "hboneMtlsPort": 15008},
        }
    ],
    "services": [
        {
            "namespace": "app",
            "name": "web",
            "vips": ["/10.96.0.1", "net1/10.96.0.2"],
            "ports": {"80": 8080, "443": 0},
            "endpoints": {"u1": {"workloadUid": "u1", "service": "app/web", "port": {"80": 8080}}},
            "waypoint": {"destination": "app/wp.app.svc.cluster.local", "hboneMtlsPort": 15008},
        }
    ],
    "policies": [
        {
            "namespace": "app",
            "name": "deny",
            "scope": "Namespace",
            "action": "Deny",
            "rules": [[[{"destinationPorts": [9]}]], [[{"principals": [{"Exact": "x"}]}]]],
            "dryRun": True,
        }
    ],
    "peerAuthentications": [{"namespace": "istio-system", "name": "default", "mode": "Strict"}],
    "certificates": [
        {
            "identity": "spiffe://cluster.local/ns/app/sa/a",
            "state": "Available",
            "certChain": [
                {
                    "pem": "-----BEGIN CERTIFICATE-----",
                    "serialNumber": "1234",
                    "validFrom": "2026-01-01T00:00:00Z",
                    "expirationTime": "2026-01-02T00:00:00Z",
                }
            ],
            "rootCerts": [],
        },
        {
            "identity": "spiffe://cluster.local/ns/app/sa/b",
            "state": "Unavailable: CA down",
            "certChain": [],
            "rootCerts": [],
        },
    ],
}


@pytest.mark.parametrize(
    ("section", "rows"),
    [
        (
            "workloads",
            [
                [
                    "app",
                    "a",
                    "10.0.0.1,fd00::1",
                    "n1",
                    "HBONE",
                    "10.0.9.8:15008",
                    "spiffe://cluster.local/ns/app/sa/a",
                ]
            ],
        ),
        (
            "services",
            [
                [
                    "app",
                    "web",
                    "10.96.0.1,net1/10.96.0.2",
                    "80->8080,443->(named)",
                    "1",
                    "app/wp.app.svc.cluster.local:15008",
                ]
            ],
        ),
        (
            "policies",
            [
                ["app", "deny", "AuthorizationPolicy", "Namespace", "Deny (dry-run)", "2"],
                ["istio-system", "default", "PeerAuthentication", "-", "Strict", "-"],
            ],
        ),
        (
            "certificates",
            [
                [
                    "spiffe://cluster.local/ns/app/sa/a",
                    "Available",
                    "1234",
                    "2026-01-01T00:00:00Z",
                    "2026-01-02T00:00:00Z",
                ],
                ["spiffe://cluster.local/ns/app/sa/b", "Unavailable: CA down", "-", "-", "-"],
            ],
        ),
        ("pods", []),
        ("connections", []),
    ],
)
def test_rows(section: str, rows: list[list[str]]) -> None:
    head, got = table_rows(section, DUMP)
    assert got == rows
    assert all(len(r) == len(head) for r in got)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("certs", "certificates"),
        ("workload", "workloads"),
        ("POLICY", "policies"),
        ("all", "all"),
        ("conns", "connections"),
    ],
)
def test_aliases(name: str, key: str) -> None:
    assert resolve_section(name) == key


def test_unknown_section_lists_the_known_ones() -> None:
    with pytest.raises(CliError, match="use one of: " + ", ".join(SECTIONS)):
        resolve_section("bogus")


def test_node_resolves_the_cluster_netns(tmp_path: Path) -> None:
    from ketch.cli.ztunnel_cmd import _node_netns

    with pytest.raises(CliError, match="not both"):
        _node_netns("node1", "x-n-node1", "x", tmp_path)
    with pytest.raises(CliError, match=r"has no netns zz\w*-n-node1: is the cluster up"):
        _node_netns("node1", None, "zz" + secrets.token_hex(3), tmp_path)
    with pytest.raises(CliError, match="--name"):
        _node_netns("node1", None, "Bad Name", tmp_path)
