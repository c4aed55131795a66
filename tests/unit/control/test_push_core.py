"""The push pipeline's pure core: diff, the debouncer (fake clock tables), snapshot deltas
and their order (Authorization before Address), and the store watch loop on a memory store."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ketch.control.push import (
    Debouncer,
    Diff,
    Patch,
    Pusher,
    PushNow,
    Resources,
    SnapshotHolder,
    StoreChange,
    TypeDelta,
    diff,
    push_order,
    watch_store,
)
from ketch.store.base import EventType, RevisionTooOldError, StoreError, WatchEvent
from ketch.store.memory import MemoryStore
from ketch.util.tasks import spawn
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

# --- diff -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "changed", "removed"),
    [
        ({}, {}, set(), set()),
        ({}, {"a": "1"}, {"a"}, set()),
        ({"a": "1"}, {}, set(), {"a"}),
        ({"a": "1"}, {"a": "1"}, set(), set()),
        ({"a": "1"}, {"a": "2"}, {"a"}, set()),
        ({"a": "1", "b": "1"}, {"b": "2", "c": "1"}, {"b", "c"}, {"a"}),
        ({"a": ""}, {"a": ""}, set(), set()),  # empty versions compare like any other
    ],
)
def test_diff(
    old: dict[str, str], new: dict[str, str], changed: set[str], removed: set[str]
) -> None:
    d = diff(old, new)
    assert d == Diff(frozenset(changed), frozenset(removed))
    assert bool(d) == bool(changed or removed)


# --- debouncer ------------------------------------------------------------------------------

# Each step: ("event", t) feeds an event at time t; ("poll", t, expected) polls at t and
# expects None or (events, reason); ("deadline", expected) checks the next due time.
DEBOUNCE_TABLES: dict[str, list[tuple[Any, ...]]] = {
    "nothing pending never pushes": [
        ("deadline", None),
        ("poll", 0.0, None),
        ("poll", 100.0, None),
    ],
    "one event, pushed after 100 ms quiet": [
        ("event", 1.0),
        ("deadline", 1.1),
        ("poll", 1.05, None),
        ("poll", 1.1, (1, "quiet")),
        ("deadline", None),
        ("poll", 1.2, None),  # already pushed
    ],
    "a burst is merged and the quiet window restarts per event": [
        ("event", 0.0),
        ("event", 0.05),
        ("event", 0.09),
        ("deadline", 0.19),
        ("poll", 0.15, None),
        ("poll", 0.19, (3, "quiet")),
    ],
    "a steady stream is pushed at 10 s max": [
        *[("event", i * 0.05) for i in range(200)],  # every 50 ms until 9.95 s
        ("poll", 9.95, None),
        ("event", 9.99),
        ("deadline", 10.0),
        ("poll", 10.0, (201, "max")),
        ("event", 10.02),  # the next burst starts its own max window
        ("deadline", 10.12),
        ("poll", 10.12, (1, "quiet")),
    ],
    "late poll pushes once with everything": [
        ("event", 0.0),
        ("event", 5.0),
        ("poll", 60.0, (2, "max")),
        ("poll", 61.0, None),
    ],
    "events out of order do not move the quiet window back": [
        ("event", 2.0),
        ("event", 1.0),
        ("deadline", 2.1),
        ("poll", 2.05, None),
    ],
}


@pytest.mark.parametrize("name", DEBOUNCE_TABLES)
def test_debouncer_table(name: str) -> None:
    deb = Debouncer()
    for step in DEBOUNCE_TABLES[name]:
        if step[0] == "event":
            deb.event(step[1])
        elif step[0] == "deadline":
            got = deb.deadline()
            assert got == (None if step[1] is None else pytest.approx(step[1])), step
        else:
            _, now, expected = step
            got_push = deb.poll(now)
            want = None if expected is None else PushNow(*expected)
            assert got_push == want, (name, step)


def test_debouncer_rejects_nonsense_windows() -> None:
    with pytest.raises(ValueError, match="quiet"):
        Debouncer(quiet=0)
    with pytest.raises(ValueError, match="quiet"):
        Debouncer(quiet=2, max_delay=1)


# --- snapshots ------------------------------------------------------------------------------


class FakeBuild:
    """A stand-in for translate + encode: returns whatever the test set, counting calls."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, tuple[str, Any]]] = {}
        self.calls = 0

    def __call__(self) -> Resources:
        self.calls += 1
        return {t: dict(r) for t, r in self.resources.items()}


