"""The endpoint controller's decision: Service + Pods -> EndpointSlices, and the diff."""

from __future__ import annotations

from typing import Any

from ketch.api.discovery import EndpointSlice
from ketch.cluster.controllers.endpoints import MANAGED_BY, desired_slices, diff_slices
from tests.unit.cluster.controllers.factory import pod, service

APP = {"app": "web"}
HTTP = [{"name": "http", "containerPort": 8080}]


def endpoints_of(slices: list[dict[str, Any]]) -> dict[str, bool]:
    return {
        ep["targetRef"]["name"]: ep["conditions"]["ready"] for s in slices for ep in s["endpoints"]
    }


def test_ready_and_not_ready_pods_with_numeric_target_port() -> None:
    svc = service(selector=APP)
    pods = [
        pod("a", labels=APP, ip="10.244.1.2", ready=True, node_name="node1"),
        pod("b", labels=APP, ip="10.244.2.2", ready=False, node_name="node2"),
        pod("c", labels=APP),  # no IP yet
        pod("d", labels=APP, ip="10.244.1.3", ready=True, phase="Succeeded"),
        pod("e", labels={"app": "other"}, ip="10.244.1.4", ready=True),
        pod("f", labels=APP, ip="10.244.1.5", ready=True, namespace="elsewhere"),
    ]
    (slice_,) = desired_slices(svc, pods)
    EndpointSlice.model_validate(slice_)
    assert endpoints_of([slice_]) == {"a": True, "b": False}
    assert slice_["addressType"] == "IPv4"
    assert slice_["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    first = slice_["endpoints"][0]
    assert first["addresses"] == ["10.244.1.2"]
    assert first["nodeName"] == "node1"
    assert first["targetRef"]["kind"] == "Pod"
    assert first["targetRef"]["uid"] == pods[0].metadata.uid
    labels = slice_["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "web"
    assert labels["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
    (ref,) = slice_["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "Service",
        "web",
        "svc-web",
        True,
    )
    assert slice_["metadata"]["name"].startswith("web-")


def test_named_target_port_resolved_per_pod_and_grouped() -> None:
    svc = service(
        selector=APP,
        ports=[
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9090},
        ],
    )
    pods = [
        pod("a", labels=APP, ip="10.244.1.2", ready=True, ports=HTTP),
        pod(
            "b",
            labels=APP,
            ip="10.244.1.3",
            ready=True,
            ports=[{"name": "http", "containerPort": 9000}],
        ),
        pod("c", labels=APP, ip="10.244.1.4", ready=True),  # no port named http
    ]
    slices = desired_slices(svc, pods)
    by_ports = {
        tuple((p["name"], p["port"]) for p in s["ports"]): sorted(
            e["targetRef"]["name"] for e in s["endpoints"]
        )
        for s in slices
    }
    assert by_ports == {
        (("web", 8080), ("metrics", 9090)): ["a"],
        (("web", 9000), ("metrics", 9090)): ["b"],
        (("metrics", 9090),): ["c"],  # left out of the port it lacks, kept for the others
    }
    assert len({s["metadata"]["name"] for s in slices}) == 3


def test_named_port_must_match_protocol() -> None:
    svc = service(selector=APP, ports=[{"port": 53, "targetPort": "dns", "protocol": "UDP"}])
    pods = [
        pod(
            "a",
            labels=APP,
            ip="10.244.1.2",
            ready=True,
            ports=[{"name": "dns", "containerPort": 5353}],
        )
    ]
    (slice_,) = desired_slices(svc, pods)
    assert slice_["endpoints"] == []  # TCP port named dns does not serve a UDP Service port


def test_no_endpoints_keeps_a_placeholder_slice() -> None:
    (slice_,) = desired_slices(service(selector=APP), [])
    assert slice_["endpoints"] == []
    assert "ports" not in slice_
    EndpointSlice.model_validate(slice_)


def test_selectorless_service_gets_no_managed_slices() -> None:
    pods = [pod("a", labels=APP, ip="10.244.1.2", ready=True)]
    assert desired_slices(service(selector=None), pods) == []
    assert desired_slices(service(selector={}), pods) == []


def test_headless_service_gets_slices_per_family() -> None:
    svc = service(selector=APP, cluster_ip="None", ports=[])
    pods = [
        pod("a", labels=APP, ips=["10.244.1.2", "fd00::2"], ready=True),
        pod("b", labels=APP, ip="10.244.1.3", ready=True),
    ]
    slices = desired_slices(svc, pods)
    assert {
        s["addressType"]: sorted(e["targetRef"]["name"] for e in s["endpoints"]) for s in slices
    } == {
        "IPv4": ["a", "b"],
        "IPv6": ["a"],
    }
    for s in slices:
        assert "ports" not in s
        assert s["metadata"]["labels"]["service.kubernetes.io/headless"] == ""


def test_clusterip_service_takes_its_own_family_only() -> None:
    svc = service(selector=APP)
    pods = [pod("a", labels=APP, ips=["fd00::2", "10.244.1.2"], ready=True)]
    (slice_,) = desired_slices(svc, pods)
    assert slice_["addressType"] == "IPv4"
    assert slice_["endpoints"][0]["addresses"] == ["10.244.1.2"]


def test_service_labels_are_copied() -> None:
    svc = service(selector=APP, labels={"team": "a"})
    (slice_,) = desired_slices(svc, [])
    assert slice_["metadata"]["labels"]["team"] == "a"


def stored(m: dict[str, Any], rv: str = "7") -> EndpointSlice:
    return EndpointSlice.model_validate({**m, "metadata": {**m["metadata"], "resourceVersion": rv}})


def test_diff_creates_updates_deletes_only_managed() -> None:
    svc = service(selector=APP)
    ready = [pod("a", labels=APP, ip="10.244.1.2", ready=True)]
    now_desired = desired_slices(svc, ready)
    before = desired_slices(svc, [pod("a", labels=APP, ip="10.244.1.2", ready=False)])
    assert before[0]["metadata"]["name"] == now_desired[0]["metadata"]["name"]
    stale_group = desired_slices(
        service(selector=APP, ports=[{"port": 80, "targetPort": 9999}]),
        [pod("z", labels=APP, ip="10.244.1.9", ready=True)],
    )[0]
    user_slice = stored(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-manual",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"},
            },
            "addressType": "IPv4",
            "endpoints": [],
        }
    )
    diff = diff_slices(now_desired, [stored(before[0], "7"), stored(stale_group, "8"), user_slice])
    assert diff.create == []
    (update,) = diff.update
    assert update["metadata"]["resourceVersion"] == "7"  # compare-and-swap on what was read
    assert update["endpoints"][0]["conditions"]["ready"] is True
    assert [s.name for s in diff.delete] == [stale_group["metadata"]["name"]]

    same = diff_slices(now_desired, [stored(now_desired[0])])
    assert same.empty()
    fresh = diff_slices(now_desired, [])
    assert fresh.create == now_desired
