"""Turning files, directories and stdin into validated resources, and back into manifests.

    sources -> (name, text) -> YAML documents -> manifest dicts -> `from_manifest` -> Resource

Every problem found on the way becomes a `Problem` with file, 1-based document index and
field path (YAML names, `[i]` for list items); a load collects all of them and raises one
`ResourceError`. Pydantic's errors are translated here, at the edge, so no user mistake
surfaces as a traceback. `warnings_for` adds Istio-semantics warnings to valid objects.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar, overload

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ketch.api.base import KETCH_ERROR, Resource, describe
from ketch.api.errors import Problem, ResourceError
from ketch.api.registry import KINDS, foreign_kind_message, kind_for_manifest, lookup_kind
from ketch.api.semantics import warnings_for

STDIN = "-"
STDIN_NAME = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class LoadedObject:
    resource: Resource
    source: str
    doc: int  # 1-based document index within `source`


@dataclass(frozen=True)
class LoadResult:
    objects: list[LoadedObject] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def resources(self) -> list[Resource]:
        return [o.resource for o in self.objects]


# --- YAML --------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys, as Kubernetes' strict decoding does
    (PyYAML silently keeps the last one, hiding e.g. a second `metadata:`)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, typing.Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _yaml_problem(source: str, doc: int, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML syntax error: {what}" + (f" ({context})" if context else "")
    if mark is not None:
        return Problem(source, doc, "", message, line=mark.line + 1, column=mark.column + 1)
    return Problem(source, doc, "", message)


def parse_documents(text: str, source: str) -> tuple[list[tuple[int, Any]], list[Problem]]:
    """(1-based index, document) pairs, empty documents skipped, plus any syntax problem
    (parsing stops at the first one; documents before it are kept)."""
    docs: list[tuple[int, Any]] = []
    index = 0
    try:
        for index, data in enumerate(yaml.load_all(text, Loader=_StrictLoader), start=1):
            if data is not None:
                docs.append((index, data))
    except yaml.YAMLError as exc:
        return docs, [_yaml_problem(source, index + 1, exc)]
    return docs, []


# --- manifests <-> resources ---------------------------------------------------------------


def _known_kinds() -> str:
    return ", ".join(f"{i.kind} ({i.api_version})" for i in KINDS.values())


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def from_manifest(
    manifest: Mapping[str, Any], *, source: str = "<manifest>", doc: int = 1, path: str = ""
) -> Resource:
    """Validate one manifest dict into its typed Resource, or raise ResourceError listing
    every problem (`path` prefixes field paths, e.g. "items[2]" inside a List)."""

    def problem(at: str, message: str) -> Problem:
        return Problem(source, doc, _join(path, at), message)

    if not isinstance(manifest, Mapping):
        raise ResourceError(
            [
                problem(
                    "",
                    f"expected a mapping with apiVersion, kind, metadata, got {describe(manifest)}",
                )
            ]
        )
    kind = manifest.get("kind")
    api_version = manifest.get("apiVersion")
    problems: list[Problem] = []
    info = None
    if kind is None:
        problems.append(
            problem("kind", f"required field is missing; known kinds: {_known_kinds()}")
        )
    elif not isinstance(kind, str):
        problems.append(problem("kind", f"expected string, got {describe(kind)}"))
    else:
        info = kind_for_manifest(kind)
        foreign = foreign_kind_message(api_version, kind)
        if foreign is not None and (
            info is None or not info.accepts(api_version if isinstance(api_version, str) else "")
        ):
            raise ResourceError([problem("kind", foreign)])
        if info is None:
            near = lookup_kind(kind)
            hint = f" (did you mean {near.kind!r}?)" if near else ""
            problems.append(
                problem("kind", f"unknown kind {kind!r}{hint}; known kinds: {_known_kinds()}")
            )
    if api_version is None:
        expected = f"; expected {' or '.join(info.api_versions)}" if info else ""
        problems.append(problem("apiVersion", f"required field is missing{expected}"))
    elif not isinstance(api_version, str):
        problems.append(problem("apiVersion", f"expected string, got {describe(api_version)}"))
    elif info is not None and not info.accepts(api_version):
        problems.append(
            problem(
                "apiVersion",
                f"unknown apiVersion {api_version!r} for kind {info.kind}; expected "
                f"{' or '.join(info.api_versions)}",
            )
        )
    if problems or info is None:
        raise ResourceError(problems)
    try:
        return info.model.model_validate(dict(manifest), by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ResourceError(
            [problem(at, msg) for at, msg in translate_errors(exc, info.model)]
        ) from None


def to_manifest(resource: Resource | LoadedObject) -> dict[str, Any]:
    """The wire form: YAML/JSON names, only fields that were set and not None, so what a
    user wrote comes back unchanged. apiVersion and kind are always present."""
    if isinstance(resource, LoadedObject):
        resource = resource.resource
    return resource.to_manifest()


# --- pydantic errors -> problems ---------------------------------------------------------


def render_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out = f"{out}.{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def _unwrap(tp: Any) -> list[Any]:
    """Candidate concrete types of an annotation (Annotated, Optional and unions opened)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_unwrap(arg))
        return out
    return [tp]


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that holds the last element of `loc`, following aliases."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            origin = typing.get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
                for name, info in tp.model_fields.items():
                    if part in (info.alias, name):
                        nxt.extend(_unwrap(info.annotation))
            elif origin is list and isinstance(part, int):
                nxt.extend(_unwrap(typing.get_args(tp)[0]))
            elif origin is dict:
                nxt.extend(_unwrap(typing.get_args(tp)[1]))
        current = nxt
    for tp in current:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _message(err: ErrorDetails, model: type[BaseModel]) -> str:
    kind = err["type"]
    got = describe(err.get("input"))
    ctx = err.get("ctx") or {}
    if kind == KETCH_ERROR:
        return str(ctx["detail"])
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        loc = err["loc"]
        holder = _model_at(model, loc[:-1])
        if holder is None:
            return "unknown field"
        known = _field_names(holder)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown field{hint}; known fields: {', '.join(known)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected integer, got {got}"
    if kind in ("string_type", "string_sub_type"):
        return f"expected string, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected boolean (true or false), got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "dataclass_type"):
        return f"expected a mapping, got {got}"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {got}"
    if kind == "none_required":
        return f"expected nothing here (this kind has no such section), got {got}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    msg = str(err["msg"])
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def translate_errors(exc: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(path, message) for each pydantic error, paths in YAML names with [i] indices."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc: list[int | str] = list(err["loc"])
        ctx = err.get("ctx") or {}
        subpath = str(ctx.get("subpath") or "") if err["type"] == KETCH_ERROR else ""
        item = (_join(render_path(loc), subpath), _message(err, model))
        if item not in out:
            out.append(item)
    return out


# --- loading -------------------------------------------------------------------------------


def _expand(
    sources: Sequence[str], recursive: bool
) -> Iterator[tuple[str, Path | None, Problem | None]]:
    for src in sources:
        if src == STDIN:
            yield STDIN_NAME, None, None
            continue
        path = Path(src)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(
                p
                for p in path.glob(pattern)
                if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES
            )
            for f in files:
                yield str(f), f, None
        elif path.exists():
            yield src, path, None
        else:
            yield src, None, Problem(src, 0, "", "no such file or directory")


def _manifests(data: Any, source: str, doc: int) -> Iterator[tuple[str, Any]]:
    """(path prefix, manifest) for a document; `kind: List` expands to its items."""
    if isinstance(data, Mapping) and data.get("kind") == "List":
        items = data.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            raise ResourceError(
                [Problem(source, doc, "items", f"expected a list, got {describe(items)}")]
            )
        for i, item in enumerate(items):
            yield f"items[{i}]", item
    else:
        yield "", data


def load_text(text: str, source: str) -> LoadResult:
    """Load every object of one YAML/JSON text; see `load`."""
    objects: list[LoadedObject] = []
    warnings: list[Problem] = []
    docs, problems = parse_documents(text, source)
    for doc, data in docs:
        try:
            for prefix, manifest in _manifests(data, source, doc):
                try:
                    resource = from_manifest(manifest, source=source, doc=doc, path=prefix)
                except ResourceError as exc:
                    problems.extend(exc.problems)
                    continue
                objects.append(LoadedObject(resource, source, doc))
                warnings.extend(
                    Problem(source, doc, _join(prefix, at), msg)
                    for at, msg in warnings_for(resource)
                )
        except ResourceError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ResourceError(problems)
    return LoadResult(objects, warnings)


def load(
    sources: Sequence[str], *, recursive: bool = False, stdin: TextIO | None = None
) -> LoadResult:
    """Load resources from files, directories (*.yaml, *.yml, *.json, sorted; `recursive`
    descends) and "-" (stdin, or the `stdin` stream given). Raises ResourceError with every
    problem found across all sources; returns objects in input order plus warnings."""
    objects: list[LoadedObject] = []
    warnings: list[Problem] = []
    problems: list[Problem] = []
    for name, path, missing in _expand(sources, recursive):
        if missing is not None:
            problems.append(missing)
            continue
        try:
            if path is None:
                text = (stdin if stdin is not None else sys.stdin).read()
            else:
                text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, 0, "", f"cannot read: {exc}"))
            continue
        try:
            result = load_text(text, name)
        except ResourceError as exc:
            problems.extend(exc.problems)
            continue
        objects.extend(result.objects)
        warnings.extend(result.warnings)
    if problems:
        raise ResourceError(problems)
    return LoadResult(objects, warnings)


