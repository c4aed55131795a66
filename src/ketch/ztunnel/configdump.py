"""The node proxy's `/config_dump` in ztunnel's shape, as pure functions.

`istioctl ztunnel-config` (istio:istioctl/pkg/writer/ztunnel/configdump/api.go) parses
ztunnel's dump (zt:src/admin.rs, the serde of zt:src/state/*.rs), so the keys and value
forms here are ztunnel's, camelCase:

- `workloads`: `uid`, `workloadIps`, `protocol` (`HBONE`/`TCP`), `status`
  (`Healthy`/`Unhealthy`), `name`, `namespace`, `serviceAccount`, `workloadName`,
  `workloadType`, `canonicalName`, `canonicalRevision`, `clusterId`, `trustDomain`,
  `locality`, `node`, `network`, `hostname`, `services` (`ns/hostname` keys),
  `authorizationPolicies`, `waypoint` (`{destination, hboneMtlsPort}`);
- `services`: `name`, `namespace`, `hostname`, `vips` (`network/ip`), `ports`
  (`{servicePort: targetPort}`), `endpoints` (`{uid: {workloadUid, service, port}}`),
  `subjectAltNames`, `waypoint`, `ipFamilies`;
- `policies`: `name`, `namespace`, `scope` (`Global`/`Namespace`/`WorkloadSelector`),
  `action` (`Allow`/`Deny`), `rules` (rules of clauses of matches: `[[[match]]]`, each
  match with only its non-empty fields; string matches as `{"Exact": v}` etc.), `dryRun`;
- `certificates`: `[{identity, state, certChain: [{pem, serialNumber, validFrom,
  expirationTime}], rootCerts: [...]}]`;
- `workloadState`: `{uid: {state, info: {name, namespace, trustDomain, serviceAccount},
  connections: {inbound, outbound}}}` for the pods this proxy serves.

Ketch's own views stay under keys ztunnel does not use: `node`, `ready`, `draining`,
`pods`, `connections`, `peerAuthentications`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from cryptography import x509

from ketch.mesh import (
    Authorization,
    GatewayAddress,
    HealthStatus,
    IpAddr,
    Match,
    MatchKind,
    Service,
    StringMatch,
    TunnelProtocol,
    Workload,
)
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.telemetry import canonical_revision, canonical_service, workload_name

Json = dict[str, Any]


def network_address(network: str, ip: IpAddr) -> str:
    """ztunnel's `NetworkAddress` form: `network/ip` (the network may be empty)."""
    return f"{network}/{ip}"


def gateway_json(g: GatewayAddress, network: str = "") -> Json:
    dest = g.destination
    if isinstance(dest, IPv4Address | IPv6Address):
        destination = network_address(network, dest)
    else:
        destination = str(dest)  # NamespacedHostname: namespace/hostname
    return {"destination": destination, "hboneMtlsPort": g.hbone_port}


def workload_json(w: Workload) -> Json:
    out: Json = {
        "uid": w.uid,
        "workloadIps": [str(a) for a in w.addresses],
        "protocol": "HBONE" if w.protocol is TunnelProtocol.HBONE else "TCP",
        "name": w.name,
        "namespace": w.namespace,
        "serviceAccount": w.service_account,
        "workloadName": workload_name(w),
        "workloadType": w.workload_type.value,
        "canonicalName": canonical_service(w),
        "canonicalRevision": canonical_revision(w),
        "clusterId": w.cluster_id,
        "trustDomain": w.trust_domain,
        "locality": {
            k: v
            for k, v in (
                ("region", w.locality.region),
                ("zone", w.locality.zone),
                ("subzone", w.locality.subzone),
            )
            if v
        },
        "node": w.node,
        "network": w.network,
        "status": "Healthy" if w.status is HealthStatus.HEALTHY else "Unhealthy",
        "hostname": w.hostname,
        "services": sorted(w.services),
        "authorizationPolicies": list(w.authorization_policies),
    }
    if w.waypoint is not None:
        out["waypoint"] = gateway_json(w.waypoint, w.network)
    return out


def _ip_families(vips: Sequence[IpAddr]) -> str:
    versions = {v.version for v in vips}
    if versions == {4, 6}:
        return "Dual"
    return "IPv6" if versions == {6} else "IPv4"


