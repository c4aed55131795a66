"""Warnings about objects Ketch stores but does not act on as written (policy warnings are
tested with the translation, tests/unit/control/test_translate_policy.py)."""

from __future__ import annotations

import yaml

from ketch.api import from_manifest, warnings_for


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
    assert warnings_for(from_manifest(manifest)) == [
        (
            "spec.template.spec.containers[1].image",
            "image 'i' is ignored: Ketch runs `command`/`args` as a process in the pod's network "
            "namespace and cannot pull images",
        )
    ]
