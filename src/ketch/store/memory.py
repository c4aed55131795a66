"""An in-memory `Store` with the same semantics as the SQLite backend, for unit tests of
other components (and single-process tools). Not durable."""

from __future__ import annotations

import builtins
import copy
import threading
import time
from collections.abc import Iterator, Sequence

from ketch.store import logic
from ketch.store.base import (
    EventType,
    ListResult,
    Manifest,
    NotFoundError,
    ObjectKey,
    RevisionTooOldError,
    StoreError,
    WatchEvent,
)


class MemoryStore:
    def __init__(self, *, history: int = 10000) -> None:
        self.history = history
        self._objects: dict[ObjectKey, Manifest] = {}
        self._events: builtins.list[WatchEvent] = []
        self._revision = 0
        self._compacted = 0
        self._cond = threading.Condition()

    def _record(self, etype: EventType, obj: Manifest) -> None:
        self._events.append(WatchEvent(etype, self._revision, copy.deepcopy(obj)))
        floor = self._revision - self.history
        if floor > self._compacted:
            self._events = [e for e in self._events if e.revision > floor]
            self._compacted = floor

    def apply(
        self, objects: Sequence[Manifest], *, create_only: bool = False
    ) -> builtins.list[Manifest]:
        keys = [logic.check_manifest(m) for m in objects]
        if len(set(keys)) != len(keys):
            raise StoreError("the same object appears twice in one apply")
        with self._cond:
            # Compute everything first: a failure leaves the store untouched (all-or-nothing).
            staged: builtins.list[tuple[ObjectKey, Manifest, bool]] = []
            revision = self._revision
            for key, incoming in zip(keys, objects, strict=True):
                existing = self._objects.get(key)
                revision += 1
                staged.append(
                    (
                        key,
                        logic.stamp(incoming, existing, revision, create_only=create_only),
                        existing is None,
                    )
                )
            for key, obj, created in staged:
                self._revision += 1
                self._objects[key] = obj
                self._record(EventType.ADDED if created else EventType.MODIFIED, obj)
            self._cond.notify_all()
            return [copy.deepcopy(obj) for _, obj, _ in staged]

    def get(self, kind: str, namespace: str, name: str) -> Manifest:
        key = ObjectKey(kind, namespace, name)
        with self._cond:
            if key not in self._objects:
                raise NotFoundError(key)
            return copy.deepcopy(self._objects[key])

    def list(
        self, kind: str | None = None, namespace: str | None = None, selector: str | None = None
    ) -> ListResult:
        with self._cond:
            items = [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects.items())
                if (kind is None or key.kind == kind)
                and (namespace is None or key.namespace == namespace)
            ]
            return ListResult(logic.select(items, selector), self._revision)

    def delete(
        self, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Manifest:
        key = ObjectKey(kind, namespace, name)
        with self._cond:
            existing = self._objects.get(key)
            if existing is None:
                raise NotFoundError(key)
            logic.check_delete(key, existing, resource_version)
            victims = sorted(
                k for k in self._objects if kind == "Namespace" and k.namespace == name
            )
            result = existing
            for vkey in [*victims, key]:
                self._revision += 1
                result = logic.deleted_view(self._objects.pop(vkey), self._revision)
                self._record(EventType.DELETED, result)
            self._cond.notify_all()
            return result

    def events(
        self, since: int, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[WatchEvent]:
        with self._cond:
            if since < self._compacted:
                raise RevisionTooOldError(since, self._compacted + 1)
            return [
                e
                for e in self._events
                if e.revision > since
                and (kind is None or e.object["kind"] == kind)
                and (
                    namespace is None or (e.object["metadata"].get("namespace") or "") == namespace
                )
            ]

    def watch(
        self,
        since: int,
        kind: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Iterator[WatchEvent]:
        while True:
            batch = self.events(since, kind, namespace)
            for ev in batch:
                since = ev.revision
                yield ev
            if batch:
                continue
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._cond:
                head = self._revision
                while self._revision == head:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._cond.wait(remaining)
            since = max(since, 0)

    def revision(self) -> int:
        with self._cond:
            return self._revision

    def close(self) -> None:
        pass
