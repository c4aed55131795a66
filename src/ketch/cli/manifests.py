"""Reading `-f` files for apply, delete and diff: validated manifests, where each came
from (file and document, so that errors found later, across objects, can name them too),
and the warnings about what Ketch stores but does not act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

import typer

from ketch.api import KINDS, Problem, ResourceError, apply_namespace_defaults, load, to_manifest
from ketch.api.semantics import summarize_unenforced, unenforced
from ketch.cli.common import err, fail
from ketch.control import acceptance, admission
from ketch.control.translate.policy import policy_warnings
from ketch.store import Manifest, ObjectKey, Store

FileOpt = Annotated[
    list[str] | None,
    typer.Option("--filename", "-f", help="File, directory or '-' (stdin); may be repeated."),
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-R", help="Descend into directories given with -f.")
]


@dataclass
class Loaded:
    manifests: list[Manifest]
    origin: dict[ObjectKey, tuple[str, int]] = field(default_factory=dict)  # -> (file, doc)
    sources: list[str] = field(default_factory=list)

    def where(self, key: ObjectKey) -> tuple[str, int]:
        return self.origin.get(key, ("", 0))


def object_name(kind: str, name: str) -> str:
    info = KINDS.get(kind)
    return f"{info.singular if info else kind.lower()}/{name}"


def load_manifests(
    files: Sequence[str], recursive: bool, namespace: str | None, *, warn: bool = True
) -> Loaded:
    """Load and validate; print per-object warnings and one line per kind of field stored
    but not enforced (`warn`)."""
    result = load(list(files), recursive=recursive)
    objects = apply_namespace_defaults(result.objects, namespace)
    if warn:
        warnings = [str(w) for w in result.warnings]
        for obj in result.objects:  # what the node proxy will not enforce as written
            warnings += [
                str(Problem(obj.source, obj.doc, at, msg))
                for at, msg in policy_warnings(obj.resource)
            ]
        warnings += summarize_unenforced(
            (object_name(o.resource.kind, o.resource.name), u)
            for o in objects
            for u in unenforced(o.resource)
        )
        for warning in warnings:
            err.print(f"Warning: {warning}", markup=False)
    manifests = [to_manifest(obj) for obj in objects]
    if not manifests:
        fail(f"no objects passed to apply (read {', '.join(files)})")
    origin = {ObjectKey.of(m): (o.source, o.doc) for m, o in zip(manifests, objects, strict=True)}
    return Loaded(manifests, origin, list(files))


def admission_error(loaded: Loaded, e: admission.AdmissionError) -> ResourceError:
    """An admission refusal as a problem naming the file and document, like field errors."""
    if e.key is None:
        return ResourceError([Problem("", 0, "", str(e))])
    source, doc = loaded.where(e.key)
    if not source:
        return ResourceError([Problem("", 0, e.path, f"{e.key}: {e.reason}")])
    return ResourceError([Problem(source, doc, e.path, e.reason)])


def acceptance_warnings(store: Store, loaded: Loaded) -> list[str]:
    """`Warning:` lines for applied objects nothing will act on (no waypoint, HPA...)."""
    ctx = acceptance.Context()
    for kind in acceptance.CONTEXT_KINDS:
        for m in store.list(kind).items:
            ctx.add(m)
    for m in loaded.manifests:
        ctx.add(m)
    lines = []
    for m in loaded.manifests:
        verdict = acceptance.accepted(m, ctx)
        if verdict is None or verdict.accepted or _warned_on_load(m):
            continue
        key = ObjectKey.of(m)
        source, doc = loaded.where(key)
        where = f"{source} doc {doc}: " if source else ""
        lines.append(
            f"{where}{object_name(key.kind, key.name)} is stored but not enforced "
            f"({verdict.reason}): {verdict.message}"
        )
    return lines


def _warned_on_load(m: Manifest) -> bool:
    """Covered by a load warning already: HPAs (the unenforced-field summary) and
    RequestAuthentications without targetRefs (`ketch.api.semantics`)."""
    if m.get("kind") == "HorizontalPodAutoscaler":
        return True
    spec = m.get("spec") or {}
    return m.get("kind") == "RequestAuthentication" and not (
        spec.get("targetRef") or spec.get("targetRefs")
    )
