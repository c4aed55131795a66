"""`ketch get`: list or show objects, in kubectl's output formats, optionally watching.

Formats: the table (default; `wide` adds columns), `yaml`/`json` (the object for one named
object, else a `List` carrying the list's revision), `name`, `jsonpath=TEMPLATE`,
`custom-columns=HEADER:EXPR,...`; `--sort-by EXPR`, `--no-headers`, `--show-labels`.
`-w` prints the listing, then every change after the list's revision (the store's watch:
nothing missed, nothing repeated) until interrupted or `--request-timeout`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from ketch.api import KINDS, KindInfo, ResourceError, resolve_kind
from ketch.cli import jsonpath, output
from ketch.cli.common import err, fail, open_store, out, usage
from ketch.cli.mesh_status import mesh_status, namespace_labels
from ketch.control import acceptance
from ketch.labels import SelectorError, parse_selector
from ketch.store import Manifest, NotFoundError, Store, WatchEvent

NsOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
]
OUTPUT_HELP = "table (default), wide, yaml, json, name, jsonpath=TEMPLATE, custom-columns=SPEC."


def kind_of(word: str) -> KindInfo:
    try:
        return resolve_kind(word)
    except ResourceError as e:
        fail("; ".join(p.message for p in e.problems))


def split_kinds(words: str) -> list[KindInfo]:
    if words.lower() == "all":
        # kubectl's "all" means the namespaced workload kinds; Ketch adds its mesh kinds.
        return [k for k in KINDS.values() if k.namespaced]
    return [kind_of(w) for w in words.split(",") if w]


def namespace_for(info: KindInfo, namespace: str | None) -> str:
    return (namespace or "default") if info.namespaced else ""


def check_selector(selector: str | None) -> None:
    if selector:
        try:
            parse_selector(selector)
        except SelectorError as e:
            usage(f"-l {selector!r}: {e}")


def targets(
    kind: str | None, names: Sequence[str]
) -> tuple[str, list[str]] | list[tuple[str, str]]:
    """`KIND NAME...` or kubectl's `TYPE/NAME ...` form (returned as (type, name) pairs)."""
    words = ([kind] if kind else []) + list(names)
    if words and all("/" in w for w in words):
        pairs = []
        for w in words:
            t, _, n = w.partition("/")
            if not t or not n:
                usage(f"{w!r}: expected TYPE/NAME, e.g. svc/web")
            pairs.append((t, n))
        return pairs
    if any("/" in w for w in names):
        usage("give either KIND NAME... or TYPE/NAME..., not both")
    return (kind or "", list(names))


def one_target(kind: str, name: str | None, verb: str) -> tuple[str, str]:
    """(kind, name) of the one object a verb acts on: `KIND NAME` or `TYPE/NAME`."""
    parsed = targets(kind, [name] if name else [])
    if isinstance(parsed, list):
        if len(parsed) != 1:
            usage(f"{verb} takes one object")
        return parsed[0]
    if not name:
        usage(f"{verb} {kind}: name the object, e.g. ketch {verb} {kind} NAME")
    return kind, name


# --- output formats --------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    kind: str  # table, wide, yaml, json, name, jsonpath, custom-columns
    template: jsonpath.Template | None = None
    columns: tuple[tuple[str, jsonpath.Template], ...] = ()


def parse_format(spec: str) -> Format:
    name, eq, arg = spec.partition("=")
    try:
        if name == "jsonpath" and eq:
            return Format("jsonpath", template=jsonpath.compile(arg))
        if name == "custom-columns" and eq:
            cols = []
            for part in arg.split(","):
                header, colon, expr = part.partition(":")
                if not colon or not header or not expr:
                    usage(
                        f"-o custom-columns: {part!r}: expected HEADER:EXPRESSION, e.g. "
                        "NAME:.metadata.name"
                    )
                cols.append((header, jsonpath.compile(jsonpath.relaxed(expr))))
            return Format("custom-columns", columns=tuple(cols))
    except jsonpath.JSONPathError as e:
        usage(str(e))
    if spec in ("table", "wide", "yaml", "json", "name"):
        return Format(spec)
    usage(f"-o {spec!r}: expected one of {OUTPUT_HELP}")


