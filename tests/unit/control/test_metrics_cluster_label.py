"""Metrics hygiene end to end from the control plane's translation (issue 12 item 7): the
`*_cluster` labels of the node proxy's metrics carry the cluster id the control plane puts in
workloads (`Kubernetes`, Istio's default, when none is set), and the registry exports no
`*_created` series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from ketch.api import from_manifest
from ketch.api.core import Pod
from ketch.control.translate.workloads import PolicyIndex, workload_for_pod
from ketch.mesh import Workload
from ketch.ztunnel.metrics import ZtunnelMetrics
from ketch.ztunnel.telemetry import Reporter, SecurityPolicy, tcp_labels

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "c", "command": ["x"]}]},
    "status": {"phase": "Running", "podIP": "10.244.0.5"},
}


def _workload(**kw: str) -> Workload:
    pod = from_manifest(POD)
    assert isinstance(pod, Pod)
    w = workload_for_pod(pod, namespace=None, services=[], policies_index=PolicyIndex(), **kw)
    assert w is not None
    return w


def _labels(**kw: str) -> dict[str, str]:
    w = _workload(**kw)
    return tcp_labels(
        Reporter.DESTINATION,
        src_workload=w,
        src_identity=w.identity,
        dst_workload=w,
        dst_service=None,
        security_policy=SecurityPolicy.MUTUAL_TLS,
    )


def test_cluster_labels_default_to_kubernetes_and_follow_the_cluster_id() -> None:
    default = _labels()
    assert (default["source_cluster"], default["destination_cluster"]) == (
        "Kubernetes",
        "Kubernetes",
    )
    east = _labels(cluster_id="east")
    assert (east["source_cluster"], east["destination_cluster"]) == ("east", "east")


def test_no_created_series_in_the_exposition() -> None:
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    metrics = ZtunnelMetrics(registry)
    w = _workload()
    values = metrics.label_values(
        Reporter.DESTINATION,
        src_workload=w,
        src_identity=w.identity,
        dst_workload=w,
        dst_service=None,
        security_policy=SecurityPolicy.MUTUAL_TLS,
    )
    metrics.opened(values).closed(10, 20)
    text = generate_latest(registry).decode()
    assert "istio_tcp_connections_opened_total{" in text
    assert 'destination_cluster="Kubernetes"' in text
    assert "_created" not in text
