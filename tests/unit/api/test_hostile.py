"""Any input gives a typed object or a ResourceError: never another exception (no tracebacks
for user mistakes)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.api import KINDS, Resource, ResourceError, from_manifest, load_text

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.text(max_size=8)
    | st.floats(allow_nan=False)
)
FIELD_WORDS = [
    "name", "spec", "metadata", "containers", "command", "ports", "containerPort", "selector",
    "matchLabels", "rules", "from", "to", "source", "operation", "ports", "listeners",
    "labels", "targetRefs", "mtls", "mode", "portLevelMtls", "jwtRules", "parentRefs",
    "backendRefs", "filters", "type", "port", "template", "when", "key", "values",
]  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_WORDS) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    metadata=values,
    spec=values,
)
def test_from_manifest_never_crashes(kind: str, metadata: Any, spec: Any) -> None:
    manifest = {
        "apiVersion": KINDS[kind].api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }
    problems = []
    try:
        resource = from_manifest(manifest)
    except ResourceError as exc:
        problems = exc.problems
    else:
        assert isinstance(resource, Resource)
        return
    assert problems
    assert all(str(p).startswith("<manifest> doc 1: ") for p in problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_load_text_never_crashes(text: str) -> None:
    problems = None
    try:
        load_text(text, "x.yaml")
    except ResourceError as exc:
        problems = exc.problems
    assert problems is None or len(problems) > 0