def sort_key(template: jsonpath.Template) -> Callable[[Manifest], tuple[int, Any]]:
    def key(m: Manifest) -> tuple[int, Any]:
        values = [v for vs in template.results(output.clean_for_output(m)) for v in vs]
        if not values:
            return (0, "")
        v = values[0]
        if isinstance(v, bool):
            return (1, int(v))
        if isinstance(v, int | float):
            return (1, v)
        return (2, jsonpath.to_text(v))

    return key


def custom_columns(fmt: Format, items: Sequence[Manifest], no_headers: bool) -> str:
    rows = []
    for m in items:
        clean = output.clean_for_output(m)
        row = []
        for _, template in fmt.columns:
            values = [v for vs in template.results(clean) for v in vs]
            row.append(",".join(jsonpath.to_text(v) for v in values) if values else "<none>")
        rows.append(row)
    return output.format_table([h for h, _ in fmt.columns], rows, no_headers=no_headers)


def acceptance_columns(ctx: acceptance.Context, *, wide: bool = False) -> list[output.Column]:
    def status(m: Manifest) -> str:
        a = acceptance.accepted(m, ctx)
        return a.status if a else "<none>"

    def reason(m: Manifest) -> str:
        a = acceptance.accepted(m, ctx)
        return a.reason if a else "<none>"

    def message(m: Manifest) -> str:
        a = acceptance.accepted(m, ctx)
        return a.message if a else "<none>"

    columns: list[output.Column] = [("ACCEPTED", status), ("REASON", reason)]
    return [*columns, ("MESSAGE", message)] if wide else columns


def context(store: Store) -> acceptance.Context:
    ctx = acceptance.Context()
    for kind in acceptance.CONTEXT_KINDS:
        for m in store.list(kind).items:
            ctx.add(m)
    return ctx


def _print_document(
    fmt: Format, items: Sequence[Manifest], as_list: bool, revision: int | None
) -> None:
    if fmt.kind == "yaml":
        out.file.write(output.to_yaml(items, as_list=as_list, revision=revision))
    elif fmt.kind == "json":
        out.file.write(output.to_json(items, as_list=as_list, revision=revision) + "\n")
    elif fmt.kind == "jsonpath":
        assert fmt.template is not None
        doc = output.as_document(items, as_list=as_list, revision=revision)
        try:
            out.file.write(fmt.template.render(doc))
        except jsonpath.JSONPathError as e:
            fail(str(e))


# --- the command -----------------------------------------------------------------------------