def test_push_order_puts_authorization_before_address() -> None:
    assert push_order([ADDRESS_TYPE, "z.example/other", AUTHORIZATION_TYPE, "a.example/x"]) == [
        AUTHORIZATION_TYPE,
        ADDRESS_TYPE,
        "a.example/x",
        "z.example/other",
    ]


def test_snapshot_holder_deltas_per_type_in_push_order() -> None:
    build = FakeBuild()
    holder = SnapshotHolder(build)
    assert holder.current.version == 0
    assert holder.rebuild() == []  # empty build: nothing changed, version stays
    assert holder.current.version == 0

    build.resources = {
        ADDRESS_TYPE: {"w1": ("v1", "A1"), "w2": ("v1", "A2")},
        AUTHORIZATION_TYPE: {"ns/p": ("v1", "P")},
    }
    deltas = holder.rebuild()
    assert [d.type_url for d in deltas] == [AUTHORIZATION_TYPE, ADDRESS_TYPE]
    assert deltas[0].changed == {"ns/p": ("v1", "P")}
    assert deltas[1].changed == {"w1": ("v1", "A1"), "w2": ("v1", "A2")}
    assert holder.current.version == 1

    # Only Address changes: w1 updated, w2 removed, w3 added; Authorization is left out.
    build.resources[ADDRESS_TYPE] = {"w1": ("v2", "A1'"), "w3": ("v1", "A3")}
    (delta,) = holder.rebuild()
    assert delta.type_url == ADDRESS_TYPE
    assert delta.changed == {"w1": ("v2", "A1'"), "w3": ("v1", "A3")}
    assert delta.removed == {"w2"}
    assert holder.current.version == 2
    assert holder.current.versions(ADDRESS_TYPE) == {"w1": "v2", "w3": "v1"}

    # Same content again: no delta, no new version.
    assert holder.rebuild() == []
    assert holder.current.version == 2

    # A whole type disappears: every name removed.
    del build.resources[AUTHORIZATION_TYPE]
    (delta,) = holder.rebuild()
    assert (delta.type_url, dict(delta.changed), delta.removed) == (
        AUTHORIZATION_TYPE,
        {},
        {"ns/p"},
    )


def test_snapshot_holder_is_not_changed_by_later_mutation_of_the_build_result() -> None:
    build = FakeBuild()
    build.resources = {ADDRESS_TYPE: {"w1": ("v1", "A1")}}
    holder = SnapshotHolder(build)
    holder.rebuild()
    build.resources[ADDRESS_TYPE]["w1"] = ("v9", "X")
    assert holder.current.of(ADDRESS_TYPE) == {"w1": ("v1", "A1")}


