"""`ketch`: kubectl-style verbs over the Ketch config store.

Exit codes scripts can rely on: 0 success; 1 the request failed (invalid input, not found,
conflict, refused by admission); 2 usage error (unknown flag, missing argument).
User mistakes are printed as one `error:` line per problem, never a traceback.
"""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from ketch import __version__
from ketch.api import (
    KINDS,
    KindInfo,
    Problem,
    ResourceError,
    apply_namespace_defaults,
    from_manifest,
    load,
    resolve_kind,
    to_manifest,
)
from ketch.cli import output
from ketch.cli.common import CliError, err, fail, open_store, out, state
from ketch.cli.node_cmd import cp_app, node_app, proxy_status
from ketch.cli.scale_cmd import scale
from ketch.cli.ztunnel_cmd import ztunnel_app, ztunnel_config
from ketch.control import admission
from ketch.control.translate.policy import policy_warnings
from ketch.labels import SelectorError, parse_selector
from ketch.store import ListResult, Manifest, NotFoundError, ObjectKey, StoreError

app = typer.Typer(
    name="ketch",
    help="Ketch: a sidecar-less (ambient) service mesh. kubectl-style commands over Ketch's config store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _global(
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Config store file (SQLite). Default: $KETCH_STORE, else /var/lib/ketch/ketch.db as root.",
            show_default=False,
        ),
    ] = None,
    service_cidr: Annotated[
        str, typer.Option("--service-cidr", help="CIDR Service ClusterIPs are allocated from.")
    ] = str(admission.DEFAULT_SERVICE_CIDR),
) -> None:
    if store is not None:
        state.store_path = store
    try:
        state.service_cidr = ipaddress.IPv4Network(service_cidr)
    except ValueError:
        fail(f"--service-cidr: expected an IPv4 CIDR such as 10.96.0.0/16, got {service_cidr!r}")


app.add_typer(node_app, name="node")
app.add_typer(cp_app, name="control-plane")
app.add_typer(ztunnel_app, name="ztunnel")
app.command("ztunnel-config")(ztunnel_config)
app.command("proxy-status")(proxy_status)
app.command()(scale)

# ---------------------------------------------------------------------------- helpers


def _kind(word: str) -> KindInfo:
    try:
        return resolve_kind(word)
    except ResourceError as e:
        fail("; ".join(p.message for p in e.problems))


def _split_kinds(words: str) -> list[KindInfo]:
    if words.lower() == "all":
        # kubectl's "all" means the namespaced workload kinds; Ketch adds its mesh kinds.
        return [k for k in KINDS.values() if k.namespaced]
    return [_kind(w) for w in words.split(",") if w]


def _namespace_for(info: KindInfo, namespace: str | None) -> str:
    return (namespace or "default") if info.namespaced else ""


def _load(files: list[str], recursive: bool, namespace: str | None) -> list[Manifest]:
    result = load(files, recursive=recursive)
    warnings = [str(w) for w in result.warnings]
    for obj in result.objects:  # what the node proxy will not enforce as written
        warnings += [
            str(Problem(obj.source, obj.doc, at, msg)) for at, msg in policy_warnings(obj.resource)
        ]
    for warning in warnings:
        err.print(f"Warning: {warning}")
    manifests = [to_manifest(obj) for obj in apply_namespace_defaults(result.objects, namespace)]
    if not manifests:
        fail(f"no objects passed to apply (read {', '.join(files)})")
    return manifests


def _selector_or_fail(selector: str | None) -> None:
    if selector:
        try:
            parse_selector(selector)
        except SelectorError as e:
            fail(f"-l {selector!r}: {e}")


FileOpt = Annotated[
    list[str] | None,
    typer.Option("--filename", "-f", help="File, directory or '-' (stdin); may be repeated."),
]
NsOpt = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-R", help="Descend into directories given with -f.")
]


# ---------------------------------------------------------------------------- verbs


@app.command()
def version() -> None:
    """Print Ketch's version."""
    out.print(f"ketch {__version__}")


@app.command()
def apply(
    filename: FileOpt = None,
    namespace: NsOpt = None,
    recursive: RecursiveOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and show what would change; store nothing.")
    ] = False,
) -> None:
    """Create or update objects from YAML/JSON files, directories or stdin.

    Multi-document files and `kind: List` are accepted. The whole apply is atomic: if any
    object is refused, nothing is stored. Fields in the files replace the stored ones
    (server-set metadata and status are kept).
    """
    if not filename:
        fail("apply needs -f FILE|DIR|- (e.g. ketch apply -f examples/bookinfo.yaml)")
    manifests = _load(filename, recursive, namespace)
    with open_store() as store:
        outcomes = admission.apply(
            store, manifests, service_cidr=state.service_cidr, dry_run=dry_run
        )
    suffix = " (dry run)" if dry_run else ""
    for o in outcomes:
        out.print(f"{resolve_kind(o.key.kind).singular}/{o.key.name} {o.action.value}{suffix}")