def service_json(s: Service, endpoints: Iterable[Workload]) -> Json:
    ports = {p.service_port: p.target_port for p in s.ports}
    eps: Json = {}
    for w in endpoints:
        port = dict(w.services.get(s.key, {})) or {sp: tp for sp, tp in ports.items() if tp}
        eps[w.uid] = {"workloadUid": w.uid, "service": s.key, "port": port}
    out: Json = {
        "name": s.name,
        "namespace": s.namespace,
        "hostname": s.hostname,
        "vips": [network_address("", v) for v in s.vips],
        "ports": ports,
        "endpoints": eps,
        "subjectAltNames": [i.uri for i in s.subject_alt_names],
        "ipFamilies": _ip_families(s.vips),
    }
    if s.waypoint is not None:
        out["waypoint"] = gateway_json(s.waypoint)
    return out


_STRING_MATCH = {
    MatchKind.EXACT: "Exact",
    MatchKind.PREFIX: "Prefix",
    MatchKind.SUFFIX: "Suffix",
    MatchKind.PRESENCE: "Presence",
}


def _string_match(m: StringMatch) -> Json:
    return {_STRING_MATCH[m.kind]: {} if m.kind is MatchKind.PRESENCE else m.value}


def match_json(m: Match) -> Json:
    """One xDS `Match` with only its non-empty fields (as istioctl's `omitempty` reads)."""
    fields: list[tuple[str, list[Any]]] = [
        ("namespaces", [_string_match(x) for x in m.namespaces]),
        ("notNamespaces", [_string_match(x) for x in m.not_namespaces]),
        ("principals", [_string_match(x) for x in m.principals]),
        ("notPrincipals", [_string_match(x) for x in m.not_principals]),
        ("sourceIps", [str(n) for n in m.source_ips]),
        ("notSourceIps", [str(n) for n in m.not_source_ips]),
        ("destinationIps", [str(n) for n in m.destination_ips]),
        ("notDestinationIps", [str(n) for n in m.not_destination_ips]),
        ("destinationPorts", list(m.destination_ports)),
        ("notDestinationPorts", list(m.not_destination_ports)),
        (
            "serviceAccounts",
            [
                {"namespace": a.namespace, "serviceAccount": a.service_account}
                for a in m.service_accounts
            ],
        ),
        (
            "notServiceAccounts",
            [
                {"namespace": a.namespace, "serviceAccount": a.service_account}
                for a in m.not_service_accounts
            ],
        ),
    ]
    return {k: v for k, v in fields if v}


_SCOPE = {"GLOBAL": "Global", "NAMESPACE": "Namespace", "WORKLOAD_SELECTOR": "WorkloadSelector"}


def policy_json(p: Authorization) -> Json:
    return {
        "name": p.name,
        "namespace": p.namespace,
        "scope": _SCOPE[p.scope.value],
        "action": p.action.value.capitalize(),
        "rules": [
            [[match_json(m) for m in clause.matches] for clause in rule.clauses] for rule in p.rules
        ],
        "dryRun": p.dry_run,
    }


def _rfc3339(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def cert_json(pem: bytes) -> Json:
    """ztunnel's `CertDump` of one PEM certificate."""
    c = x509.load_pem_x509_certificate(pem)
    return {
        "pem": pem.decode("ascii", "replace"),
        "serialNumber": str(c.serial_number),
        "validFrom": _rfc3339(c.not_valid_before_utc),
        "expirationTime": _rfc3339(c.not_valid_after_utc),
    }


def certificate_json(
    identity: str,
    state: str,
    chain: Sequence[bytes] | None,
    roots: Sequence[bytes],
) -> Json:
    """One identity's entry. `chain` is leaf..root as the proxy holds it (None: no
    certificate yet); `certChain` lists leaf and intermediates, `rootCerts` the roots."""
    certs = list(chain or ())
    if len(certs) > 1:
        certs = certs[:-1]
    return {
        "identity": identity,
        "state": state,
        "certChain": [cert_json(p) for p in certs],
        "rootCerts": [cert_json(p) for p in roots] if chain else [],
    }


def config_dump(
    state: ProxyState,
    *,
    certificates: list[Json],
    workload_state: Mapping[str, Json],
    extras: Mapping[str, Any],
) -> Json:
    """The whole dump: ztunnel's sections, then Ketch's `extras` (see the module docstring)."""
    dump: Json = {
        "workloads": [workload_json(w) for w in state.workloads.values()],
        "services": [service_json(s, state.endpoints(s)) for s in state.services.values()],
        "policies": [policy_json(p) for p in state.policies.values()],
        "certificates": certificates,
        "workloadState": dict(workload_state),
        "peerAuthentications": [
            {"name": p.name, "namespace": p.namespace, "mode": p.mode.value}
            for p in state.peer_authentications.values()
        ],
    }
    dump.update(extras)
    return dump