def test_snapshot_holder_applies_patches_and_falls_back_to_a_full_build() -> None:
    build = FakeBuild()
    build.resources = {
        ADDRESS_TYPE: {"w1": ("v1", "A1"), "w2": ("v1", "A2")},
        AUTHORIZATION_TYPE: {"ns/p": ("v1", "P")},
    }
    patches: list[Patch | None] = []
    seen: list[list[StoreChange]] = []

    def update(changes: Any) -> Patch | None:
        seen.append(list(changes))
        return patches.pop(0)

    holder = SnapshotHolder(build, update)
    change = [StoreChange(5)]
    holder.rebuild(change)  # nothing built yet: a full build, `update` not asked
    assert (build.calls, seen) == (1, [])
    assert holder.current.version == 1

    # a patch: an unchanged version is not a change, w1 updated, w3 added, w2 removed,
    # a removal of an unknown name ignored; push order kept
    patches.append(
        Patch(
            changed={
                ADDRESS_TYPE: {"w1": ("v2", "A1'"), "w3": ("v1", "A3")},
                AUTHORIZATION_TYPE: {"ns/p": ("v1", "P")},
            },
            removed={ADDRESS_TYPE: frozenset({"w2", "nope"})},
        )
    )
    (delta,) = holder.rebuild(change)
    assert seen == [change]
    assert build.calls == 1
    assert (delta.type_url, dict(delta.changed), delta.removed) == (
        ADDRESS_TYPE,
        {"w1": ("v2", "A1'"), "w3": ("v1", "A3")},
        {"w2"},
    )
    assert holder.current.version == 2
    assert holder.current.versions(ADDRESS_TYPE) == {"w1": "v2", "w3": "v1"}
    assert holder.current.versions(AUTHORIZATION_TYPE) == {"ns/p": "v1"}

    patches.append(Patch())  # nothing changed: no delta, no new version
    assert holder.rebuild(change) == []
    assert holder.current.version == 2

    patches.append(None)  # the update cannot tell: full build, diffed as before
    build.resources[ADDRESS_TYPE] = {"w1": ("v2", "A1'")}
    (delta,) = holder.rebuild(change)
    assert build.calls == 2
    assert delta.removed == {"w3"}
    assert holder.rebuild(None) == []  # no changes given: a full build
    assert build.calls == 3


async def test_pusher_hands_changes_to_the_rebuild_and_goes_full_after_resync_or_failure() -> None:
    calls: list[list[StoreChange] | None] = []
    failures: list[Exception] = []

    class Holder(SnapshotHolder):
        def rebuild(self, changes: Any = None) -> list[TypeDelta]:
            calls.append(None if changes is None else list(changes))
            if failures:
                raise failures.pop()
            return []

    pusher = Pusher(Holder(FakeBuild()), lambda _d: None)
    a, b = StoreChange(1), StoreChange(2)
    await pusher.push_now()
    pusher.changed(a)
    pusher.changed(b)
    await pusher.push_now()
    pusher.changed(StoreChange(3, resync=True))
    pusher.changed(StoreChange(4))
    await pusher.push_now()
    failures.append(RuntimeError("bug"))
    pusher.changed(StoreChange(5))
    await pusher.push_now()
    pusher.changed(StoreChange(6))
    await pusher.push_now()  # the failed change is not lost: a full rebuild
    pusher.changed(StoreChange(7))
    await pusher.push_now()
    assert calls == [None, [a, b], None, [StoreChange(5)], None, [StoreChange(7)]]


# --- the store watch loop -------------------------------------------------------------------


