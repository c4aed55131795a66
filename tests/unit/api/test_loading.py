"""Loading from files, directories, multi-document YAML, stdin and `kind: List`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ketch.api import (
    LoadedObject,
    Namespace,
    Pod,
    ResourceError,
    ServiceAccount,
    apply_namespace_default,
    apply_namespace_defaults,
    from_manifest,
    load,
    to_manifest,
)


def sa(name: str, ns: str | None = None) -> str:
    meta = f"{{name: {name}" + (f", namespace: {ns}" if ns else "") + "}"
    return f"apiVersion: v1\nkind: ServiceAccount\nmetadata: {meta}\n"


def names(result_objects: list[LoadedObject]) -> list[tuple[str, str, int]]:
    return [(o.resource.name, o.source, o.doc) for o in result_objects]


def test_multi_document_skips_empty_and_remembers_doc_index(tmp_path: Path) -> None:
    f = tmp_path / "all.yaml"
    f.write_text("---\n" + sa("a") + "---\n---\n# only a comment\n---\n" + sa("b") + "---\n")
    result = load([str(f)])
    # documents 2 and 3 are empty, yet indices count them, as a user counts `---`
    assert names(result.objects) == [("a", str(f), 1), ("b", str(f), 4)]


def test_directory_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(sa("from-b"))
    (tmp_path / "a.yml").write_text(sa("from-a"))
    (tmp_path / "c.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "from-c"}})
    )
    (tmp_path / "notes.txt").write_text("not yaml: [")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.yaml").write_text(sa("from-d"))
    flat = load([str(tmp_path)])
    assert [o.resource.name for o in flat.objects] == ["from-a", "from-b", "from-c"]
    assert flat.objects[0].source == str(tmp_path / "a.yml")
    deep = load([str(tmp_path)], recursive=True)
    assert [o.resource.name for o in deep.objects] == ["from-a", "from-b", "from-c", "from-d"]


def test_stdin() -> None:
    result = load(["-"], stdin=io.StringIO(sa("x") + "---\n" + sa("y")))
    assert names(result.objects) == [("x", "<stdin>", 1), ("y", "<stdin>", 2)]


def test_list_is_expanded_with_item_paths(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - {apiVersion: v1, kind: ServiceAccount, metadata: {name: one}}\n"
        "  - {apiVersion: v1, kind: Namespace, metadata: {name: two}}\n"
    )
    result = load([str(f)])
    assert names(result.objects) == [("one", str(f), 1), ("two", str(f), 1)]
    assert isinstance(result.objects[1].resource, Namespace)

    f.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "  - {apiVersion: v1, kind: ServiceAccount, metadata: {name: ok}}\n"
        "  - {apiVersion: v1, kind: ServiceAccount, metadata: {name: Bad}}\n"
    )
    with pytest.raises(ResourceError) as info:
        load([str(f)])
    assert [p.path for p in info.value.problems] == ["items[1].metadata.name"]


def test_problems_collected_across_sources(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(sa("fine"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(sa("Bad") + "---\n" + sa("also_bad"))
    with pytest.raises(ResourceError) as info:
        load([str(good), str(bad), str(tmp_path / "missing.yaml")])
    assert [(p.source, p.doc, p.path) for p in info.value.problems] == [
        (str(bad), 1, "metadata.name"),
        (str(bad), 2, "metadata.name"),
        (str(tmp_path / "missing.yaml"), 0, ""),
    ]
    assert (
        str(info.value).splitlines()[-1]
        == f"{tmp_path / 'missing.yaml'}: no such file or directory"
    )


def test_empty_input_gives_no_objects() -> None:
    result = load(["-"], stdin=io.StringIO("\n---\n"))
    assert result.objects == []
    assert result.warnings == []


def test_warnings_have_the_same_prefix_format() -> None:
    text = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {istio.io/dataplane-mode: x}}\n"
        "spec: {containers: [{name: c, image: nginx, command: [nginx]}]}\n"
    )
    result = load(["-"], stdin=io.StringIO(text))
    assert [str(w) for w in result.warnings] == [
        '<stdin> doc 1: metadata.labels["istio.io/dataplane-mode"]: istio.io/dataplane-mode: '
        "'x' is stored but means nothing to Ketch: the values are 'ambient' (join the mesh) "
        "and 'none' (opt out)"
    ]


# --- namespaces ---------------------------------------------------------------------------


def test_namespace_defaults_to_default() -> None:
    obj = from_manifest({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}})
    filled = apply_namespace_default(obj)
    assert isinstance(filled, ServiceAccount)
    assert filled.namespace == "default"
    assert to_manifest(filled)["metadata"] == {"name": "a", "namespace": "default"}
    assert obj.metadata.namespace is None  # the input is not modified


def test_explicit_namespace_fills_and_conflicts() -> None:
    result = load(
        ["-"], stdin=io.StringIO(sa("a") + "---\n" + sa("b", "other") + "---\n" + sa("c", "dev"))
    )
    with pytest.raises(ResourceError) as info:
        apply_namespace_defaults(result.objects, "dev")
    assert str(info.value) == (
        "<stdin> doc 2: metadata.namespace: the object's namespace 'other' does not match the "
        "namespace 'dev' given with -n/--namespace; remove one or make them equal"
    )
    filled = apply_namespace_defaults([result.objects[0], result.objects[2]], "dev")
    assert [(o.resource.namespace, o.doc) for o in filled] == [("dev", 1), ("dev", 3)]
    kept = apply_namespace_default(result.objects[1])
    assert kept.resource.namespace == "other"


def test_cluster_scoped_kinds_have_no_namespace() -> None:
    ns = from_manifest(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}}
    )
    cleared = apply_namespace_default(ns, "dev")
    assert cleared.metadata.namespace is None
    assert "namespace" not in to_manifest(cleared)["metadata"]


def test_pod_from_manifest_is_typed() -> None:
    pod = from_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "command": ["true"]}]},
        }
    )
    assert isinstance(pod, Pod)


def test_to_manifest_accepts_loaded_objects_and_models_have_the_method() -> None:
    result = load(["-"], stdin=io.StringIO(sa("a")))
    obj = apply_namespace_default(result.objects[0], "dev")
    expected = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "a", "namespace": "dev"},
    }
    assert to_manifest(obj) == expected
    assert obj.resource.to_manifest() == expected
