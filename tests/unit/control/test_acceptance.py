"""`ketch.control.acceptance`: the Accepted condition computed from the store, as a table."""

from __future__ import annotations

from typing import Any

import pytest

from ketch.control.acceptance import Acceptance, accepted, index


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def svc(name: str, **labels: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "shop", "labels": labels}}


def gateway(
    name: str, cls: str = "istio-waypoint", waypoint_for: str | None = None
) -> dict[str, Any]:
    labels = {"istio.io/waypoint-for": waypoint_for} if waypoint_for else {}
    return {
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"gatewayClassName": cls},
    }


def route(*parents: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "shop"},
        "spec": {"parentRefs": list(parents)},
    }


SVC_PARENT = {"group": "", "kind": "Service", "name": "web"}
GW_PARENT = {"name": "wp"}
USE = "istio.io/use-waypoint"

CASES = [
    (
        "service with waypoint",
        [svc("web", **{USE: "wp"}), gateway("wp")],
        route(SVC_PARENT),
        Acceptance(True, "Accepted", "programmed into the parents' waypoints"),
    ),
    (
        "namespace names the waypoint",
        [ns("shop", **{USE: "wp"}), svc("web"), gateway("wp")],
        route(SVC_PARENT),
        Acceptance(True, "Accepted", "programmed into the parents' waypoints"),
    ),
    (
        "service opts out",
        [ns("shop", **{USE: "wp"}), svc("web", **{USE: "none"}), gateway("wp")],
        route(SVC_PARENT),
        Acceptance(
            False,
            "NoWaypoint",
            "Service shop/web uses no waypoint (label it, or its namespace, istio.io/use-waypoint="
            "<waypoint>): no waypoint programs this route",
        ),
    ),
    (
        "waypoint missing",
        [svc("web", **{USE: "wp"})],
        route(SVC_PARENT),
        Acceptance(
            False,
            "NoWaypoint",
            "waypoint Gateway shop/wp does not exist: no waypoint programs this route",
        ),
    ),
    (
        "waypoint for workloads only",
        [svc("web", **{USE: "wp"}), gateway("wp", waypoint_for="workload")],
        route(SVC_PARENT),
        Acceptance(
            False,
            "NoWaypoint",
            "waypoint shop/wp takes no service traffic (istio.io/waypoint-for: workload; use service "
            "or all): no waypoint programs this route",
        ),
    ),
    (
        "service missing",
        [],
        route(SVC_PARENT),
        Acceptance(
            False, "NoWaypoint", "Service shop/web does not exist: no waypoint programs this route"
        ),
    ),
    (
        "gateway parent not a waypoint",
        [gateway("wp", cls="istio")],
        route(GW_PARENT),
        Acceptance(
            False,
            "NoWaypoint",
            "Gateway shop/wp is not a waypoint (gatewayClassName "
            "istio-waypoint); Ketch programs waypoints only: no waypoint programs this route",
        ),
    ),
    (
        "gateway parent is a waypoint",
        [gateway("wp")],
        route(GW_PARENT),
        Acceptance(True, "Accepted", "programmed into the parents' waypoints"),
    ),
    (
        "no parents",
        [],
        route(),
        Acceptance(False, "NoParents", "the route has no parentRefs; nothing uses it"),
    ),
    (
        "L4 policy",
        [],
        {"kind": "AuthorizationPolicy", "metadata": {"name": "p"}, "spec": {}},
        Acceptance(True, "Accepted", "enforced by the node proxies (L4)"),
    ),
    (
        "policy on a missing waypoint",
        [],
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "targetRefs": [
                    {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "wp"}
                ]
            },
        },
        Acceptance(
            False,
            "NoWaypoint",
            "waypoint Gateway shop/wp does not exist: no waypoint enforces this policy",
        ),
    ),
    (
        "policy on a ServiceEntry",
        [],
        {
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "targetRef": {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "x"}
            },
        },
        Acceptance(
            False,
            "NoWaypoint",
            "ServiceEntry x is not a target Ketch implements (a "
            "Service or a waypoint Gateway): no waypoint enforces this policy",
        ),
    ),
    (
        "jwt without targets",
        [],
        {
            "kind": "RequestAuthentication",
            "metadata": {"name": "j"},
            "spec": {"jwtRules": [{"issuer": "x"}]},
        },
        Acceptance(
            False,
            "NoWaypoint",
            "only a waypoint checks JWTs: without targetRefs this has no effect in ambient mode",
        ),
    ),
    (
        "hpa",
        [],
        {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"}},
        Acceptance(
            False,
            "NotImplemented",
            "nothing acts on a HorizontalPodAutoscaler in Ketch "
            "(no metrics pipeline); set the Deployment's replicas instead",
        ),
    ),
]


@pytest.mark.parametrize(("name", "store", "obj", "expected"), CASES, ids=[c[0] for c in CASES])
def test_accepted(
    name: str, store: list[dict[str, Any]], obj: dict[str, Any], expected: Acceptance
) -> None:
    assert accepted(obj, index(store)) == expected


def test_kinds_without_the_condition() -> None:
    assert accepted({"kind": "Service", "metadata": {"name": "s"}}, index([])) is None


def test_condition_reads_like_gateway_api() -> None:
    a = Acceptance(False, "NoWaypoint", "m")
    assert a.condition() == {
        "type": "Accepted",
        "status": "False",
        "reason": "NoWaypoint",
        "message": "m",
    }
