"""An in-memory copy of the store's Services and EndpointSlices (and Nodes), kept current
by a store watch: what the service proxy and cluster DNS read.

Kubernetes' informers in miniature: list, then watch from the list's revision on a thread
(the store API is synchronous); on `RevisionTooOldError` list again. Each object is parsed
with its `ketch.api` model as it arrives; one that does not parse is logged once and left
out (a bad object never stops the node). `on_change` is called on the event loop after
every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ketch.api.core import Node, Service
from ketch.api.discovery import EndpointSlice
from ketch.api.loader import translate_errors
from ketch.store.base import EventType, Manifest, RevisionTooOldError, Store, StoreError

log = logging.getLogger("ketch.cluster.watch")

Key = tuple[str, str]  # (namespace, name)


class ServiceWatch:
    """Services, EndpointSlices and (with `nodes=True`) Nodes of a store, parsed, by key."""

    def __init__(
        self,
        store: Store,
        *,
        on_change: Callable[[], None],
        nodes: bool = False,
        name: str = "service-watch",
        poll_timeout: float = 0.25,
    ) -> None:
        self.store = store
        self.on_change = on_change
        self.kinds: dict[str, Any] = {"Service": Service, "EndpointSlice": EndpointSlice}
        if nodes:
            self.kinds["Node"] = Node
        self.name = name
        self.poll_timeout = poll_timeout
        self._lock = threading.Lock()
        self._objects: dict[str, dict[Key, Any]] = {k: {} for k in self.kinds}
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- reading ----------------------------------------------------------------------
    def snapshot(self) -> tuple[list[Service], list[EndpointSlice]]:
        with self._lock:
            return (
                list(self._objects["Service"].values()),
                list(self._objects["EndpointSlice"].values()),
            )

    def node(self, name: str) -> Node | None:
        with self._lock:
            nodes = self._objects.get("Node", {})
            found: Node | None = nodes.get(("", name))
            return found

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """List (so `snapshot` is complete when this returns), then watch on a thread."""
        self._loop = asyncio.get_running_loop()
        since = await asyncio.to_thread(self._relist)
        self._thread = threading.Thread(
            target=self._watch, args=(since,), name=self.name, daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    # --- the watch thread ---------------------------------------------------------------
    def _parse(self, kind: str, manifest: Manifest) -> Any:
        model = self.kinds[kind]
        try:
            return model.model_validate(manifest)
        except ValidationError as exc:
            meta = manifest.get("metadata") or {}
            problems = "; ".join(f"{path}: {msg}" for path, msg in translate_errors(exc, model))
            log.error(
                "%s: ignoring %s %s/%s, it does not parse (%s); fix it with ketch apply",
                self.name,
                kind,
                meta.get("namespace", ""),
                meta.get("name", "?"),
                problems,
            )
            return None

    @staticmethod
    def _key(manifest: Manifest) -> Key:
        meta = manifest.get("metadata") or {}
        return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def _relist(self) -> int:
        # One list of every kind: one consistent revision to watch from.
        result = self.store.list()
        fresh: dict[str, dict[Key, Any]] = {k: {} for k in self.kinds}
        for m in result.items:
            kind = str(m.get("kind", ""))
            if kind in self.kinds:
                parsed = self._parse(kind, m)
                if parsed is not None:
                    fresh[kind][self._key(m)] = parsed
        with self._lock:
            self._objects = fresh
        return result.revision

    def _notify(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self.on_change)

    def _watch(self, since: int) -> None:
        while not self._halt.is_set():
            try:
                for ev in self.store.watch(since, timeout=self.poll_timeout):
                    since = ev.revision
                    kind = str(ev.object.get("kind", ""))
                    if kind in self.kinds:
                        self._apply(kind, ev.type, ev.object)
                        self._notify()  # consumers coalesce bursts themselves
                    if self._halt.is_set():
                        break
            except RevisionTooOldError:
                log.warning("%s: watch fell behind the store's history; listing again", self.name)
                since = self._relist()
                self._notify()
            except StoreError as exc:
                log.error("%s: store watch failed: %s; retrying in 1 s", self.name, exc)
                self._halt.wait(1.0)

    def _apply(self, kind: str, type_: EventType, manifest: Manifest) -> None:
        key = self._key(manifest)
        parsed = None if type_ is EventType.DELETED else self._parse(kind, manifest)
        with self._lock:
            if parsed is None:
                self._objects[kind].pop(key, None)
            else:
                self._objects[kind][key] = parsed


async def wait_any(stop: asyncio.Event, changed: asyncio.Event, limit: float | None) -> None:
    """Until `stop` or `changed` is set, or `limit` seconds pass (None: no limit)."""
    if stop.is_set() or changed.is_set():
        return
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(changed.wait())}
    try:
        await asyncio.wait(waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
