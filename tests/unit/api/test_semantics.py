"""Warnings about objects Ketch stores but does not act on as written (policy warnings are
tested with the translation, tests/unit/control/test_translate_policy.py)."""

from __future__ import annotations

import pytest
import yaml

from ketch.api import from_manifest, warnings_for
from ketch.api.semantics import Unenforced, summarize_unenforced, unenforced


def test_request_authentication_with_selector() -> None:
    manifest = yaml.safe_load(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\n"
        "spec: {selector: {matchLabels: {app: a}}, jwtRules: [{issuer: x}]}\n"
    )
    [(path, message)] = warnings_for(from_manifest(manifest))
    assert path == "spec"
    assert message.startswith("RequestAuthentication is enforced only by a waypoint")


def test_deployment_image_is_ignored() -> None:
    manifest = yaml.safe_load(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, "
        "spec: {containers: [{name: c, command: [x]}, {name: e, image: i, command: [y]}]}}}\n"
    )
    resource = from_manifest(manifest)
    assert warnings_for(resource) == []
    assert unenforced(resource) == [Unenforced("image", "spec.template.spec.containers[1].image")]
    assert summarize_unenforced([("deployment/d", u) for u in unenforced(resource)]) == [
        "image and imagePullPolicy are ignored: Ketch runs `command`/`args` as a process in "
        "the pod's network namespace and cannot pull images (in 1 object: deployment/d)"
    ]


def test_unenforced_fields_are_named_once_per_kind_with_a_count() -> None:
    def pod(name: str, spec: str) -> tuple[str, list[Unenforced]]:
        text = f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        return f"pod/{name}", unenforced(from_manifest(yaml.safe_load(text)))

    found = [
        pod(f"p{i}", "{containers: [{name: c, command: [x], resources: {limits: {cpu: '1'}}}]}")
        for i in range(5)
    ]
    found.append(
        pod("q", "{tolerations: [{operator: Exists}], containers: [{name: c, command: [x]}]}")
    )
    lines = summarize_unenforced((who, u) for who, us in found for u in us)
    assert lines == [
        "resources (cpu/memory requests and limits) are stored but not enforced by Ketch's "
        "local runtime (in 5 objects: pod/p0, pod/p1, pod/p2, ...)",
        "scheduling constraints (tolerations, affinity, topologySpreadConstraints, priority) "
        "are stored but not used: Ketch places pods by nodeName and nodeSelector only "
        "(in 1 object: pod/q)",
    ]


def test_service_and_hpa_fields_not_honoured() -> None:
    svc = yaml.safe_load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1}], "
        "sessionAffinity: ClientIP, internalTrafficPolicy: Local, ipFamilyPolicy: "
        "RequireDualStack, ipFamilies: [IPv4, IPv6]}\n"
    )
    assert [u.feature for u in unenforced(from_manifest(svc))] == [
        "sessionAffinity",
        "internalTrafficPolicy",
        "ipFamilies",
    ]
    quiet = yaml.safe_load(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 1}], "
        "sessionAffinity: None, internalTrafficPolicy: Cluster, ipFamilyPolicy: SingleStack}\n"
    )
    assert unenforced(from_manifest(quiet)) == []


def _ports_pod(containers: str) -> str:
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {{containers: [{containers}]}}\n"
    )


def test_duplicate_container_ports_warn_as_kubernetes_does() -> None:
    # Kubernetes accepts them (refusing would break existing manifests) and warns
    text = _ports_pod(
        "{name: a, command: [x], ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]},"
        "{name: b, command: [y], ports: [{containerPort: 81}, {containerPort: 80}]}"
    )
    [(path, message)] = warnings_for(from_manifest(yaml.safe_load(text)))
    assert path == "spec.containers[1].ports[1]"
    assert message.startswith(
        "duplicate port definition with spec.containers[0].ports[0] (containerPort 80/TCP)"
    )


def test_duplicate_ports_in_one_container_and_in_a_template() -> None:
    manifest = yaml.safe_load(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, "
        "spec: {containers: [{name: c, command: [x], ports: [{containerPort: 8080}, "
        "{containerPort: 8080}, {containerPort: 8080}]}]}}}\n"
    )
    assert [p for p, _ in warnings_for(from_manifest(manifest))] == [
        "spec.template.spec.containers[0].ports[1]",
        "spec.template.spec.containers[0].ports[2]",
    ]


def test_distinct_ports_do_not_warn() -> None:
    text = _ports_pod(
        "{name: a, command: [x], ports: [{containerPort: 80}, {containerPort: 80, protocol: UDP}]},"
        "{name: b, command: [y], ports: [{containerPort: 81}]}"
    )
    assert warnings_for(from_manifest(yaml.safe_load(text))) == []


def test_hostname_is_applied_subdomain_is_not() -> None:
    def kinds(spec: str) -> list[Unenforced]:
        text = f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec: {spec}\n"
        return unenforced(from_manifest(yaml.safe_load(text)))

    assert kinds("{hostname: front, containers: [{name: a, command: [x]}]}") == []
    assert kinds("{subdomain: s, containers: [{name: a, command: [x]}]}") == [
        Unenforced("dns", "spec.subdomain")
    ]


def test_duplicate_host_ports_are_refused_as_kubernetes_does() -> None:
    from ketch.api.errors import ResourceError
    from ketch.api.loader import load_text

    text = _ports_pod(
        "{name: a, command: [x], ports: [{containerPort: 80, hostPort: 8080}]},"
        "{name: b, command: [y], ports: [{containerPort: 81, hostPort: 8080}]}"
    )
    with pytest.raises(ResourceError) as info:
        load_text(text, "p.yaml")
    assert "spec.containers[1].ports[0].hostPort: duplicate hostPort 8080/TCP" in str(info.value)
    assert "spec.containers[0].ports[0] has it already" in str(info.value)
    # another protocol or another host IP is another port
    for other in (
        "{containerPort: 81, hostPort: 8080, protocol: UDP}",
        "{containerPort: 81, hostPort: 8080, hostIP: 10.0.0.1}",
    ):
        ok = _ports_pod(
            "{name: a, command: [x], ports: [{containerPort: 80, hostPort: 8080}]},"
            f"{{name: b, command: [y], ports: [{other}]}}"
        )
        assert load_text(ok, "p.yaml").objects