@app.command()
def get(
    kind: Annotated[
        str,
        typer.Argument(help="Kind, plural, short name (po, svc, ap, ...), a comma list, or 'all'."),
    ],
    names: Annotated[list[str] | None, typer.Argument(help="Object names (default: all).")] = None,
    namespace: NsOpt = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="List across all namespaces.")
    ] = False,
    output_fmt: Annotated[
        str, typer.Option("--output", "-o", help="table, wide, yaml, json or name.")
    ] = "table",
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Label selector, e.g. app=web,tier!=db.")
    ] = None,
    show_labels: Annotated[
        bool, typer.Option("--show-labels", help="Add a LABELS column.")
    ] = False,
) -> None:
    """List or show objects."""
    if output_fmt not in ("table", "wide", "yaml", "json", "name"):
        fail(f"-o {output_fmt!r}: expected one of table, wide, yaml, json, name")
    _selector_or_fail(selector)
    if names and all_namespaces:
        fail("a name cannot be combined with -A: names are looked up in one namespace (-n)")
    infos = _split_kinds(kind)
    if names and len(infos) > 1:
        fail("names can only be given with a single kind")
    groups: list[tuple[KindInfo, list[Manifest]]] = []
    with open_store() as store:
        for info in infos:
            ns = None if (all_namespaces or not info.namespaced) else (namespace or "default")
            if names:
                items = []
                for name in names:
                    try:
                        items.append(store.get(info.kind, _namespace_for(info, namespace), name))
                    except NotFoundError:
                        fail(
                            f'{info.plural} "{name}" not found'
                            + (f" in namespace {ns}" if ns else "")
                        )
            else:
                listed: ListResult = store.list(info.kind, ns, selector)
                items = sorted(
                    listed.items,
                    key=lambda m: (m["metadata"].get("namespace", ""), m["metadata"]["name"]),
                )
            groups.append((info, items))
    everything = [m for _, items in groups for m in items]
    if output_fmt == "yaml":
        if everything:
            out.print(output.to_yaml(everything), end="")
        return
    if output_fmt == "json":
        out.print(output.to_json(everything, as_list=not (names and len(everything) == 1)))
        return
    if output_fmt == "name":
        for info, items in groups:
            for m in items:
                out.print(f"{info.singular}/{m['metadata']['name']}")
        return
    shown = False
    for info, items in groups:
        if not items:
            continue
        if shown:
            out.print()
        output.render_table(
            out,
            info.kind,
            items,
            wide=output_fmt == "wide",
            with_namespace=all_namespaces and info.namespaced,
            show_labels=show_labels,
            with_kind_prefix=len(groups) > 1,
            plural=info.singular,
        )
        shown = True
    if not shown:
        where = "any namespace" if all_namespaces else f"{namespace or 'default'} namespace"
        err.print(f"No resources found in {where}.")


@app.command()
def delete(
    kind: Annotated[str | None, typer.Argument(help="Kind (or plural/short name).")] = None,
    names: Annotated[list[str] | None, typer.Argument(help="Names to delete.")] = None,
    filename: FileOpt = None,
    namespace: NsOpt = None,
    recursive: RecursiveOpt = False,
    selector: Annotated[
        str | None, typer.Option("--selector", "-l", help="Delete every object of KIND matching.")
    ] = None,
    ignore_not_found: Annotated[
        bool, typer.Option("--ignore-not-found", help="Succeed if an object does not exist.")
    ] = False,
) -> None:
    """Delete objects named in files, by kind and name, or by label selector.

    Deleting a Namespace deletes everything in it.
    """
    keys: list[ObjectKey] = []
    if filename:
        if kind or names:
            fail("give either -f FILE or KIND NAME..., not both")
        keys = [ObjectKey.of(m) for m in _load(filename, recursive, namespace)]
    elif kind:
        info = _kind(kind)
        ns = _namespace_for(info, namespace)
        if selector:
            _selector_or_fail(selector)
            with open_store() as store:
                keys = [ObjectKey.of(m) for m in store.list(info.kind, ns or None, selector).items]
        elif names:
            keys = [ObjectKey(info.kind, ns, n) for n in names]
        else:
            fail(f"delete {kind}: name the objects, or select them with -l")
    else:
        fail("delete needs -f FILE or KIND NAME... (e.g. ketch delete pod web-1)")
    missing = 0
    with open_store() as store:
        for key in keys:
            try:
                admission.delete(store, key)
            except NotFoundError:
                if not ignore_not_found:
                    err.print(f'Error: {resolve_kind(key.kind).plural} "{key.name}" not found')
                    missing += 1
                continue
            out.print(f'{resolve_kind(key.kind).singular} "{key.name}" deleted')
    if missing:
        raise typer.Exit(1)


