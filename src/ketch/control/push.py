"""The push pipeline: store changes -> debounced rebuild -> per-type deltas -> delta ADS.

Data path (istiod's, `XDS.md` section 4):

    Store.watch ──watch_store──> Debouncer (100 ms quiet / 10 s max)
        ──> SnapshotHolder.rebuild() (the injected `build`: translate + encode)
        ──> per-type deltas, Authorization before Address
        ──> every connected stream: its session answers with what *that* client lacks

The core is pure and tested with tables: `diff` (name -> version maps), `Debouncer` (times
in, "push now" out; no clock of its own), `SnapshotHolder` (old snapshot, new snapshot ->
ordered `TypeDelta`s) and `authenticate` (certificate or token -> node name). The I/O is the
store watch loop (`watch_store`) and the gRPC servicer further down.

Ordering ("go beyond istiod"): istiod pushes Address before Authorization
(`xds/ads.go` PushOrder), so a Workload can name a policy the proxy has not received yet and
ztunnel evaluates without it for a moment. Ketch pushes Authorization first
(`PUSH_ORDER`), so a workload never references a policy the proxy lacks.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ketch.store.base import RevisionTooOldError, Store, StoreError, WatchEvent

log = logging.getLogger("ketch.control.push")

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"
SYNCZ_TYPE = "istio.io/debug/syncz"

# Within one push: policies first, then the addresses that name them (see module docstring).
PUSH_ORDER: tuple[str, ...] = (AUTHORIZATION_TYPE, ADDRESS_TYPE)

DEBOUNCE_QUIET = 0.1  # PILOT_DEBOUNCE_AFTER
DEBOUNCE_MAX = 10.0  # PILOT_DEBOUNCE_MAX

Entry = tuple[str, Any]  # (version, google.protobuf.Any) of one resource
"""One resource as the session sends it: its version string and the packed message."""

Resources = Mapping[str, Mapping[str, Entry]]
"""type_url -> name -> (version, Any): one whole snapshot, what `build()` returns."""


def push_order(type_urls: Iterable[str]) -> list[str]:
    """`type_urls` in push order: PUSH_ORDER first, any other type after, by name."""
    rank = {t: i for i, t in enumerate(PUSH_ORDER)}
    return sorted(set(type_urls), key=lambda t: (rank.get(t, len(rank)), t))


# --- pure: diff ---------------------------------------------------------------------------


class Diff(NamedTuple):
    changed: frozenset[str]  # names new or with another version
    removed: frozenset[str]  # names gone

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


def diff(old: Mapping[str, str], new: Mapping[str, str]) -> Diff:
    """What changed between two name -> version maps of one type."""
    changed = frozenset(name for name, version in new.items() if old.get(name) != version)
    removed = frozenset(name for name in old if name not in new)
    return Diff(changed, removed)


# --- pure: debouncer ----------------------------------------------------------------------


@dataclass(frozen=True)
class PushNow:
    """The debouncer's output: push, covering `events` events, because of `reason`."""

    events: int
    reason: str  # "quiet": no event for `quiet` seconds; "max": waited `max_delay` already