def _ns(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


class Seen:
    """The changes `watch_store` reported, and a way to wait for more."""

    def __init__(self) -> None:
        self.changes: list[StoreChange] = []
        self._more = asyncio.Event()

    def __call__(self, change: StoreChange) -> None:
        self.changes.append(change)
        self._more.set()

    async def until(self, cond: Any, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not cond(self.changes):
                self._more.clear()
                await self._more.wait()


async def test_watch_store_follows_the_memory_store_in_order() -> None:
    store = MemoryStore()
    store.apply([_ns("before")])
    seen = Seen()
    task = spawn(watch_store(store, seen, wait=0.05), "test-watch")
    try:
        await asyncio.sleep(0.1)
        store.apply([_ns("a"), _ns("b")])
        store.delete("Namespace", "", "a")
        await seen.until(lambda cs: sum(len(c.events) for c in cs) == 3)
    finally:
        task.cancel()
    events = [e for c in seen.changes for e in c.events]
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [
        (EventType.ADDED, "a"),
        (EventType.ADDED, "b"),
        (EventType.DELETED, "a"),
    ]  # "before" was not replayed: the watch starts at the current revision
    assert seen.changes[-1].revision == store.revision()
    assert not any(c.resync for c in seen.changes)


async def test_watch_store_from_a_revision_replays_exactly_what_follows() -> None:
    store = MemoryStore()
    store.apply([_ns("a")])
    rev = store.revision()
    store.apply([_ns("b")])
    seen = Seen()
    task = spawn(watch_store(store, seen, since=rev, wait=0.05), "test-watch")
    try:
        await seen.until(bool)
    finally:
        task.cancel()
    assert [e.object["metadata"]["name"] for e in seen.changes[0].events] == ["b"]


class FlakyStore(MemoryStore):
    """A memory store whose watch fails as told: `fail` errors raised in a row."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.fail: list[Exception] = []

    def watch(self, since: int, *a: Any, **kw: Any) -> Any:
        if self.fail:
            raise self.fail.pop(0)
        return super().watch(since, *a, **kw)


async def test_watch_store_resumes_after_errors_without_losing_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ketch.control.push")
    store = FlakyStore()
    seen = Seen()
    store.fail = [StoreError("database is locked"), OSError("disk on fire")]
    store.apply([_ns("a")])  # happens while the watch is failing
    task = spawn(watch_store(store, seen, since=0, wait=0.05, retry_delay=0.01), "test-watch")
    try:
        await seen.until(bool)
    finally:
        task.cancel()
    assert [e.object["metadata"]["name"] for e in seen.changes[0].events] == ["a"]
    # One warning for the failing spell, one info when it recovers; no tracebacks.
    assert [r.levelname for r in caplog.records if r.name == "ketch.control.push"] == [
        "WARNING",
        "INFO",
    ]
    assert all(r.exc_info is None for r in caplog.records)


async def test_watch_store_resyncs_when_history_is_gone() -> None:
    store = MemoryStore(history=2)
    for i in range(5):
        store.apply([_ns(f"n{i}")])
    seen = Seen()
    task = spawn(watch_store(store, seen, since=0, wait=0.05), "test-watch")
    try:
        await seen.until(bool)
        store.apply([_ns("later")])
        await seen.until(lambda cs: len(cs) >= 2)
    finally:
        task.cancel()
    assert seen.changes[0] == StoreChange(5, resync=True)
    assert [e.object["metadata"]["name"] for e in seen.changes[1].events] == ["later"]
    with pytest.raises(RevisionTooOldError):
        store.events(0)


def test_watch_event_type_is_what_the_loop_forwards() -> None:
    # watch_store forwards the store's own WatchEvent objects (no copy, no translation).
    ev = WatchEvent(EventType.ADDED, 1, _ns("a"))
    assert StoreChange(1, (ev,)).events[0] is ev


# --- the pusher (debouncer driven by the event loop's clock) --------------------------------


async def test_pusher_debounces_a_burst_into_one_push_and_survives_a_failing_build(
    caplog: pytest.LogCaptureFixture,
) -> None:
    build = FakeBuild()
    failures = [RuntimeError("translation bug")]

    def flaky() -> Resources:
        if failures:
            raise failures.pop()
        return build()

    pushed: list[list[TypeDelta]] = []
    more = asyncio.Event()

    def on_push(deltas: list[TypeDelta]) -> None:
        pushed.append(deltas)
        more.set()

    holder = SnapshotHolder(flaky)
    pusher = Pusher(holder, on_push, debouncer=Debouncer(quiet=0.02, max_delay=1.0))
    assert await pusher.push_now() == []  # the build failed: logged, previous snapshot kept
    assert "translation bug" in caplog.text
    assert holder.current.version == 0

    build.resources = {ADDRESS_TYPE: {"a": ("1", "A")}}
    task = spawn(pusher.run(), "test-pusher")
    try:
        for _ in range(5):
            pusher.changed()
        await asyncio.wait_for(more.wait(), 5)
        await asyncio.sleep(0.1)  # no second push follows the burst
    finally:
        task.cancel()
    assert len(pushed) == 1
    assert [d.type_url for d in pushed[0]] == [ADDRESS_TYPE]
    assert holder.current.version == 1