@app.command()
def label(
    kind: Annotated[str, typer.Argument(help="Kind (or plural/short name).")],
    name: Annotated[str, typer.Argument(help="Object name.")],
    changes: Annotated[list[str], typer.Argument(help="key=value to set, key- to remove.")],
    namespace: NsOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Allow changing an existing label's value.")
    ] = False,
) -> None:
    """Add, change or remove labels, e.g. `ketch label ns bookinfo istio.io/dataplane-mode=ambient`."""
    info = _kind(kind)
    sets: dict[str, str] = {}
    removes: list[str] = []
    for change in changes:
        if change.endswith("-") and "=" not in change:
            removes.append(change[:-1])
        elif "=" in change:
            k, _, v = change.partition("=")
            sets[k] = v
        else:
            fail(f"{change!r}: expected key=value or key-")
    with open_store() as store:
        try:
            current = store.get(info.kind, _namespace_for(info, namespace), name)
        except NotFoundError:
            fail(f'{info.plural} "{name}" not found')
        labels = dict(current.get("metadata", {}).get("labels") or {})
        for k, v in sets.items():
            if k in labels and labels[k] != v and not overwrite:
                fail(f"'{k}' already has a value ({labels[k]}), and --overwrite is false")
            labels[k] = v
        for k in removes:
            labels.pop(k, None)
        updated = dict(current)
        updated["metadata"] = {**current["metadata"], "labels": labels}
        try:  # validate the new labels with the same rules as apply
            to_manifest(from_manifest(updated, source=f"{info.singular}/{name}", doc=1))
        except ResourceError as e:
            fail(str(e))
        store.apply([updated])  # carries resourceVersion: a concurrent change is a conflict
    out.print(f"{info.singular}/{name} labeled" if sets else f"{info.singular}/{name} unlabeled")


@app.command()
def describe(
    kind: Annotated[str, typer.Argument(help="Kind (or plural/short name).")],
    name: Annotated[str, typer.Argument(help="Object name.")],
    namespace: NsOpt = None,
) -> None:
    """Show one object in detail."""
    info = _kind(kind)
    with open_store() as store:
        try:
            m = store.get(info.kind, _namespace_for(info, namespace), name)
        except NotFoundError:
            fail(f'{info.plural} "{name}" not found')
    meta = m.get("metadata", {})
    rows = [
        ("Name", meta.get("name")),
        ("Namespace", meta.get("namespace") or "<cluster>"),
        ("Kind", f"{m.get('kind')} ({m.get('apiVersion')})"),
        (
            "Labels",
            ", ".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items()))
            or "<none>",
        ),
        (
            "Annotations",
            ", ".join(f"{k}={v}" for k, v in sorted((meta.get("annotations") or {}).items()))
            or "<none>",
        ),
        ("UID", meta.get("uid")),
        ("Resource Version", meta.get("resourceVersion")),
        ("Generation", meta.get("generation")),
        ("Created", f"{meta.get('creationTimestamp')} ({output.age(m)} ago)"),
    ]
    width = max(len(k) for k, _ in rows) + 2
    for k, v in rows:
        out.print(f"{k + ':':<{width}}{v}")
    for section in ("spec", "status"):
        body = output.clean_for_output({section: m.get(section)}) if m.get(section) else {}
        if body:
            out.print(f"{section.capitalize()}:")
            text = yaml.safe_dump(body[section], sort_keys=False, default_flow_style=False)
            for line in text.splitlines():
                out.print(f"  {line}")


def main() -> None:
    """Entry point: the app in standalone mode (usage errors exit 2, --help exits 0), with one
    error boundary that turns user-facing failures into `error:` lines and exit code 1."""
    try:
        app()
    except CliError as e:
        err.print(f"error: {e}")
        sys.exit(1)
    except ResourceError as e:
        for line in str(e).splitlines():
            err.print(f"error: {line}")
        sys.exit(1)
    except (StoreError, admission.AdmissionError) as e:
        err.print(f"error: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
