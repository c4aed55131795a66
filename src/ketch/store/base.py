"""The store interface, shared by every backend.

Objects are stored as *manifests*: plain JSON-able dicts in their wire form
(`apiVersion`, `kind`, `metadata`, `spec`, `status`), already validated by `ketch.api`.
The store owns the server-set metadata fields: `uid`, `resourceVersion`, `generation`,
`creationTimestamp`. Cluster-scoped kinds (Namespace, Node) use namespace "".

Revisions follow etcd/Kubernetes: one global, strictly increasing integer per store; every
write (each object of a multi-object apply, each delete) gets its own revision, and an
object's `metadata.resourceVersion` is the decimal string of the revision that last wrote it.
A list returns the revision it was read at; watching from that revision yields exactly the
changes after it, in order, nothing lost or repeated. A revision older than the retained
event history raises RevisionTooOldError (Kubernetes' 410 Gone): the consumer must relist.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Manifest = dict[str, Any]


@dataclass(frozen=True, order=True)
class ObjectKey:
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ObjectKey:
        meta = manifest.get("metadata") or {}
        return cls(str(manifest["kind"]), str(meta.get("namespace") or ""), str(meta["name"]))


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    revision: int
    object: Manifest  # for DELETED: the last state, with resourceVersion = the delete revision


@dataclass(frozen=True)
class ListResult:
    items: list[Manifest]
    revision: int  # watch from here to see every later change


class StoreError(Exception):
    """Base class for store failures; messages are written for operators."""


class NotFoundError(StoreError):
    def __init__(self, key: ObjectKey) -> None:
        super().__init__(f"{key} not found")
        self.key = key


class AlreadyExistsError(StoreError):
    def __init__(self, key: ObjectKey) -> None:
        super().__init__(f"{key} already exists")
        self.key = key


class ConflictError(StoreError):
    """Optimistic concurrency failure: the object changed since the caller read it."""

    def __init__(self, key: ObjectKey, expected: str, actual: str | None) -> None:
        now = f"is now at resourceVersion {actual}" if actual else "no longer exists"
        super().__init__(
            f"{key}: conflict: you sent resourceVersion {expected} but the object {now}; "
            "get it again and re-apply your change"
        )
        self.key = key
        self.expected = expected
        self.actual = actual


class RevisionTooOldError(StoreError):
    """Watch asked for history the store no longer keeps (Kubernetes' 410 Gone): relist."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(
            f"revision {requested} is too old (oldest retained is {oldest}); list again and "
            "watch from the list's revision"
        )
        self.requested = requested
        self.oldest = oldest


class Store(Protocol):
    def apply(self, objects: Sequence[Manifest], *, create_only: bool = False) -> list[Manifest]:
        """Create or update every object, all-or-nothing, and return them as stored.

        If an object carries metadata.resourceVersion it must equal the stored one
        (ConflictError otherwise, or if it does not exist). `generation` increases when
        `spec` changes. With create_only, an existing object raises AlreadyExistsError.
        """
        ...

    def get(self, kind: str, namespace: str, name: str) -> Manifest: ...

    def list(
        self,
        kind: str | None = None,
        namespace: str | None = None,
        selector: str | None = None,
    ) -> ListResult:
        """Objects of `kind` (all kinds if None) in `namespace` (all if None) whose labels
        match the Kubernetes label `selector` ("app=a,tier!=db,env in (x,y),!legacy")."""
        ...

    def delete(
        self, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Manifest: ...

    def events(
        self, since: int, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[WatchEvent]:
        """Every change after revision `since`, oldest first; does not block."""
        ...

    def watch(
        self,
        since: int,
        kind: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Iterator[WatchEvent]:
        """Block and yield changes after `since` as they happen (until `timeout` seconds of
        no events, or forever when None). Resuming from the last yielded revision loses and
        repeats nothing."""
        ...

    def revision(self) -> int: ...

    def close(self) -> None: ...
