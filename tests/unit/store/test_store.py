"""Store semantics, run against both backends; multi-process and crash tests on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.store import (
    AlreadyExistsError,
    ConflictError,
    EventType,
    MemoryStore,
    NotFoundError,
    RevisionTooOldError,
    SqliteStore,
    Store,
    StoreError,
)


def svc(
    name: str, ns: str = "default", port: int = 80, labels: dict[str, str] | None = None
) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"ports": [{"port": port}]},
    }


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = (
        SqliteStore(tmp_path / "s.db", history=50)
        if request.param == "sqlite"
        else MemoryStore(history=50)
    )
    yield s
    s.close()


def test_create_get_update_metadata(store: Store) -> None:
    [created] = store.apply([svc("a")])
    meta = created["metadata"]
    assert meta["uid"]
    assert meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["resourceVersion"] == str(store.revision())
    assert store.get("Service", "default", "a") == created
    # Same spec, new label: generation stays; new spec: generation bumps.
    [relabeled] = store.apply([svc("a", labels={"x": "1"})])
    assert relabeled["metadata"]["generation"] == 1
    assert int(relabeled["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    [changed] = store.apply([svc("a", port=81)])
    assert changed["metadata"]["generation"] == 2
    assert changed["metadata"]["uid"] == meta["uid"]
    assert changed["metadata"]["creationTimestamp"] == meta["creationTimestamp"]


def test_list_filters(store: Store) -> None:
    store.apply(
        [svc("a", labels={"app": "x"}), svc("b", labels={"app": "y"}), svc("c", ns="other")]
    )
    store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}])
    assert [m["metadata"]["name"] for m in store.list("Service").items] == ["a", "b", "c"]
    assert [m["metadata"]["name"] for m in store.list("Service", "default").items] == ["a", "b"]
    assert [m["metadata"]["name"] for m in store.list("Service", None, "app=y").items] == ["b"]
    assert [m["metadata"]["name"] for m in store.list("Service", None, "app!=y").items] == [
        "a",
        "c",
    ]
    assert {m["kind"] for m in store.list().items} == {"Service", "Namespace"}
    assert "namespace" not in store.get("Namespace", "", "other")["metadata"]
    assert store.list("Service").revision == store.revision()


def test_optimistic_concurrency(store: Store) -> None:
    [a] = store.apply([svc("a")])
    stale = dict(a)
    store.apply([svc("a", port=90)])  # someone else changes it
    with pytest.raises(ConflictError, match="resourceVersion"):
        store.apply([{**stale, "spec": {"ports": [{"port": 99}]}}])
    with pytest.raises(ConflictError):
        store.apply(
            [{**svc("new"), "metadata": {**svc("new")["metadata"], "resourceVersion": "5"}}]
        )
    with pytest.raises(AlreadyExistsError):
        store.apply([svc("a")], create_only=True)
    with pytest.raises(ConflictError):
        store.delete("Service", "default", "a", resource_version=a["metadata"]["resourceVersion"])


def test_multi_object_apply_is_all_or_nothing(store: Store) -> None:
    [c] = store.apply([svc("c")])
    store.apply([svc("c", port=1)])
    rev = store.revision()
    with pytest.raises(ConflictError):
        store.apply([svc("a"), svc("b"), c])  # c carries a stale resourceVersion
    assert store.revision() == rev
    assert [m["metadata"]["name"] for m in store.list("Service").items] == ["c"]
    with pytest.raises(StoreError, match="twice"):
        store.apply([svc("x"), svc("x")])


def test_delete_and_namespace_cascade(store: Store) -> None:
    store.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            svc("a", "shop"),
            svc("b", "shop"),
            svc("keep"),
        ]
    )
    since = store.revision()
    gone = store.delete("Namespace", "", "shop")
    assert gone["metadata"]["resourceVersion"] == str(store.revision())
    assert [m["metadata"]["name"] for m in store.list("Service").items] == ["keep"]
    events = store.events(since)
    assert [(e.type, e.object["kind"], e.object["metadata"]["name"]) for e in events] == [
        (EventType.DELETED, "Service", "a"),
        (EventType.DELETED, "Service", "b"),
        (EventType.DELETED, "Namespace", "shop"),
    ]
    with pytest.raises(NotFoundError):
        store.delete("Service", "default", "nope")


def test_events_filters_and_compaction(store: Store) -> None:
    store.apply([svc("a"), svc("b", "other")])
    evs = store.events(0, "Service", "other")
    assert [(e.type, e.object["metadata"]["name"]) for e in evs] == [(EventType.ADDED, "b")]
    for i in range(60):  # history=50
        store.apply([svc("a", port=1000 + i)])
    with pytest.raises(RevisionTooOldError, match="list again"):
        store.events(1)
    recent = store.events(store.revision() - 10)
    assert len(recent) == 10
    assert all(e.type == EventType.MODIFIED for e in recent)


def test_watch_blocks_then_yields_in_order(store: Store) -> None:
    import threading

    start = store.revision()
    seen: list[int] = []

    def consume() -> None:
        for ev in store.watch(start, "Service", timeout=2.0):
            seen.append(ev.revision)
            if len(seen) == 3:
                return

    t = threading.Thread(target=consume)
    t.start()
    store.apply([svc("a")])
    store.apply([svc("b"), svc("c")])
    t.join(10)
    assert seen == [start + 1, start + 2, start + 3]


def test_watch_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """A consumer that restarts from its last revision sees every change exactly once, even
    with writes (from another process) while it was down."""
    db = tmp_path / "s.db"
    writer = SqliteStore(db)
    consumer = SqliteStore(db)
    got: list[tuple[int, str]] = []
    last = 0
    writer.apply([svc(f"s{i}") for i in range(5)])
    for ev in consumer.watch(last, timeout=0.3):
        got.append((ev.revision, ev.object["metadata"]["name"]))
        last = ev.revision
        if len(got) == 3:
            break  # consumer "crashes" after 3 events
    consumer.close()
    _run_child(
        db, "s.apply([svc('late1')]); s.delete('Service', 'default', 's0'); s.apply([svc('late2')])"
    )
    consumer = SqliteStore(db)
    for ev in consumer.watch(last, timeout=0.3):
        got.append((ev.revision, ev.object["metadata"]["name"]))
        last = ev.revision
    revisions = [r for r, _ in got]
    assert revisions == list(range(1, writer.revision() + 1))
    assert [n for _, n in got] == ["s0", "s1", "s2", "s3", "s4", "late1", "s0", "late2"]
    consumer.close()
    writer.close()


CHILD_PRELUDE = textwrap.dedent(
    """
    import sys
    from ketch.store import SqliteStore, ConflictError
    def svc(name, ns='default', port=80):
        return {'apiVersion': 'v1', 'kind': 'Service', 'metadata': {'name': name, 'namespace': ns}, 'spec': {'ports': [{'port': port}]}}
    s = SqliteStore(sys.argv[1])
    """
)


def _run_child(db: Path, code: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + code, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if env is None:
        _, errs = proc.communicate(timeout=60)
        assert proc.returncode == 0, errs
    return proc


def test_two_processes_conflict_detected(tmp_path: Path) -> None:
    """Two processes read the same resourceVersion and both update: exactly one wins."""
    db = tmp_path / "s.db"
    s = SqliteStore(db)
    [obj] = s.apply([svc("a")])
    rv = obj["metadata"]["resourceVersion"]
    code = f"""
