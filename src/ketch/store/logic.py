"""Backend-independent store rules, pure: server-set metadata, optimistic concurrency, filters.

Both backends (SQLite, memory) call these inside their own transaction, so the semantics in
`base.py` are implemented exactly once.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from ketch.labels import parse_selector
from ketch.store.base import AlreadyExistsError, ConflictError, Manifest, ObjectKey, StoreError


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def check_manifest(m: Any) -> ObjectKey:
    if not isinstance(m, dict) or not isinstance(m.get("metadata"), dict):
        raise StoreError("object to store must be a mapping with metadata")
    if not m.get("kind") or not m["metadata"].get("name"):
        raise StoreError("object to store needs kind and metadata.name")
    return ObjectKey.of(m)


def stamp(
    incoming: Manifest, existing: Manifest | None, revision: int, *, create_only: bool = False
) -> Manifest:
    """The object as it will be stored at `revision`, or ConflictError/AlreadyExistsError."""
    key = check_manifest(incoming)
    obj = copy.deepcopy(incoming)
    meta: dict[str, Any] = obj["metadata"]
    sent_rv = meta.get("resourceVersion")
    if existing is None:
        if sent_rv:
            raise ConflictError(key, str(sent_rv), None)
        meta["uid"] = str(uuid.uuid4())
        meta["generation"] = 1
        meta["creationTimestamp"] = now_rfc3339()
    else:
        if create_only:
            raise AlreadyExistsError(key)
        old_meta = existing["metadata"]
        if sent_rv and str(sent_rv) != str(old_meta.get("resourceVersion")):
            raise ConflictError(key, str(sent_rv), str(old_meta.get("resourceVersion")))
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or now_rfc3339()
        generation = int(old_meta.get("generation") or 1)
        meta["generation"] = (
            generation + 1 if obj.get("spec") != existing.get("spec") else generation
        )
    meta["resourceVersion"] = str(revision)
    if not key.namespace:
        meta.pop("namespace", None)
    return obj


def check_delete(key: ObjectKey, existing: Manifest, resource_version: str | None) -> None:
    current = str(existing["metadata"].get("resourceVersion"))
    if resource_version and resource_version != current:
        raise ConflictError(key, resource_version, current)


def deleted_view(existing: Manifest, revision: int) -> Manifest:
    obj = copy.deepcopy(existing)
    obj["metadata"]["resourceVersion"] = str(revision)
    return obj


def select(items: Iterable[Manifest], selector: str | None) -> list[Manifest]:
    if not selector:
        return list(items)
    sel = parse_selector(selector)
    return [m for m in items if sel.matches(m.get("metadata", {}).get("labels"))]
