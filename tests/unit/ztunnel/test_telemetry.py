from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import Locality, Service, ServicePort, Workload
from ketch.ztunnel.telemetry import (
    ACCESS_LOG_FIELDS,
    TCP_LABEL_NAMES,
    AccessLogRecord,
    Direction,
    Reporter,
    ResponseFlags,
    SecurityPolicy,
    access_log_record,
    canonical_revision,
    canonical_service,
    format_json,
    format_text,
    tcp_labels,
)

SRC = Workload(
    uid="c1",
    name="client-7f9c-abc",
    namespace="shop",
    addresses=(ip_address("10.0.1.1"),),
    service_account="client",
    workload_name="client",
    cluster_id="east",
    labels={"app": "client", "version": "v1"},
    locality=Locality("us-east1", "us-east1-b", "rack7"),
)
DST = Workload(
    uid="s1",
    name="server-1",
    namespace="bank",
    addresses=(ip_address("10.0.2.1"),),
    service_account="server",
    labels={
        "service.istio.io/canonical-name": "ledger",
        "app.kubernetes.io/name": "ledger-app",
        "app.kubernetes.io/version": "2.0",
    },
)
SVC = Service(
    "ledger",
    "bank",
    "ledger.bank.svc.cluster.local",
    (ip_address("10.96.0.1"),),
    (ServicePort(80, 8080),),
)
REFERENCE_LABELS = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "connection_security_policy",
    "response_flags",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
]


def test_label_names_are_the_reference_set() -> None:
    assert set(TCP_LABEL_NAMES) == set(REFERENCE_LABELS)
    assert len(TCP_LABEL_NAMES) == len(REFERENCE_LABELS)


def test_full_labels() -> None:
    labels = tcp_labels(
        Reporter.DESTINATION,
        src_workload=SRC,
        src_identity=SRC.identity,
        dst_workload=DST,
        dst_service=SVC,
        security_policy=SecurityPolicy.MUTUAL_TLS,
    )
    assert tuple(labels) == TCP_LABEL_NAMES
    assert labels == {
        "reporter": "destination",
        "source_workload": "client",
        "source_canonical_service": "client",
        "source_canonical_revision": "v1",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/client",
        "source_app": "client",
        "source_version": "v1",
        "source_cluster": "east",
        "destination_service": "ledger.bank.svc.cluster.local",
        "destination_service_namespace": "bank",
        "destination_service_name": "ledger",
        "destination_workload": "server-1",
        "destination_canonical_service": "ledger",
        "destination_canonical_revision": "2.0",
        "destination_workload_namespace": "bank",
        "destination_principal": "spiffe://cluster.local/ns/bank/sa/server",
        # ztunnel: app/version = canonical service/revision, not the app labels
        "destination_app": "ledger",
        "destination_version": "2.0",
        # no cluster id: Istio's default cluster name
        "destination_cluster": "Kubernetes",
        "request_protocol": "tcp",
        "connection_security_policy": "mutual_tls",
        "response_flags": "-",
        "source_region": "us-east1",
        "source_zone": "us-east1-b",
        "destination_region": "unknown",
        "destination_zone": "unknown",
    }


def test_unknown_source_and_no_service() -> None:
    labels = tcp_labels(
        Reporter.SOURCE,
        src_workload=None,
        src_identity=None,
        dst_workload=None,
        dst_service=None,
        security_policy=SecurityPolicy.UNKNOWN,
        response_flags=ResponseFlags.DENY,
    )
    assert labels["reporter"] == "source"
    assert labels["response_flags"] == "DENY"
    for name in TCP_LABEL_NAMES:
        if name.startswith(("source_", "destination_")):
            assert labels[name] == "unknown", name


def test_identity_without_workload() -> None:
    peer = SpiffeId("cluster.local", "x", "y")
    labels = tcp_labels(
        Reporter.DESTINATION,
        src_workload=None,
        src_identity=peer,
        dst_workload=DST,
        dst_service=None,
        security_policy=SecurityPolicy.MUTUAL_TLS,
        dst_identity=SpiffeId("cluster.local", "bank", "other"),
    )
    assert labels["source_principal"] == "spiffe://cluster.local/ns/x/sa/y"
    assert labels["source_workload"] == "unknown"
    assert labels["destination_principal"] == "spiffe://cluster.local/ns/bank/sa/other"


