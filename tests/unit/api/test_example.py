"""The example a new user applies loads cleanly and round-trips."""

from __future__ import annotations

from pathlib import Path

import yaml

from ketch.api import Gateway, HTTPRoute, Namespace, load, to_manifest, wellknown

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "bookinfo.yaml"


def test_bookinfo_loads_without_errors_or_warnings() -> None:
    result = load([str(EXAMPLE)])
    assert result.warnings == []
    kinds = [o.resource.kind for o in result.objects]
    assert kinds[0] == "Namespace"
    for kind in ("ServiceAccount", "Deployment", "Service", "AuthorizationPolicy"):
        assert kind in kinds
    ns = result.objects[0].resource
    assert isinstance(ns, Namespace)
    assert ns.labels[wellknown.DATAPLANE_MODE] == "ambient"
    waypoint = next(o.resource for o in result.objects if isinstance(o.resource, Gateway))
    assert waypoint.is_waypoint
    route = next(o.resource for o in result.objects if isinstance(o.resource, HTTPRoute))
    assert route.spec.parent_refs is not None
    assert route.spec.parent_refs[0].is_service


def test_bookinfo_round_trips() -> None:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d is not None]
    result = load([str(EXAMPLE)])
    assert [to_manifest(o.resource) for o in result.objects] == docs
