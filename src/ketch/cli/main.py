"""`ketch`: kubectl-style verbs over the Ketch config store.

Exit codes scripts can rely on: 0 success; 1 the request failed (invalid input, not found,
conflict, refused by admission); 2 usage error (unknown command or flag, missing argument,
bad flag value) — `ketch diff` follows kubectl: 1 means differences were found.
Every failure is printed as `error: <message>` lines on stderr, never a traceback.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from ketch import __version__
from ketch.api import ResourceError, from_manifest, resolve_kind, to_manifest
from ketch.cli import cluster_cmd, restart_cmd
from ketch.cli.agent_cmd import agent_app
from ketch.cli.common import err, fail, open_store, out, run_app, state, usage
from ketch.cli.describe_cmd import describe
from ketch.cli.edit_cmd import diff, edit
from ketch.cli.explain_cmd import api_resources, explain
from ketch.cli.get_cmd import NsOpt, check_selector, get, kind_of, namespace_for, targets
from ketch.cli.help import KetchGroup
from ketch.cli.manifests import (
    FileOpt,
    RecursiveOpt,
    acceptance_warnings,
    admission_error,
    load_manifests,
)
from ketch.cli.node_cmd import cp_app, node_app, proxy_status
from ketch.cli.scale_cmd import scale
from ketch.cli.ztunnel_cmd import ztunnel_app, ztunnel_config
from ketch.control import admission
from ketch.control.translate.policy import peer_authentication_warnings
from ketch.store import NotFoundError, ObjectKey, StoreError

app = typer.Typer(
    name="ketch",
    cls=KetchGroup,
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
            help="Config store file (SQLite). Default: $KETCH_STORE, else ketch.db in "
            "$KETCH_HOME, /var/lib/ketch (root) or ~/.local/state/ketch.",
            show_default=False,
        ),
    ] = None,
    service_cidr: Annotated[
        str, typer.Option("--service-cidr", help="CIDR Service ClusterIPs are allocated from.")
    ] = str(admission.DEFAULT_SERVICE_CIDR),
) -> None:
    if store is not None:
        state.store_path = store
        state.store_origin = "--store"
    try:
        state.service_cidr = ipaddress.IPv4Network(service_cidr)
    except ValueError:
        usage(f"--service-cidr: expected an IPv4 CIDR such as 10.96.0.0/16, got {service_cidr!r}")


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
        usage("apply needs -f FILE|DIR|- (e.g. ketch apply -f examples/bookinfo.yaml)")
    loaded = load_manifests(filename, recursive, namespace)
    with open_store() as store:
        for line in acceptance_warnings(store, loaded):
            err.print(f"Warning: {line}", markup=False)
        stored = lambda: store.list("PeerAuthentication").items  # noqa: E731 - quirks need them
        for warning in peer_authentication_warnings(loaded.manifests, stored):
            err.print(f"Warning: {warning}", markup=False)
        try:
            outcomes = admission.apply(
                store, loaded.manifests, service_cidr=state.service_cidr, dry_run=dry_run
            )
        except admission.AdmissionError as e:
            raise admission_error(loaded, e) from None
    suffix = " (dry run)" if dry_run else ""
    for o in outcomes:
        out.print(f"{resolve_kind(o.key.kind).singular}/{o.key.name} {o.action.value}{suffix}")


app.command()(get)
app.command()(describe)


@app.command()
def delete(
    kind: Annotated[
        str | None, typer.Argument(help="Kind (or plural/short name), or TYPE/NAME.")
    ] = None,
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

    Deleting a Namespace deletes everything in it; objects of a file that went with their
    namespace earlier in the same delete are reported as deleted.
    """
    keys: list[ObjectKey] = []
    if filename:
        if kind or names:
            usage("give either -f FILE or KIND NAME..., not both")
        keys = [
            ObjectKey.of(m)
            for m in load_manifests(filename, recursive, namespace, warn=False).manifests
        ]
    elif kind:
        parsed = targets(kind, names or [])
        if isinstance(parsed, list):
            for t, n in parsed:
                info = kind_of(t)
                keys.append(ObjectKey(info.kind, namespace_for(info, namespace), n))
        else:
            info = kind_of(kind)
            ns = namespace_for(info, namespace)
            if selector:
                check_selector(selector)
                with open_store() as store:
                    keys = [
                        ObjectKey.of(m) for m in store.list(info.kind, ns or None, selector).items
                    ]
            elif names:
                keys = [ObjectKey(info.kind, ns, n) for n in names]
            else:
                usage(f"delete {kind}: name the objects, or select them with -l")
    else:
        usage("delete needs -f FILE or KIND NAME... (e.g. ketch delete pod web-1)")
    missing = 0
    gone_namespaces: set[str] = set()
    with open_store() as store:
        for key in keys:
            word = resolve_kind(key.kind).singular
            try:
                admission.delete(store, key)
            except NotFoundError:
                if key.namespace in gone_namespaces:  # went with its namespace (cascade)
                    out.print(f'{word} "{key.name}" deleted')
                elif not ignore_not_found:
                    err.print(f'error: {resolve_kind(key.kind).plural} "{key.name}" not found')
                    missing += 1
                continue
            if key.kind == "Namespace":
                gone_namespaces.add(key.name)
            out.print(f'{word} "{key.name}" deleted')
    if missing:
        raise typer.Exit(1)


