"""`/config_dump` in ztunnel's shape: the field names and value forms `istioctl
ztunnel-config` parses (istioctl/pkg/writer/ztunnel/configdump/api.go)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_network

from ketch.identity.ca import CertificateAuthority
from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    Action,
    Authorization,
    Clause,
    GatewayAddress,
    Locality,
    Match,
    NamespacedHostname,
    Rule,
    Scope,
    Service,
    ServiceAccountMatch,
    ServicePort,
    StringMatch,
    TunnelProtocol,
    Workload,
)
from ketch.ztunnel.configdump import certificate_json, config_dump
from ketch.ztunnel.state import ProxyState

TD = "cluster.local"
SVC = Service(
    "web",
    "app",
    "web.app.svc.cluster.local",
    (ip_address("10.96.0.1"),),
    (ServicePort(80, 8080), ServicePort(81, 0)),
    subject_alt_names=(SpiffeId(TD, "app", "extra"),),
    waypoint=GatewayAddress(NamespacedHostname("app", "wp.app.svc.cluster.local")),
)
POD = Workload(
    uid="u1",
    name="web-1",
    namespace="app",
    addresses=(ip_address("10.0.0.1"),),
    service_account="web",
    node="n1",
    labels={"app": "web", "version": "v2"},
    services={"app/web.app.svc.cluster.local": {80: 8080, 81: 9090}},
    waypoint=GatewayAddress(ip_address("10.0.9.9")),
    cluster_id="east",
    locality=Locality("r1", "z1"),
    authorization_policies=("app/deny",),
)
PLAIN = Workload(
    uid="u2",
    name="legacy",
    namespace="app",
    addresses=(ip_address("10.0.0.2"),),
    protocol=TunnelProtocol.NONE,
)
POLICY = Authorization(
    "deny",
    "app",
    Scope.WORKLOAD_SELECTOR,
    Action.DENY,
    rules=(
        Rule(
            (
                Clause(
                    (
                        Match(principals=(StringMatch.parse("spiffe://x/*"),)),
                        Match(namespaces=(StringMatch.parse("*"),), destination_ports=(9,)),
                    )
                ),
                Clause((Match(not_source_ips=(ip_network("10.1.0.0/16"),)),)),
            )
        ),
        Rule((Clause((Match(service_accounts=(ServiceAccountMatch("app", "sa"),)),)),)),
    ),
    dry_run=True,
)


def _dump() -> dict[str, object]:
    state = ProxyState.build([POD, PLAIN], [SVC], [POLICY])
    dump = config_dump(state, certificates=[], workload_state={}, extras={"node": "n1"})
    return json.loads(json.dumps(dump))  # as it goes over the wire


def test_workloads_as_ztunnel() -> None:
    w, plain = _dump()["workloads"]  # type: ignore[misc]
    assert w == {
        "uid": "u1",
        "workloadIps": ["10.0.0.1"],
        "protocol": "HBONE",
        "name": "web-1",
        "namespace": "app",
        "serviceAccount": "web",
        "workloadName": "web-1",
        "workloadType": "pod",
        "canonicalName": "web",
        "canonicalRevision": "v2",
        "clusterId": "east",
        "trustDomain": "cluster.local",
        "locality": {"region": "r1", "zone": "z1"},
        "node": "n1",
        "network": "",
        "status": "Healthy",
        "hostname": "",
        "services": ["app/web.app.svc.cluster.local"],
        "authorizationPolicies": ["app/deny"],
        "waypoint": {"destination": "/10.0.9.9", "hboneMtlsPort": 15008},
    }
    assert plain["protocol"] == "TCP"


def test_services_as_ztunnel() -> None:
    (s,) = _dump()["services"]  # type: ignore[misc]
    assert s == {
        "name": "web",
        "namespace": "app",
        "hostname": "web.app.svc.cluster.local",
        "vips": ["/10.96.0.1"],
        "ports": {"80": 8080, "81": 0},
        "endpoints": {
            "u1": {
                "workloadUid": "u1",
                "service": "app/web.app.svc.cluster.local",
                "port": {"80": 8080, "81": 9090},
            }
        },
        "subjectAltNames": ["spiffe://cluster.local/ns/app/sa/extra"],
        "ipFamilies": "IPv4",
        "waypoint": {"destination": "app/wp.app.svc.cluster.local", "hboneMtlsPort": 15008},
    }


def test_policies_keep_their_nested_rules() -> None:
    (p,) = _dump()["policies"]  # type: ignore[misc]
    assert p == {
        "name": "deny",
        "namespace": "app",
        "scope": "WorkloadSelector",
        "action": "Deny",
        "rules": [
            [
                [
                    {"principals": [{"Prefix": "spiffe://x/"}]},
                    {"namespaces": [{"Presence": {}}], "destinationPorts": [9]},
                ],
                [{"notSourceIps": ["10.1.0.0/16"]}],
            ],
            [[{"serviceAccounts": [{"namespace": "app", "serviceAccount": "sa"}]}]],
        ],
        "dryRun": True,
    }


def test_extras_under_their_own_keys() -> None:
    dump = _dump()
    assert dump["node"] == "n1"
    assert dump["workloadState"] == {}
    assert dump["certificates"] == []
    assert dump["peerAuthentications"] == []


def test_certificate_as_ztunnel() -> None:
    ca = CertificateAuthority.create(TD)
    issued = ca.issue_workload(SpiffeId(TD, "app", "web"))
    chain = tuple(issued.chain_pem)
    c = certificate_json(
        "spiffe://cluster.local/ns/app/sa/web", "Available", chain, ca.trust_bundle
    )
    assert c["identity"] == "spiffe://cluster.local/ns/app/sa/web"
    assert c["state"] == "Available"
    assert len(c["certChain"]) == len(chain) - 1  # the root goes to rootCerts
    leaf = c["certChain"][0]
    assert set(leaf) == {"pem", "serialNumber", "validFrom", "expirationTime"}
    assert leaf["pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert int(leaf["serialNumber"]) > 0
    assert leaf["expirationTime"].endswith("Z")
    assert [r["pem"].encode() for r in c["rootCerts"]] == ca.trust_bundle
    pending = certificate_json("spiffe://x", "Initializing", None, ca.trust_bundle)
    assert pending == {
        "identity": "spiffe://x",
        "state": "Initializing",
        "certChain": [],
        "rootCerts": [],
    }