def get(
    kind: Annotated[
        str,
        typer.Argument(
            help="Kind, plural or short name (po, svc, ap, ...), a comma list, 'all', or TYPE/NAME."
        ),
    ],
    names: Annotated[list[str] | None, typer.Argument(help="Object names (default: all).")] = None,
    namespace: NsOpt = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List across all namespaces.")
    ] = False,
    output_fmt: Annotated[str, typer.Option("--output", "-o", help=OUTPUT_HELP)] = "table",
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Label selector, e.g. app=web,tier!=db.")
    ] = None,
    show_labels: Annotated[
        bool, typer.Option("--show-labels", help="Add a LABELS column.")
    ] = False,
    sort_by: Annotated[
        str | None,
        typer.Option("--sort-by", help="Sort by a JSONPath expression, e.g. .metadata.name."),
    ] = None,
    no_headers: Annotated[
        bool, typer.Option("--no-headers", help="Tables without the header line.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="After listing, print every change as it happens.")
    ] = False,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            "--request-timeout", help="With -w: stop after this many seconds (default: never)."
        ),
    ] = None,
) -> None:
    """List objects, or show named ones (kubectl get)."""
    fmt = parse_format(output_fmt)
    check_selector(selector)
    order = None
    if sort_by:
        try:
            order = sort_key(jsonpath.compile(jsonpath.relaxed(sort_by)))
        except jsonpath.JSONPathError as e:
            usage(f"--sort-by: {e}")
    parsed = targets(kind, names or [])
    if isinstance(parsed, list):
        wanted: list[tuple[KindInfo, list[str]]] = []
        for t, n in parsed:
            info = kind_of(t)
            for i, (have, listed_names) in enumerate(wanted):
                if have is info:
                    wanted[i] = (have, [*listed_names, n])
                    break
            else:
                wanted.append((info, [n]))
        named = True
    else:
        infos = split_kinds(parsed[0])
        if parsed[1] and len(infos) > 1:
            usage("names can only be given with a single kind (or use TYPE/NAME)")
        wanted = [(info, parsed[1]) for info in infos]
        named = bool(parsed[1])
    if named and all_namespaces:
        usage("a name cannot be combined with -A: names are looked up in one namespace (-n)")
    if named and selector:
        usage("a name cannot be combined with -l")
    groups: list[tuple[KindInfo, list[Manifest]]] = []
    with open_store() as store:
        revision = store.revision()
        for info, want in wanted:
            ns = None if (all_namespaces or not info.namespaced) else (namespace or "default")
            if want:
                items = []
                for name in want:
                    try:
                        items.append(store.get(info.kind, namespace_for(info, namespace), name))
                    except NotFoundError:
                        fail(
                            f'{info.plural} "{name}" not found'
                            + (f" in namespace {ns}" if ns else "")
                        )
            else:
                listed = store.list(info.kind, ns, selector)
                revision = listed.revision
                items = sorted(
                    listed.items,
                    key=lambda m: (m["metadata"].get("namespace", ""), m["metadata"]["name"]),
                )
            if order is not None:
                items.sort(key=order)
            groups.append((info, items))
        ctx = context(store) if fmt.kind in ("table", "wide") else None
        ns_labels = (
            namespace_labels(store.list("Namespace").items)
            if fmt.kind == "wide" and any(info.kind == "Pod" for info, _ in groups)
            else {}
        )
    everything = [m for _, items in groups for m in items]
    single = named and len(everything) == 1 and len(groups) == 1
    if fmt.kind in ("yaml", "json", "jsonpath"):
        _print_document(fmt, everything, not single, None if single else revision)
    elif fmt.kind == "name":
        for info, items in groups:
            for m in items:
                out.file.write(f"{info.singular}/{m['metadata']['name']}\n")
    elif fmt.kind == "custom-columns":
        if everything:
            out.file.write(custom_columns(fmt, everything, no_headers))
    else:
        _tables(groups, fmt, ctx, all_namespaces, show_labels, no_headers, ns_labels)
    if not everything and not watch and fmt.kind not in ("yaml", "json", "jsonpath"):
        err.print(_nothing_found(groups, all_namespaces, namespace))
    if watch:
        if named:
            usage("-w watches a kind (with -n, -A or -l), not named objects")
        _watch(
            groups, fmt, all_namespaces, namespace, selector, revision, request_timeout, show_labels
        )


def _nothing_found(
    groups: list[tuple[KindInfo, list[Manifest]]], all_ns: bool, ns: str | None
) -> str:
    if all(not info.namespaced for info, _ in groups):
        return "No resources found"
    if all_ns:
        return "No resources found"
    return f"No resources found in {ns or 'default'} namespace."