app.command()(diff)
app.command()(edit)


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
    """Add, change or remove labels (key=value sets, key- removes)."""
    info = kind_of(kind)
    sets: dict[str, str] = {}
    removes: list[str] = []
    for change in changes:
        if change.endswith("-") and "=" not in change:
            removes.append(change[:-1])
        elif "=" in change:
            k, _, v = change.partition("=")
            sets[k] = v
        else:
            usage(f"{change!r}: expected key=value or key-")
    with open_store() as store:
        try:
            current = store.get(info.kind, namespace_for(info, namespace), name)
        except NotFoundError:
            fail(f'{info.plural} "{name}" not found')
        before = dict(current.get("metadata", {}).get("labels") or {})
        labels = dict(before)
        for k, v in sets.items():
            if k in labels and labels[k] != v and not overwrite:
                fail(f"'{k}' already has a value ({labels[k]}), and --overwrite is false")
            labels[k] = v
        for k in removes:
            labels.pop(k, None)
        if labels == before:
            out.print(f"{info.singular}/{name} not labeled")
            return
        updated = dict(current)
        updated["metadata"] = {**current["metadata"], "labels": labels}
        try:  # validate the new labels with the same rules as apply
            to_manifest(from_manifest(updated, source=f"{info.singular}/{name}", doc=1))
        except ResourceError as e:
            fail(str(e))
        store.apply([updated])  # carries resourceVersion: a concurrent change is a conflict
    out.print(f"{info.singular}/{name} labeled" if sets else f"{info.singular}/{name} unlabeled")


app.command("api-resources")(api_resources)
app.command()(explain)


@app.command()
def version() -> None:
    """Print Ketch's version and which config store it uses."""
    out.print(f"ketch {__version__}")
    out.print(f"store: {state.store_path} ({state.store_origin})", markup=False)


app.add_typer(node_app, name="node")
app.add_typer(cp_app, name="control-plane")
app.add_typer(ztunnel_app, name="ztunnel")
app.add_typer(agent_app, name="agent")
app.command()(scale)
cluster_cmd.register(app)
app.command()(restart_cmd.restart)
app.command("ztunnel-config")(ztunnel_config)
app.command("proxy-status")(proxy_status)


def main() -> None:
    """Entry point, with one error boundary (`run_app`): every failure becomes `error:` lines
    on stderr; usage errors (click's and ours) exit 2, failed requests 1, --help 0."""
    run_app(app, failures=(ResourceError, StoreError, admission.AdmissionError))


if __name__ == "__main__":
    main()