# --- namespaces ----------------------------------------------------------------------------

T = TypeVar("T", Resource, LoadedObject)


def _with_namespace(resource: Resource, namespace: str | None) -> Resource:
    meta = resource.metadata.model_copy(update={"namespace": namespace})
    if namespace is None:
        meta.model_fields_set.discard("namespace")
    return resource.model_copy(update={"metadata": meta})


@overload
def apply_namespace_default(obj: Resource, namespace: str | None = None) -> Resource: ...
@overload
def apply_namespace_default(obj: LoadedObject, namespace: str | None = None) -> LoadedObject: ...
def apply_namespace_default(
    obj: Resource | LoadedObject, namespace: str | None = None
) -> Resource | LoadedObject:
    """Fill in metadata.namespace as kubectl does: the explicit `namespace` (the CLI's -n)
    or "default" for namespaced kinds; cleared for cluster-scoped kinds. A document whose
    namespace differs from an explicit -n is an error. Returns a copy."""
    if isinstance(obj, LoadedObject):
        resource, source, doc = obj.resource, obj.source, obj.doc
    else:
        resource, source, doc = obj, "", 0
    info = KINDS[resource.kind]
    if not info.namespaced:
        updated = _with_namespace(resource, None) if resource.metadata.namespace else resource
    else:
        current = resource.metadata.namespace
        if current and namespace and current != namespace:
            raise ResourceError(
                [
                    Problem(
                        source,
                        doc,
                        "metadata.namespace",
                        f"the object's namespace {current!r} does not match the namespace "
                        f"{namespace!r} given with -n/--namespace; remove one or make them equal",
                    )
                ]
            )
        updated = resource if current else _with_namespace(resource, namespace or DEFAULT_NAMESPACE)
    if isinstance(obj, LoadedObject):
        return LoadedObject(updated, source, doc)
    return updated


def apply_namespace_defaults(
    objects: Iterable[LoadedObject], namespace: str | None = None
) -> list[LoadedObject]:
    """`apply_namespace_default` for many objects, collecting every conflict into one error."""
    out: list[LoadedObject] = []
    problems: list[Problem] = []
    for obj in objects:
        try:
            out.append(apply_namespace_default(obj, namespace))
        except ResourceError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ResourceError(problems)
    return out