class Debouncer:
    """istiod's debounce as a sans-IO object (`xds/discovery.go` debounce).

    Feed `event(now)` for each change; ask `poll(now)` whether to push; `deadline()` says
    when `poll` can next answer yes (the I/O layer sleeps until then). A push is due once
    `quiet` seconds pass without an event, or `max_delay` seconds after the first event of
    the burst, whichever comes first. Times are plain seconds from any monotonic clock.
    """

    def __init__(self, quiet: float = DEBOUNCE_QUIET, max_delay: float = DEBOUNCE_MAX) -> None:
        if quiet <= 0 or max_delay < quiet:
            raise ValueError(f"debounce needs 0 < quiet <= max, got {quiet}, {max_delay}")
        self.quiet = quiet
        self.max_delay = max_delay
        self._first: float | None = None
        self._last = 0.0
        self._events = 0

    @property
    def pending(self) -> int:
        """Events seen since the last push."""
        return self._events

    def event(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = max(self._last, now)
        self._events += 1

    def deadline(self) -> float | None:
        """When the pending events become due, or None when nothing is pending."""
        if self._first is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def poll(self, now: float) -> PushNow | None:
        """PushNow (and forget the pending events) if a push is due at `now`."""
        if self._first is None:
            return None
        # Compared as deadlines (not as elapsed time) so that polling at exactly
        # `deadline()` always pushes, whatever the float rounding.
        if now >= self._first + self.max_delay:
            reason = "max"
        elif now >= self._last + self.quiet:
            reason = "quiet"
        else:
            return None
        out = PushNow(self._events, reason)
        self._first, self._last, self._events = None, 0.0, 0
        return out


# --- pure: snapshots ----------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything served, at one point: `version` counts rebuilds that changed something."""

    version: int
    resources: Mapping[str, Mapping[str, Entry]]

    def of(self, type_url: str) -> Mapping[str, Entry]:
        return self.resources.get(type_url, {})

    def versions(self, type_url: str) -> dict[str, str]:
        return {name: entry[0] for name, entry in self.of(type_url).items()}


@dataclass(frozen=True)
class TypeDelta:
    """What one rebuild changed for one type: resources to (re)send, names to remove."""

    type_url: str
    changed: Mapping[str, Entry]
    removed: frozenset[str]


def snapshot_delta(old: Snapshot, new: Snapshot) -> list[TypeDelta]:
    """The per-type deltas from `old` to `new`, in push order; unchanged types left out."""
    out = []
    for type_url in push_order([*old.resources, *new.resources]):
        d = diff(old.versions(type_url), new.versions(type_url))
        if d:
            now = new.of(type_url)
            out.append(TypeDelta(type_url, {n: now[n] for n in sorted(d.changed)}, d.removed))
    return out


class SnapshotHolder:
    """Keeps the current snapshot; `rebuild()` calls `build` and returns what changed.

    `build` is the translation + encoding (store -> type_url -> name -> (version, Any));
    versions must change exactly when the encoded resource changes (e.g. a hash of the
    bytes, as istiod's xxhash64 of the marshaled Address).
    """

    def __init__(self, build: Callable[[], Resources]) -> None:
        self._build = build
        self._current = Snapshot(0, {})

    @property
    def current(self) -> Snapshot:
        return self._current

    def rebuild(self) -> list[TypeDelta]:
        built = self._build()
        candidate = Snapshot(self._current.version, {t: dict(r) for t, r in built.items()})
        deltas = snapshot_delta(self._current, candidate)
        if deltas:
            self._current = Snapshot(self._current.version + 1, candidate.resources)
        return deltas


# --- I/O: the store watch loop ------------------------------------------------------------


@dataclass(frozen=True)
class StoreChange:
    """Store changes up to `revision`; `resync` when history was lost (relisted)."""

    revision: int
    events: Sequence[WatchEvent] = ()
    resync: bool = False


def _next_batch(store: Store, since: int, wait: float) -> list[WatchEvent]:
    """Block up to `wait` seconds for the first change after `since`, then take what else
    is already there (one batch per wakeup, not one callback per event)."""
    for first in store.watch(since, timeout=wait):
        return [first, *store.events(first.revision)]
    return []


async def watch_store(
    store: Store,
    on_change: Callable[[StoreChange], None],
    *,
    since: int | None = None,
    wait: float = 1.0,
    retry_delay: float = 1.0,
) -> None:
    """Follow `store` from revision `since` (default: now) until cancelled.

    Store.watch blocks, so each wait runs in a worker thread for at most `wait` seconds
    (cancellation is noticed within that). A revision too old for the store's history
    relists (`StoreChange(resync=True)`); any other store failure is logged and retried
    after `retry_delay` from the same revision, so nothing is lost or repeated.
    """
    revision = store.revision() if since is None else since
    failing = False
    while True:
        try:
            batch = await asyncio.to_thread(_next_batch, store, revision, wait)
        except RevisionTooOldError as err:
            revision = await asyncio.to_thread(store.revision)
            log.warning("store watch fell behind (%s); resyncing at revision %d", err, revision)
            on_change(StoreChange(revision, resync=True))
            continue
        except (StoreError, sqlite3.Error, OSError) as err:
            if not failing:
                log.warning("store watch failed at revision %d: %s; retrying", revision, err)
            failing = True
            await asyncio.sleep(retry_delay)
            continue
        if failing:
            log.info("store watch resumed at revision %d", revision)
            failing = False
        if batch:
            revision = batch[-1].revision
            on_change(StoreChange(revision, tuple(batch)))