import time
obj = s.get('Service', 'default', 'a')
assert obj['metadata']['resourceVersion'] == {rv!r}
obj['spec']['ports'][0]['port'] = int(sys.argv[2])
open(sys.argv[1] + '.ready.' + sys.argv[2], 'w').close()
while not __import__('os').path.exists(sys.argv[1] + '.go'):
    time.sleep(0.005)
try:
    s.apply([obj]); print('won')
except ConflictError as e:
    print('conflict', e)
"""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_PRELUDE + code, str(db), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for port in (1001, 1002)
    ]
    import time

    deadline = time.monotonic() + 60
    while not all(Path(f"{db}.ready.{p}").exists() for p in (1001, 1002)):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    Path(f"{db}.go").touch()
    outs = [p.communicate(timeout=60) for p in procs]
    results = sorted(o.split()[0] for o, _ in outs)
    assert results == ["conflict", "won"], outs
    final = s.get("Service", "default", "a")
    assert final["spec"]["ports"][0]["port"] in (1001, 1002)
    assert int(final["metadata"]["resourceVersion"]) == int(rv) + 1
    s.close()


@pytest.mark.parametrize("kill_after", [1, 700, 1999])
def test_sigkill_mid_apply_leaves_all_or_none(tmp_path: Path, kill_after: int) -> None:
    db = tmp_path / "s.db"
    SqliteStore(db).close()
    batch = "s.apply([svc(f'o{i}') for i in range(2000)]); print('DONE')"
    proc = _run_child(db, batch, env={"KETCH_STORE_TEST_PAUSE_AFTER": str(kill_after)})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "MID-TRANSACTION"  # the transaction is half-written
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    s = SqliteStore(db)
    assert s.list("Service").items == []  # none of the batch
    assert s.revision() == 0
    # The store is healthy afterwards, and a full run applies everything.
    _run_child(db, batch)
    assert len(s.list("Service").items) == 2000
    assert s.revision() == 2000
    s.close()


def test_durable_across_reopen_and_bad_files(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with SqliteStore(db) as s:
        s.apply([svc("a")])
    with SqliteStore(db) as s:
        assert s.get("Service", "default", "a")["metadata"]["generation"] == 1
        assert s.revision() == 1
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(tmp_path / "missing" / "s.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable Ketch store"):
        SqliteStore(junk)
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a Ketch store"):
        SqliteStore(other)