def _tables(
    groups: list[tuple[KindInfo, list[Manifest]]],
    fmt: Format,
    ctx: acceptance.Context | None,
    all_namespaces: bool,
    show_labels: bool,
    no_headers: bool,
    ns_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    shown = False
    for info, items in groups:
        if not items:
            continue
        if shown:
            out.file.write("\n")
        extra = (
            acceptance_columns(ctx, wide=fmt.kind == "wide")
            if ctx is not None and info.kind in acceptance.KINDS_WITH_ACCEPTANCE
            else []
        )
        output.render_table(
            out,
            info.kind,
            items,
            wide=fmt.kind == "wide",
            with_namespace=all_namespaces and info.namespaced,
            show_labels=show_labels,
            with_kind_prefix=len(groups) > 1,
            plural=info.singular,
            extra=extra,
            no_headers=no_headers,
            wide_extra=_mesh_column(ns_labels or {}) if info.kind == "Pod" else (),
        )
        shown = True


def _mesh_column(ns_labels: Mapping[str, Mapping[str, str]]) -> list[output.Column]:
    """MESH: ambient / pending / none (ketch.cli.mesh_status)."""

    def status(m: Manifest) -> str:
        ns = str(m.get("metadata", {}).get("namespace", "default"))
        return mesh_status(m, ns_labels.get(ns, {}))

    return [("MESH", status)]


def _watch(
    groups: list[tuple[KindInfo, list[Manifest]]],
    fmt: Format,
    all_namespaces: bool,
    namespace: str | None,
    selector: str | None,
    revision: int,
    request_timeout: float | None,
    show_labels: bool,
) -> None:
    kinds = {info.kind: info for info, _ in groups}
    only_ns = None if all_namespaces else (namespace or "default")
    sel = parse_selector(selector) if selector else None
    deadline = None if request_timeout is None else time.monotonic() + request_timeout
    out.file.flush()
    with open_store() as store:
        ctx = context(store)
        since = revision
        while deadline is None or time.monotonic() < deadline:
            idle = 0.5 if deadline is None else max(0.05, min(0.5, deadline - time.monotonic()))
            for ev in store.watch(since, timeout=idle):
                since = ev.revision
                info = kinds.get(str(ev.object.get("kind")))
                if info is None or not _in_scope(ev, info, only_ns, sel):
                    continue
                if ev.object.get("kind") in acceptance.CONTEXT_KINDS:
                    ctx.add(ev.object)
                _print_event(ev, info, fmt, ctx, all_namespaces, show_labels, len(kinds) > 1)
                out.file.flush()
                if deadline is not None and time.monotonic() >= deadline:
                    return


def _in_scope(ev: WatchEvent, info: KindInfo, only_ns: str | None, sel: Any) -> bool:
    meta = ev.object.get("metadata") or {}
    if info.namespaced and only_ns is not None and meta.get("namespace") != only_ns:
        return False
    return sel is None or bool(sel.matches(meta.get("labels") or {}))


def _print_event(
    ev: WatchEvent,
    info: KindInfo,
    fmt: Format,
    ctx: acceptance.Context,
    all_namespaces: bool,
    show_labels: bool,
    prefix: bool,
) -> None:
    m = ev.object
    if fmt.kind in ("yaml", "json", "jsonpath"):
        if fmt.kind == "yaml":
            out.file.write("---\n" + output.to_yaml([m]))
        elif fmt.kind == "json":
            out.file.write(json.dumps(output.clean_for_output(m), indent=2) + "\n")
        else:
            assert fmt.template is not None
            out.file.write(fmt.template.render(output.clean_for_output(m)))
        return
    if fmt.kind == "name":
        out.file.write(f"{info.singular}/{m['metadata']['name']}\n")
        return
    if fmt.kind == "custom-columns":
        out.file.write(custom_columns(fmt, [m], no_headers=True))
        return
    extra = (
        acceptance_columns(ctx, wide=fmt.kind == "wide")
        if info.kind in acceptance.KINDS_WITH_ACCEPTANCE
        else []
    )
    columns = output.table_columns(
        info.kind,
        wide=fmt.kind == "wide",
        with_namespace=all_namespaces and info.namespaced,
        show_labels=show_labels,
        prefix=f"{info.singular}/" if prefix else "",
        extra=extra,
    )
    out.file.write(
        output.format_table(
            [t for t, _ in columns], [[fn(m) for _, fn in columns]], no_headers=True
        )
    )
