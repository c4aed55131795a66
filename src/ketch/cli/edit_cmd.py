"""`ketch diff -f` and `ketch edit`: compare with, and change, what is stored.

`diff` runs the apply as a dry run (same merge, defaults and ClusterIP allocation as a real
one) and prints a unified diff of stored vs would-be-stored YAML per object. Exit codes are
kubectl's: 0 no differences, 1 differences, 2 an error.

`edit` opens the stored YAML in `$KUBE_EDITOR`, `$EDITOR` or `vi`. On save it is validated
and written with the resourceVersion it was read at (a change made meanwhile is a conflict,
never overwritten). An invalid edit reopens the editor with the errors as comments on top,
as kubectl does; saving it unchanged (or empty) cancels.
"""

from __future__ import annotations

import difflib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import yaml

from ketch.api import ResourceError, from_manifest, to_manifest
from ketch.cli import output
from ketch.cli.common import CliError, err, fail, open_store, out, state, usage
from ketch.cli.get_cmd import NsOpt, kind_of, namespace_for, one_target
from ketch.cli.manifests import FileOpt, RecursiveOpt, load_manifests
from ketch.control import admission
from ketch.store import ConflictError, Manifest, NotFoundError, ObjectKey, StoreError

_VOLATILE = ("resourceVersion", "generation")


def _for_diff(m: Manifest | None) -> list[str]:
    if m is None:
        return []
    clean = output.clean_for_output(m)
    meta = {k: v for k, v in clean.get("metadata", {}).items() if k not in _VOLATILE}
    clean = {**clean, "metadata": meta}
    return yaml.safe_dump(clean, sort_keys=False, default_flow_style=False).splitlines(
        keepends=True
    )


def _label(key: ObjectKey) -> str:
    return ".".join(p for p in (key.kind, key.namespace, key.name) if p)


def diff(
    filename: FileOpt = None,
    namespace: NsOpt = None,
    recursive: RecursiveOpt = False,
) -> None:
    """Show what `apply -f` would change, as a unified diff (exit 1 when it would change something)."""
    if not filename:
        usage("diff needs -f FILE|DIR|- (e.g. ketch diff -f examples/bookinfo.yaml)")
    try:
        loaded = load_manifests(filename, recursive, namespace, warn=False)
        with open_store() as store:
            live: dict[ObjectKey, Manifest | None] = {}
            for m in loaded.manifests:
                key = ObjectKey.of(m)
                try:
                    live[key] = store.get(key.kind, key.namespace, key.name)
                except NotFoundError:
                    live[key] = None
            outcomes = admission.apply(
                store, loaded.manifests, service_cidr=state.service_cidr, dry_run=True
            )
    except (CliError, ResourceError, admission.AdmissionError, StoreError) as e:
        for line in str(e).splitlines():
            err.print(f"error: {line}")
        raise typer.Exit(2) from None
    changed = False
    for o in outcomes:
        before, after = _for_diff(live[o.key]), _for_diff(o.manifest)
        if before == after:
            continue
        changed = True
        name = _label(o.key)
        out.file.writelines(
            difflib.unified_diff(before, after, fromfile=f"LIVE/{name}", tofile=f"MERGED/{name}")
        )
    if changed:
        raise typer.Exit(1)


# --- edit ------------------------------------------------------------------------------------

HEADER = (
    "# Please edit the object below. Lines beginning with a '#' will be ignored,\n"
    "# and an empty file will abort the edit. If an error occurs while saving this file will be\n"
    "# reopened with the relevant failures.\n#\n"
)


def _editor() -> list[str]:
    command = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
    return shlex.split(command)


def _strip_comments(text: str) -> str:
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("#")
    )


def edit(
    kind: Annotated[str, typer.Argument(help="Kind (or plural/short name), or TYPE/NAME.")],
    name: Annotated[str | None, typer.Argument(help="Object name.")] = None,
    namespace: NsOpt = None,
) -> None:
    """Edit a stored object in $EDITOR; it is validated and saved only if unchanged meanwhile."""
    kind, name = one_target(kind, name, "edit")
    info = kind_of(kind)
    key = ObjectKey(info.kind, namespace_for(info, namespace), name)
    with open_store() as store:
        try:
            current = store.get(key.kind, key.namespace, key.name)
        except NotFoundError:
            fail(f'{info.plural} "{name}" not found')
    original = yaml.safe_dump(output.clean_for_output(current), sort_keys=False)
    text = HEADER + original
    errors: list[str] = []
    fd, tmp = tempfile.mkstemp(prefix=f"ketch-edit-{info.singular}-{name}-", suffix=".yaml")
    os.close(fd)
    path = Path(tmp)
    try:
        while True:
            shown = "".join(f"# {e}\n" for e in errors) + ("#\n" if errors else "") + text
            path.write_text(shown, encoding="utf-8")
            try:
                subprocess.run([*_editor(), str(path)], check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                fail(f"could not run the editor ({' '.join(_editor())}): {e}; set $EDITOR")
            edited = path.read_text(encoding="utf-8")
            body = _strip_comments(edited)
            if not body.strip():
                out.file.write("Edit cancelled, no changes made.\n")
                return
            if body == _strip_comments(text):
                if errors:
                    keep = Path(tempfile.mkstemp(prefix="ketch-edit-", suffix=".yaml")[1])
                    keep.write_text(edited, encoding="utf-8")
                    fail(
                        f"edit cancelled, no valid changes were saved; a copy of your changes "
                        f"is in {keep}"
                    )
                out.file.write("Edit cancelled, no changes made.\n")
                return
            text = body
            try:
                outcome = _save(key, body)
            except ConflictError as e:
                keep = Path(tempfile.mkstemp(prefix="ketch-edit-", suffix=".yaml")[1])
                keep.write_text(body, encoding="utf-8")
                fail(f"{e}; your edit is in {keep} (ketch apply -f it after merging)")
            except (ResourceError, admission.AdmissionError, CliError) as e:
                errors = str(e).splitlines()
                continue
            out.file.write(f"{info.singular}/{name} {'edited' if outcome else 'unchanged'}\n")
            return
    finally:
        path.unlink(missing_ok=True)


def _save(key: ObjectKey, text: str) -> bool:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CliError(f"YAML syntax error: {e}") from None
    if not isinstance(doc, dict):
        raise CliError("expected one object (a mapping with apiVersion, kind, metadata)")
    resource = from_manifest(doc, source="edited", doc=1)
    manifest = to_manifest(resource)
    new_key = ObjectKey.of(
        {**manifest, "metadata": {"namespace": key.namespace, **manifest["metadata"]}}
    )
    if new_key != key:
        raise CliError(
            f"kind, namespace and name cannot be changed by edit (was {key}, now {new_key})"
        )
    if not manifest["metadata"].get("resourceVersion"):
        raise CliError("metadata.resourceVersion was removed; it keeps the edit conflict-safe")
    with open_store() as store:
        [o] = admission.apply(store, [manifest], service_cidr=state.service_cidr)
    return o.action != admission.Action.UNCHANGED
