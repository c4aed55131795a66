"""The controller loop: watch the store, reconcile what changed, level-triggered.

One thread follows `store.watch` and hands each event to the asyncio loop, which maps it to
the keys it affects (a pod's ReplicaSet, its namespace's endpoints, ...) and puts them on
per-controller work queues. A queue holds each key at most once; one worker per controller
takes keys in order and runs that controller's `sync_*` (in a thread: the store is
synchronous) against the store as it is now. So:
- level-triggered: a sync never looks at the event, only at current state, and bursts of
  events for one key collapse into one sync;
- a write that loses a compare-and-swap (ConflictError) requeues its key at once (20 ms,
  doubling to 5 s if it keeps losing); any other failure is logged in one line and retried
  with back-off (1 s doubling to 30 s);
- every `resync_period` seconds every key is queued again, which heals lost events and
  notices what only time changes (a node whose heartbeat went stale, minReadySeconds);
- the endpoint controller has its own queue and worker, so a pod's Ready change reaches its
  EndpointSlices within one watch poll plus one sync (tens of milliseconds), whatever the
  other controllers are doing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from ketch.cluster.controllers import sync
from ketch.cluster.controllers.meta import controller_ref_of, field
from ketch.store import (
    AlreadyExistsError,
    ConflictError,
    EventType,
    RevisionTooOldError,
    Store,
    StoreError,
    WatchEvent,
)
from ketch.util.tasks import spawn

log = logging.getLogger("ketch.cluster.controllers")

Key = Hashable
Clock = Callable[[], dt.datetime]
_MAX_BACKOFF = 30.0
_RACE_RETRY = 0.02
_MAX_RACE_BACKOFF = 5.0
_RACE_WARN = 8  # this many conflicts in a row on one key is worth a log line
_SCHEDULER_KEY = "pending-pods"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WorkQueue:
    """Keys waiting for a sync, each at most once, in arrival order."""

    def __init__(self) -> None:
        self._keys: dict[Key, None] = {}
        self._ready = asyncio.Event()

    def add(self, key: Key) -> None:
        self._keys[key] = None
        self._ready.set()

    def add_after(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(max(delay, 0.0), self.add, key)

    async def get(self) -> Key:
        while not self._keys:
            self._ready.clear()
            await self._ready.wait()
        key = next(iter(self._keys))
        del self._keys[key]
        return key

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class _Controller:
    name: str
    sync: Callable[[Store, Key, dt.datetime], float | None]
    keys: Callable[[WatchEvent], Iterable[Key]]


def _ns(ev: WatchEvent) -> str:
    return str(field(ev.object, "metadata").get("namespace") or "")


def _name(ev: WatchEvent) -> str:
    return str(field(ev.object, "metadata").get("name") or "")


def _scheduler_keys(ev: WatchEvent) -> Iterable[Key]:
    kind = ev.object.get("kind")
    if kind == "Node":
        return [_SCHEDULER_KEY]
    unbound = not field(ev.object, "spec").get("nodeName")
    if kind == "Pod" and (ev.type == EventType.ADDED or (ev.type != EventType.DELETED and unbound)):
        return [_SCHEDULER_KEY]
    return []


def _owner_key(ev: WatchEvent, owner_kind: str) -> list[Key]:
    ref = controller_ref_of(ev.object)
    if ref is not None and ref.get("kind") == owner_kind and ref.get("name"):
        return [(_ns(ev), str(ref["name"]))]
    return []


def _replicaset_keys(ev: WatchEvent) -> Iterable[Key]:
    kind = ev.object.get("kind")
    if kind == "ReplicaSet" and ev.type != EventType.DELETED:
        return [(_ns(ev), _name(ev))]
    if kind == "Pod":
        return _owner_key(ev, "ReplicaSet")
    return []


def _deployment_keys(ev: WatchEvent) -> Iterable[Key]:
    kind = ev.object.get("kind")
    if kind == "Deployment" and ev.type != EventType.DELETED:
        return [(_ns(ev), _name(ev))]
    if kind == "ReplicaSet":
        return _owner_key(ev, "Deployment")
    return []


def _endpoint_keys(ev: WatchEvent) -> Iterable[Key]:
    if ev.object.get("kind") in ("Pod", "Service", "EndpointSlice") and _ns(ev):
        return [_ns(ev)]
    return []


def _gc_keys(ev: WatchEvent) -> Iterable[Key]:
    return [_ns(ev)] if ev.type == EventType.DELETED and _ns(ev) else []


def _pair(key: Key) -> tuple[str, str]:
    assert isinstance(key, tuple)
    return str(key[0]), str(key[1])


CONTROLLERS = (
    _Controller(
        "scheduler",
        lambda store, _key, now: 0.05 if sync.sync_scheduler(store, now) else None,
        _scheduler_keys,
    ),
    _Controller(
        "replicaset",
        lambda store, key, now: sync.sync_replicaset(store, *_pair(key), now),
        _replicaset_keys,
    ),
    _Controller(
        "deployment",
        lambda store, key, now: sync.sync_deployment(store, *_pair(key), now),
        _deployment_keys,
    ),
    _Controller(
        "endpoints",
        lambda store, key, now: sync.sync_endpoints(store, str(key)),
        _endpoint_keys,
    ),
    _Controller("gc", lambda store, key, now: sync.sync_gc(store, str(key)), _gc_keys),
)


def resync_keys(store: Store) -> dict[str, list[Key]]:
    """Every key of every controller, from one listing of the store."""
    items = store.list().items
    namespaces = sorted({str(m["metadata"].get("namespace") or "") for m in items} - {""})
    out: dict[str, list[Key]] = {
        "scheduler": [_SCHEDULER_KEY],
        "replicaset": [],
        "deployment": [],
        "endpoints": list(namespaces),
        "gc": list(namespaces),
    }
    for m in items:
        meta = m["metadata"]
        if m.get("kind") == "ReplicaSet":
            out["replicaset"].append((str(meta.get("namespace")), str(meta["name"])))
        elif m.get("kind") == "Deployment":
            out["deployment"].append((str(meta.get("namespace")), str(meta["name"])))
    return out


class ControllerManager:
    """The running controllers of one store; `run(stop)` until stop is set."""

    def __init__(
        self, store: Store, *, resync_period: float = 10.0, clock: Clock = _utcnow
    ) -> None:
        self.store = store
        self.resync_period = resync_period
        self.clock = clock
        self.queues = {c.name: WorkQueue() for c in CONTROLLERS}
        self._halt = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _dispatch(self, ev: WatchEvent) -> None:
        for ctl in CONTROLLERS:
            for key in ctl.keys(ev):
                self.queues[ctl.name].add(key)

    async def _resync(self) -> None:
        keys = await asyncio.to_thread(resync_keys, self.store)
        for name, ks in keys.items():
            for key in ks:
                self.queues[name].add(key)

    async def _resync_forever(self) -> None:
        while True:
            try:
                await self._resync()
            except StoreError as e:
                log.warning("resync failed (will retry): %s", e)
            await asyncio.sleep(self.resync_period)

    def _watch(self, since: int) -> None:
        """The watch thread: store events -> the loop, until halted."""
        loop = self._loop
        assert loop is not None
        while not self._halt.is_set():
            try:
                for ev in self.store.watch(since, timeout=0.2):
                    since = ev.revision
                    loop.call_soon_threadsafe(self._dispatch, ev)
                    if self._halt.is_set():
                        return
            except RevisionTooOldError:
                since = self.store.revision()
                log.warning("watch fell behind the store's history; resyncing everything")
                loop.call_soon_threadsafe(lambda: spawn(self._resync(), "controllers-resync"))
            except StoreError as e:
                log.warning("watching the store failed (retrying in 1s): %s", e)
                self._halt.wait(1.0)

    async def _work(self, ctl: _Controller) -> None:
        queue = self.queues[ctl.name]
        failures: dict[Key, int] = {}
        races: dict[Key, int] = {}
        while True:
            key = await queue.get()
            job = asyncio.get_running_loop().run_in_executor(
                None, ctl.sync, self.store, key, self.clock()
            )
            try:
                after = await asyncio.shield(job)
            except asyncio.CancelledError:
                # Stopping: let a sync that is already writing finish (its thread cannot be
                # interrupted), so nothing touches the store after run() returns.
                await asyncio.wait([job])
                raise
            except (ConflictError, AlreadyExistsError) as e:
                # Someone wrote in between: decide again from fresh state, right away; if it
                # keeps happening (a name held by an object we do not own), back off.
                n = races.get(key, 0) + 1
                races[key] = n
                delay = min(_RACE_RETRY * 2.0 ** (n - 1), _MAX_RACE_BACKOFF)
                (log.warning if n == _RACE_WARN else log.debug)(
                    "%s %s: %s; retrying in %.2fs", ctl.name, key, e, delay
                )
                queue.add_after(key, delay)
                continue
            except Exception as e:
                # The one boundary of this worker: a bad object or a bug must not stop the
                # other keys or the other controllers.
                n = failures.get(key, 0) + 1
                failures[key] = n
                delay = min(2.0 ** (n - 1), _MAX_BACKOFF)
                log.error(
                    "%s %s: sync failed (%s: %s); retrying in %.0fs",
                    ctl.name,
                    key,
                    type(e).__name__,
                    e,
                    delay,
                )
                queue.add_after(key, delay)
                continue
            failures.pop(key, None)
            races.pop(key, None)
            if after is not None:
                queue.add_after(key, after)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        since = await asyncio.to_thread(self.store.revision)
        watcher = threading.Thread(
            target=self._watch, args=(since,), name="controllers-watch", daemon=True
        )
        watcher.start()
        tasks = [spawn(self._work(c), f"controller-{c.name}") for c in CONTROLLERS]
        tasks.append(spawn(self._resync_forever(), "controllers-resync-timer"))
        log.info("controllers running: %s", ", ".join(c.name for c in CONTROLLERS))
        try:
            await stop.wait()
        finally:
            self._halt.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(watcher.join)
            log.info("controllers stopped")


async def run_controllers(
    store: Store, stop: asyncio.Event, *, resync_period: float = 10.0
) -> None:
    """Run the scheduler, ReplicaSet, Deployment, endpoint and garbage controllers against
    `store` until `stop` is set (see docs/controllers.md)."""
    await ControllerManager(store, resync_period=resync_period).run(stop)
