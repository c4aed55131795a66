"""The embedded config store: one SQLite file in WAL mode.

- Durable: `synchronous=FULL`, so a committed apply survives a crash or power loss.
- Atomic: every write (a whole multi-object apply, a delete with its cascade) is one
  `BEGIN IMMEDIATE` transaction; a process killed mid-apply leaves none of it.
- Multi-process: each process opens its own connection; writers serialise on SQLite's
  write lock (busy_timeout waits for it), readers never block (WAL).
- Watch: every write appends to the `events` table under the same transaction; `watch()`
  polls `PRAGMA data_version` (a cheap in-memory counter that changes when another connection
  commits) and reads new events only when it moved. The last `history` events are kept; older
  revisions raise RevisionTooOldError.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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

SCHEMA_VERSION = 1
_APPLICATION_ID = 0x4B544348  # "KTCH"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    revision INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_namespace ON objects (namespace, kind);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY, type TEXT NOT NULL,
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""


def _dumps(m: Manifest) -> str:
    return json.dumps(m, separators=(",", ":"), sort_keys=False)


class SqliteStore:
    """`ketch.store.Store` over a SQLite file. Thread-safe; open one per process."""

    def __init__(
        self, path: str | os.PathLike[str], *, history: int = 10000, poll_interval: float = 0.025
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(f"store directory {self.path.parent} does not exist; create it first")
        self.history = history
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} is not a usable Ketch store: {e}") from e

    def _init_schema(self) -> None:
        db = self._db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables and app_id != _APPLICATION_ID:
            raise StoreError(f"{self.path} is an SQLite file but not a Ketch store")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema {version}, newer than this Ketch understands "
                f"({SCHEMA_VERSION}); upgrade ketch"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        with self._tx():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # ------------------------------------------------------------------ transactions
    class _Tx:
        def __init__(self, store: SqliteStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._db

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            try:
                self.store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.store._lock.release()

    def _tx(self) -> SqliteStore._Tx:
        return SqliteStore._Tx(self)

    def _meta(self, db: sqlite3.Connection, key: str) -> int:
        return int(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def _current(self, db: sqlite3.Connection, key: ObjectKey) -> Manifest | None:
        row = db.execute(
            "SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?",
            (key.kind, key.namespace, key.name),
        ).fetchone()
        return json.loads(row[0]) if row else None

    def _write_event(
        self, db: sqlite3.Connection, revision: int, etype: EventType, key: ObjectKey, body: str
    ) -> None:
        db.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?)",
            (revision, etype.value, key.kind, key.namespace, key.name, body),
        )

    def _finish(self, db: sqlite3.Connection, revision: int) -> None:
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision,))
        floor = revision - self.history
        if floor > self._meta(db, "compacted"):
            db.execute("DELETE FROM events WHERE revision <= ?", (floor,))
            db.execute("UPDATE meta SET value=? WHERE key='compacted'", (floor,))

    # ------------------------------------------------------------------ Store API
    def apply(
        self, objects: Sequence[Manifest], *, create_only: bool = False
    ) -> builtins.list[Manifest]:
        keys = [logic.check_manifest(m) for m in objects]
        if len(set(keys)) != len(keys):
            raise StoreError("the same object appears twice in one apply")
        pause_after = int(os.environ.get("KETCH_STORE_TEST_PAUSE_AFTER", "0") or 0)
        stored: builtins.list[Manifest] = []
        with self._tx() as db:
            revision = self._meta(db, "revision")
            for i, (key, incoming) in enumerate(zip(keys, objects, strict=True)):
                existing = self._current(db, key)
                revision += 1
                obj = logic.stamp(incoming, existing, revision, create_only=create_only)
                body = _dumps(obj)
                db.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?)",
                    (key.kind, key.namespace, key.name, revision, body),
                )
                etype = EventType.ADDED if existing is None else EventType.MODIFIED
                self._write_event(db, revision, etype, key, body)
                stored.append(obj)
                if pause_after and i + 1 == pause_after:
                    _test_pause()
            self._finish(db, revision)
        return stored

    def get(self, kind: str, namespace: str, name: str) -> Manifest:
        key = ObjectKey(kind, namespace, name)
        with self._lock:
            obj = self._current(self._db, key)
        if obj is None:
            raise NotFoundError(key)
        return obj

    def list(
        self, kind: str | None = None, namespace: str | None = None, selector: str | None = None
    ) -> ListResult:
        sql = "SELECT body FROM objects WHERE 1=1"
        args: builtins.list[object] = []
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if namespace is not None:
            sql += " AND namespace=?"
            args.append(namespace)
        sql += " ORDER BY kind, namespace, name"
        with self._lock:
            # One read transaction, so the items and the revision are consistent.
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(sql, args).fetchall()
                revision = self._meta(self._db, "revision")
            finally:
                self._db.execute("COMMIT")
        return ListResult(logic.select((json.loads(r[0]) for r in rows), selector), revision)

    def delete(
        self, kind: str, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Manifest:
        key = ObjectKey(kind, namespace, name)
        with self._tx() as db:
            existing = self._current(db, key)
            if existing is None:
                raise NotFoundError(key)
            logic.check_delete(key, existing, resource_version)
            revision = self._meta(db, "revision")
            victims: builtins.list[tuple[ObjectKey, Manifest]] = []
            if kind == "Namespace":
                # Kubernetes deletes a namespace's contents with it (asynchronously, via the
                # namespace controller); Ketch does it in the same transaction.
                for row in db.execute(
                    "SELECT kind, name, body FROM objects WHERE namespace=? ORDER BY kind, name",
                    (name,),
                ).fetchall():
                    victims.append((ObjectKey(row[0], name, row[1]), json.loads(row[2])))
            victims.append((key, existing))
            result = existing
            for vkey, vobj in victims:
                revision += 1
                gone = logic.deleted_view(vobj, revision)
                db.execute(
                    "DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
                    (vkey.kind, vkey.namespace, vkey.name),
                )
                self._write_event(db, revision, EventType.DELETED, vkey, _dumps(gone))
                result = gone
            self._finish(db, revision)
        return result

    def events(
        self, since: int, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[WatchEvent]:
        sql = "SELECT revision, type, body FROM events WHERE revision > ?"
        args: builtins.list[object] = [since]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if namespace is not None:
            sql += " AND namespace=?"
            args.append(namespace)
        sql += " ORDER BY revision"
        with self._lock:
            self._db.execute("BEGIN")
            try:
                compacted = self._meta(self._db, "compacted")
                if since < compacted:
                    raise RevisionTooOldError(since, compacted + 1)
                rows = self._db.execute(sql, args).fetchall()
            finally:
                self._db.execute("COMMIT")
        return [WatchEvent(EventType(t), r, json.loads(b)) for r, t, b in rows]

    def watch(
        self,
        since: int,
        kind: str | None = None,
        namespace: str | None = None,
        *,
        timeout: float | None = None,
    ) -> Iterator[WatchEvent]:
        last_activity = time.monotonic()
        last_version: int | None = None
        last_rev_seen = since
        while True:
            with self._lock:
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
                head = self._meta(self._db, "revision")
            if version != last_version or head != last_rev_seen:
                last_version = version
                batch = self.events(since, kind, namespace)
                last_rev_seen = head
                for ev in batch:
                    since = ev.revision
                    last_activity = time.monotonic()
                    yield ev
                if batch:
                    continue
            if timeout is not None and time.monotonic() - last_activity >= timeout:
                return
            time.sleep(self.poll_interval)

    def revision(self) -> int:
        with self._lock:
            return self._meta(self._db, "revision")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _test_pause() -> None:
    """Test hook (KETCH_STORE_TEST_PAUSE_AFTER=N): announce that the transaction is open and
    half-written, then wait to be killed."""
    os.write(1, b"MID-TRANSACTION\n")
    time.sleep(3600)
