"""`ketch scale`: set the replica count of a Deployment or ReplicaSet, as `kubectl scale`.

    ketch scale deployment/web --replicas 3
    ketch scale deploy web api --replicas 0 -n shop
    ketch scale deploy web --replicas 5 --current-replicas 3   # only if it has 3 now

The write is a compare-and-swap on the object as read; a conflict with the controllers'
status updates is retried, a `--current-replicas` mismatch is reported. The controllers do
the rest (docs/controllers.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ketch.api import KindInfo, ResourceError, resolve_kind
from ketch.cli.common import err, fail, open_store, out
from ketch.store import ConflictError, NotFoundError, Store

SCALABLE = ("Deployment", "ReplicaSet")
_RETRIES = 10


def _targets(resources: list[str]) -> list[tuple[KindInfo, str]]:
    """kubectl's two spellings: TYPE/NAME... or TYPE NAME..."""
    if not resources:
        fail("scale needs what to scale, e.g. ketch scale deployment/web --replicas 3")
    pairs: list[tuple[str, str]] = []
    if "/" in resources[0]:
        for word in resources:
            kind, slash, name = word.partition("/")
            if not slash or not kind or not name:
                fail(f"{word!r}: expected TYPE/NAME (e.g. deployment/web) like the first argument")
            pairs.append((kind, name))
    else:
        if len(resources) < 2:
            fail(
                f"scale {resources[0]}: name the object, e.g. ketch scale {resources[0]} web --replicas 3"
            )
        pairs = [(resources[0], name) for name in resources[1:]]
    out_pairs: list[tuple[KindInfo, str]] = []
    for kind, name in pairs:
        try:
            info = resolve_kind(kind)
        except ResourceError as e:
            fail("; ".join(p.message for p in e.problems))
        if info.kind not in SCALABLE:
            fail(
                f"{info.plural} cannot be scaled; ketch scale supports deployments and replicasets"
            )
        out_pairs.append((info, name))
    return out_pairs


def _scale_one(
    store: Store, info: KindInfo, namespace: str, name: str, replicas: int, current: int | None
) -> str | None:
    """Scale one object; None on success, else the error message."""
    for _ in range(_RETRIES):
        try:
            manifest = store.get(info.kind, namespace, name)
        except NotFoundError:
            return f'{info.plural} "{name}" not found in namespace {namespace}'
        spec = manifest.setdefault("spec", {})
        have = spec.get("replicas", 1)
        if current is not None and have != current:
            return (
                f"{info.singular}/{name} has {have} replicas, not {current} "
                "(--current-replicas); nothing changed"
            )
        owner = next(
            (r for r in manifest["metadata"].get("ownerReferences") or [] if r.get("controller")),
            None,
        )
        if owner is not None and owner.get("kind") == "Deployment":
            err.print(
                f"Warning: {info.singular}/{name} is controlled by deployment/{owner.get('name')}, "
                "which will set its replicas back; scale the Deployment instead"
            )
        if have == replicas:
            return None
        spec["replicas"] = replicas
        info.model.model_validate(manifest)
        try:
            store.apply([manifest])
        except ConflictError:
            continue  # a controller wrote its status meanwhile: read again
        return None
    return f"{info.singular}/{name}: changed {_RETRIES} times while scaling; try again"


def scale(
    resources: Annotated[
        list[str] | None,
        typer.Argument(help="deployment/NAME..., or TYPE NAME... (deploy, rs)."),
    ] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", help="The number of pods to run (>= 0).")
    ] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: default).")
    ] = None,
    current_replicas: Annotated[
        int | None,
        typer.Option("--current-replicas", help="Only scale if the object has this many now."),
    ] = None,
) -> None:
    """Set the number of replicas of Deployments or ReplicaSets."""
    if replicas is None:
        fail("scale needs --replicas COUNT (e.g. --replicas 3)")
    if replicas < 0:
        fail(f"--replicas must be 0 or more (the number of pods to run), got {replicas}")
    targets = _targets(list(resources or []))
    ns = namespace or "default"
    failed = 0
    with open_store() as store:
        for info, name in targets:
            problem = _scale_one(store, info, ns, name, replicas, current_replicas)
            if problem is None:
                out.print(f"{info.singular}/{name} scaled")
            else:
                err.print(f"error: {problem}")
                failed += 1
    if failed:
        raise typer.Exit(1)
