"""`ketch ztunnel-config` tables from a config dump (no proxy needed)."""

from __future__ import annotations

import pytest

from ketch.cli.common import CliError
from ketch.cli.zconfig import SECTIONS, resolve_section, table_rows

DUMP = {
    "workloads": [
        {
            "namespace": "app",
            "name": "a",
            "addresses": ["10.0.0.1", "fd00::1"],
            "node": "n1",
            "protocol": "HBONE",
            "waypoint": None,
            "identity": "spiffe://cluster.local/ns/app/sa/a",
        }
    ],
    "services": [
        {
            "namespace": "app",
            "name": "web",
            "vips": ["10.96.0.1"],
            "ports": [{"port": 80, "targetPort": 8080}],
            "waypoint": "10.0.9.9:15008",
        }
    ],
    "policies": [
        {
            "namespace": "app",
            "name": "deny",
            "scope": "Namespace",
            "action": "Deny",
            "rules": 2,
            "dryRun": True,
        }
    ],
    "peerAuthentications": [{"namespace": "istio-system", "name": "default", "mode": "Strict"}],
    "certificates": [
        {
            "identity": "spiffe://cluster.local/ns/app/sa/a",
            "state": "Unavailable",
            "serial": None,
            "not_before": None,
            "not_after": None,
            "reason": "CA down",
        }
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
                    "-",
                    "spiffe://cluster.local/ns/app/sa/a",
                ]
            ],
        ),
        ("services", [["app", "web", "10.96.0.1", "80->8080", "10.0.9.9:15008"]]),
        (
            "policies",
            [
                ["app", "deny", "AuthorizationPolicy", "Namespace", "Deny (dry-run)", "2"],
                ["istio-system", "default", "PeerAuthentication", "-", "Strict", "-"],
            ],
        ),
        (
            "certificates",
            [["spiffe://cluster.local/ns/app/sa/a", "Unavailable", "-", "-", "-", "CA down"]],
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
