"""Config store: apply/get/list/delete/watch over resource manifests.

`base` holds the interface every backend implements (the embedded SQLite backend now, a
Kubernetes API backend later) with Kubernetes' list/watch/resourceVersion semantics.
"""

from ketch.store.base import (
    AlreadyExistsError,
    ConflictError,
    EventType,
    ListResult,
    Manifest,
    NotFoundError,
    ObjectKey,
    RevisionTooOldError,
    Store,
    StoreError,
    WatchEvent,
)
from ketch.store.memory import MemoryStore
from ketch.store.sqlite import SqliteStore

__all__ = [
    "AlreadyExistsError",
    "ConflictError",
    "EventType",
    "ListResult",
    "Manifest",
    "MemoryStore",
    "NotFoundError",
    "ObjectKey",
    "RevisionTooOldError",
    "SqliteStore",
    "Store",
    "StoreError",
    "WatchEvent",
]
