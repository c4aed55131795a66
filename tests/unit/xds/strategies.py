"""Hypothesis strategies for the mesh objects the xDS conversion carries (only the fields the
xDS form holds: no workload labels, policy selectors or waypoint identities)."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    Action,
    AppProtocol,
    Authorization,
    Clause,
    GatewayAddress,
    HealthStatus,
    IpNet,
    Locality,
    Match,
    MatchKind,
    NamespacedHostname,
    Rule,
    Scope,
    Service,
    ServiceAccountMatch,
    ServicePort,
    StringMatch,
    TunnelProtocol,
    Workload,
    WorkloadType,
)

labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
texts = st.text(max_size=12)
names = st.text(min_size=1, max_size=12)
ports = st.integers(1, 65535)
ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@st.composite
def nets(draw: st.DrawFn) -> IpNet:
    ip = draw(ips)
    length = draw(st.integers(0, ip.max_prefixlen))
    return ipaddress.ip_network((ip, length), strict=False)


spiffe_ids = st.builds(SpiffeId, st.sampled_from(["cluster.local", "example.org"]), labels, labels)
hostnames = st.builds(NamespacedHostname, names, names)
gateways = st.builds(GatewayAddress, st.one_of(ips, hostnames), ports, st.none())
service_keys = st.builds(lambda ns, h: f"{ns}/{h}", names.filter(lambda s: "/" not in s), names)

workloads = st.builds(
    Workload,
    uid=names,
    name=names,
    namespace=labels,
    addresses=st.lists(ips, unique=True, max_size=3).map(tuple),
    service_account=labels,
    trust_domain=st.sampled_from(["cluster.local", "example.org"]),
    node=texts,
    protocol=st.sampled_from(TunnelProtocol),
    waypoint=st.none() | gateways,
    canonical_name=texts,
    canonical_revision=texts,
    workload_name=texts,
    workload_type=st.sampled_from(WorkloadType),
    status=st.sampled_from(HealthStatus),
    cluster_id=texts,
    services=st.dictionaries(service_keys, st.dictionaries(ports, ports, max_size=3), max_size=3),
    authorization_policies=st.lists(names, max_size=3).map(tuple),
    network=texts,
    hostname=texts,
    locality=st.builds(Locality, texts, texts, texts),
)

services = st.builds(
    Service,
    name=names,
    namespace=names,
    hostname=names,
    vips=st.lists(ips, unique=True, max_size=3).map(tuple),
    ports=st.lists(
        st.builds(ServicePort, ports, st.integers(0, 65535), st.sampled_from(AppProtocol)),
        max_size=3,
        unique_by=lambda p: p.service_port,
    ).map(tuple),
    subject_alt_names=st.lists(spiffe_ids, max_size=2).map(tuple),
    waypoint=st.none() | gateways,
)

string_matches = st.one_of(
    st.builds(
        StringMatch, st.sampled_from([MatchKind.EXACT, MatchKind.PREFIX, MatchKind.SUFFIX]), texts
    ),
    st.just(StringMatch(MatchKind.PRESENCE)),
)
sa_matches = st.builds(ServiceAccountMatch, names, names)


def _few(s: st.SearchStrategy[object]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(s, max_size=2).map(tuple)


matches = st.builds(
    Match,
    namespaces=_few(string_matches),
    not_namespaces=_few(string_matches),
    principals=_few(string_matches),
    not_principals=_few(string_matches),
    service_accounts=_few(sa_matches),
    not_service_accounts=_few(sa_matches),
    source_ips=_few(nets()),
    not_source_ips=_few(nets()),
    destination_ips=_few(nets()),
    not_destination_ips=_few(nets()),
    destination_ports=_few(ports),
    not_destination_ports=_few(ports),
)
rules = st.builds(Rule, _few(st.builds(Clause, _few(matches))))
authorizations = st.builds(
    Authorization,
    name=names,
    namespace=names,
    scope=st.sampled_from(Scope),
    action=st.sampled_from(Action),
    rules=_few(rules),
    dry_run=st.booleans(),
)