@pytest.mark.parametrize(
    ("labels", "canonical_name", "service", "revision"),
    [
        ({}, "", "pod-a", "latest"),
        ({"app": "a", "version": "v3"}, "", "a", "v3"),
        ({"app": "a", "app.kubernetes.io/name": "k"}, "", "k", "latest"),
        (
            {
                "service.istio.io/canonical-name": "c",
                "service.istio.io/canonical-revision": "r",
                "app": "a",
            },
            "",
            "c",
            "r",
        ),
        ({"app": "a"}, "from-xds", "from-xds", "latest"),
    ],
)
def test_canonical_names(
    labels: dict[str, str], canonical_name: str, service: str, revision: str
) -> None:
    w = Workload(uid="u", name="pod-a", namespace="n", labels=labels, canonical_name=canonical_name)
    assert canonical_service(w) == service
    assert canonical_revision(w) == revision


def _record(error: str | BaseException | None = None) -> AccessLogRecord:
    """An inbound HBONE connection as the destination proxy logs it."""
    return access_log_record(
        direction=Direction.INBOUND,
        src=(ip_address("10.0.1.1"), 40000),
        src_workload=SRC,
        src_identity=SRC.identity,
        dst=(ip_address("10.0.2.1"), 15008),
        dst_workload=DST,
        dst_service=SVC,
        security_policy=SecurityPolicy.MUTUAL_TLS,
        hbone_addr=(ip_address("10.0.2.1"), 8080),
        bytes_sent=10,
        bytes_recv=2048,
        duration_s=0.0129,
        error=error,
    )


def test_access_log_json_has_ztunnel_fields() -> None:
    rec = _record()
    obj = json.loads(format_json(rec))
    assert obj == {
        "src.addr": "10.0.1.1:40000",
        "src.workload": "client-7f9c-abc",  # the pod name, as ztunnel
        "src.namespace": "shop",
        "src.identity": "spiffe://cluster.local/ns/shop/sa/client",
        "src.cluster": "east",
        "dst.addr": "10.0.2.1:15008",  # the L4 hop
        "dst.hbone_addr": "10.0.2.1:8080",  # the :authority
        "dst.service": "ledger.bank.svc.cluster.local",
        "dst.workload": "server-1",
        "dst.namespace": "bank",
        "dst.identity": "spiffe://cluster.local/ns/bank/sa/server",
        "dst.cluster": "Kubernetes",
        "direction": "inbound",
        "bytes_sent": 10,
        "bytes_recv": 2048,
        "duration": "12ms",  # whole milliseconds
    }
    assert [*obj, "error"] == list(ACCESS_LOG_FIELDS)


def test_access_log_text_and_error() -> None:
    rec = _record(ConnectionResetError("peer reset the connection"))
    text = format_text(rec)
    assert text.startswith("src.addr=10.0.1.1:40000 src.workload=client-7f9c-abc ")
    assert " duration=12ms " in text
    assert text.endswith('error="peer reset the connection"')
    assert json.loads(format_json(rec))["error"] == "peer reset the connection"


def test_access_log_identities_only_with_mtls() -> None:
    rec = access_log_record(
        direction=Direction.OUTBOUND,
        src=(ip_address("10.0.1.1"), 40000),
        src_workload=SRC,
        src_identity=SRC.identity,
        dst=(ip_address("10.0.2.1"), 8080),
        dst_workload=DST,
        dst_service=None,
        security_policy=SecurityPolicy.UNKNOWN,
    )
    fields = rec.fields()
    assert "src.identity" not in fields
    assert "dst.identity" not in fields
    assert fields["dst.workload"] == "server-1"


def test_access_log_minimal_plaintext() -> None:
    rec = access_log_record(
        direction=Direction.OUTBOUND,
        src=(ip_address("fd00::1"), 5000),
        src_workload=None,
        src_identity=None,
        dst=(ip_address("192.0.2.1"), 443),
        dst_workload=None,
        dst_service=None,
        security_policy=SecurityPolicy.UNKNOWN,
        error=TimeoutError(),
        response_flags=ResponseFlags.CONNECT,
    )
    assert format_text(rec) == (
        "src.addr=[fd00::1]:5000 dst.addr=192.0.2.1:443 direction=outbound bytes_sent=0 "
        "bytes_recv=0 duration=0ms error=TimeoutError"
    )
    assert rec.response_flags is ResponseFlags.CONNECT
