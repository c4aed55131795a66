"""The push pipeline: store changes -> debounced rebuild -> per-type deltas -> delta ADS.

Data path (istiod's, `XDS.md` section 4):

    Store.watch ──watch_store──> Debouncer (100 ms quiet / 10 s max)
        ──> SnapshotHolder.rebuild() (the injected `build`: translate + encode)
        ──> per-type deltas, Authorization before Address
        ──> every connected stream: its session answers with what *that* client lacks

The core is pure and tested with tables: `diff` (name -> version maps), `Debouncer` (times
in, "push now" out; no clock of its own), `SnapshotHolder` (old snapshot, new snapshot ->
ordered `TypeDelta`s) and `authenticate` (certificate or token -> node name). The per-stream
protocol state is `ketch.xds.session.ServerStream` (one per stream). The I/O, in this order below: the store watch loop (`watch_store`), the `Pusher`
(debouncer on the event loop's clock), the delta ADS servicer with the client registry
(`PushServer`) and its listeners (`serve_push`).

Ordering ("go beyond istiod"): istiod pushes Address before Authorization
(`xds/ads.go` PushOrder), so a Workload can name a policy the proxy has not received yet and
ztunnel evaluates without it for a moment. Ketch pushes Authorization first
(`PUSH_ORDER`), within every push and for a stream's first answers (Address waits for the
Authorization subscription, `Limits.policy_grace` at most), so a workload never references
a policy the proxy lacks. docs/control-plane.md ("Push") has the whole picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from ketch.identity.authorize import node_from_cert
from ketch.identity.ca import CertificateAuthority
from ketch.identity.directory import NodeDirectory
from ketch.identity.errors import IdentityError, Unauthenticated
from ketch.identity.server import MAX_CONCURRENT_RPCS, MAX_MESSAGE_BYTES, RunningCa, serve_ca
from ketch.identity.tokens import TokenStore, token_id
from ketch.store.base import RevisionTooOldError, Store, StoreError, WatchEvent
from ketch.util.tasks import spawn
from ketch.xds.session import ServerStream
from ketch.xds.syncz import client_config
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, SYNCZ_TYPE

log = logging.getLogger("ketch.control.push")

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


@dataclass(frozen=True)
class Patch:
    """Part of a new snapshot, from an incremental build: per type, resources (re)built and
    names removed; every other resource is unchanged. A resource listed with its current
    version is not sent again."""

    changed: Mapping[str, Mapping[str, Entry]] = field(default_factory=dict)
    removed: Mapping[str, frozenset[str]] = field(default_factory=dict)


Update = Callable[[Sequence["StoreChange"]], Patch | None]
"""An incremental build: store changes since the last build -> the Patch they make, or
None when it cannot tell (then `build` runs)."""


class SnapshotHolder:
    """Keeps the current snapshot; `rebuild()` calls `build` and returns what changed.

    `build` is the translation + encoding (store -> type_url -> name -> (version, Any));
    versions must change exactly when the encoded resource changes (e.g. a hash of the
    bytes, as istiod's xxhash64 of the marshaled Address). `update`, when given, is the
    incremental path: `rebuild(changes)` hands it the store changes since the last rebuild
    and applies its Patch (only the patched names are compared), falling back to `build`
    when there are no changes to go by (the first build, a resync) or it returns None.
    """

    def __init__(self, build: Callable[[], Resources], update: Update | None = None) -> None:
        self._build = build
        self._update = update
        self._built = False
        self._current = Snapshot(0, {})

    @property
    def current(self) -> Snapshot:
        return self._current

    def rebuild(self, changes: Sequence[StoreChange] | None = None) -> list[TypeDelta]:
        if changes is not None and self._update is not None and self._built:
            patch = self._update(changes)
            if patch is not None:
                return self._patch(patch)
        built = self._build()
        self._built = True
        candidate = Snapshot(self._current.version, {t: dict(r) for t, r in built.items()})
        deltas = snapshot_delta(self._current, candidate)
        if deltas:
            self._current = Snapshot(self._current.version + 1, candidate.resources)
        return deltas

    def _patch(self, patch: Patch) -> list[TypeDelta]:
        resources = dict(self._current.resources)
        deltas = []
        for type_url in push_order([*patch.changed, *patch.removed]):
            old = self._current.of(type_url)
            changed = {
                n: e
                for n, e in patch.changed.get(type_url, {}).items()
                if n not in old or old[n][0] != e[0]
            }
            removed = frozenset(n for n in patch.removed.get(type_url, ()) if n in old)
            if not changed and not removed:
                continue
            new = dict(old)
            new.update(changed)
            for name in removed:
                del new[name]
            resources[type_url] = new
            deltas.append(TypeDelta(type_url, {n: changed[n] for n in sorted(changed)}, removed))
        if deltas:
            self._current = Snapshot(self._current.version + 1, resources)
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


class Pusher:
    """Drives the debouncer with real time: `changed()` per store change (e.g. as the
    `watch_store` callback), `run()` rebuilds the snapshot when a push is due and hands the
    deltas to `on_push` (the servicer's `notify`). A rebuild is never concurrent with
    another; changes arriving meanwhile are debounced into the next one."""

    def __init__(
        self,
        holder: SnapshotHolder,
        on_push: Callable[[list[TypeDelta]], None],
        *,
        debouncer: Debouncer | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.holder = holder
        self._on_push = on_push
        self._debouncer = debouncer or Debouncer()
        self._clock = clock
        self._wake = asyncio.Event()
        self._changes: list[StoreChange] = []
        self._full = False  # the next rebuild must be a full one
        self.pushes = 0

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def changed(self, change: StoreChange | None = None) -> None:
        """A store change (None, or a resync: the next rebuild is a full one)."""
        if change is None or change.resync:
            self._full = True
        else:
            self._changes.append(change)
        self._debouncer.event(self._now())
        self._wake.set()

    async def run(self) -> None:
        while True:
            deadline = self._debouncer.deadline()
            if deadline is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            delay = deadline - self._now()
            if delay > 0:
                # Wake early on a new event only to recompute the deadline.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
                continue
            push = self._debouncer.poll(self._now())
            if push is not None:
                await self.push_now(f"{push.events} change(s), {push.reason}")

    async def push_now(self, why: str = "initial") -> list[TypeDelta]:
        """Rebuild now (in a worker thread: translation reads the store) and notify: from
        the store changes seen since the last rebuild, or in full for the first one, after
        a resync or after a failed rebuild."""
        changes = None if self._full or not self._changes else self._changes
        self._changes, self._full = [], False
        try:
            deltas = await asyncio.to_thread(self.holder.rebuild, changes)
        except Exception:  # the task's one boundary: a translation bug must not stop pushes
            log.exception("rebuilding the snapshot failed (%s); keeping the previous one", why)
            self._full = True  # the failed changes are not lost: rebuild all next time
            return []
        self.pushes += 1
        if deltas:
            log.info(
                "push %d (%s): %s",
                self.holder.current.version,
                why,
                ", ".join(
                    f"{d.type_url.rsplit('.', 1)[-1]} +{len(d.changed)} -{len(d.removed)}"
                    for d in deltas
                ),
            )
            self._on_push(deltas)
        return deltas


# --- pure: who is calling -----------------------------------------------------------------

TokenValidator = Callable[[str], str]
"""A bearer token -> the node name it was issued for; raises `Unauthenticated` if invalid."""

CertIsCurrent = Callable[[str, int], bool]
"""(node name, certificate serial) -> is this the node's current, unrevoked certificate?"""


@dataclass(frozen=True)
class Caller:
    node: str
    method: str  # "certificate" or "token"
    serial: int | None = None  # of the node certificate, to re-check it later
    token: str | None = None  # `tokens.token_id` of the bearer token, to re-check it later


def authenticate(
    cert_pem: bytes | None,
    metadata: Iterable[tuple[str, str | bytes]],
    *,
    trust_domain: str,
    cert_is_current: CertIsCurrent,
    validate_token: TokenValidator | None,
) -> Caller:
    """Who opened this stream: the node certificate (already verified by TLS against our
    trust bundle) wins; else `authorization: Bearer <token>`; else Unauthenticated."""
    if cert_pem:
        node, serial = node_from_cert(cert_pem)
        if node.trust_domain != trust_domain:
            raise Unauthenticated(f"node {node.uri} is not in trust domain {trust_domain!r}")
        if not cert_is_current(node.node_name, serial):
            raise Unauthenticated(
                f"node certificate of {node.node_name} was revoked or replaced by a newer join"
            )
        return Caller(node.node_name, "certificate", serial)
    header = next((v for k, v in metadata if k.lower() == "authorization"), None)
    if header is None:
        raise Unauthenticated(
            "no node certificate and no 'authorization: Bearer <token>' metadata: connect "
            "over mTLS with the node certificate (ketch node join)"
        )
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    if validate_token is None:
        raise Unauthenticated("token authentication is not enabled on this listener")
    return Caller(validate_token(token.strip()), "token", token=token_id(token.strip()))


# --- I/O: the delta ADS servicer ----------------------------------------------------------

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


@dataclass(frozen=True)
class Limits:
    """Bounds on what one client, and all of them, can make the control plane hold."""

    max_receive_bytes: int = 4 * 1024 * 1024  # one DeltaDiscoveryRequest
    max_streams: int = 4096  # all clients
    max_streams_per_node: int = 8  # a node runs one ztunnel; room for reconnect overlap
    first_request_timeout: float = 10.0  # an opened stream must subscribe by then
    write_timeout: float = 30.0  # a client that does not read is dropped
    max_names_per_request: int = 10_000  # subscribe + unsubscribe + initial versions
    inbox: int = 8  # requests read ahead of processing (back-pressure beyond)
    policy_grace: float = 1.0  # Address waits this long for an Authorization subscription


@dataclass(frozen=True)
class ClientStatus:
    """One connected stream (the in-process registry `PushServer.clients()`; syncz sends the
    same facts as an Istio ClientConfig)."""

    stream: int
    node: str  # authenticated node name
    auth: str  # "certificate" or "token"
    peer: str  # gRPC peer address
    connected_since: float  # Unix time
    node_id: str  # the xDS Node.id the client sent ("" until it sends one)
    metadata: Mapping[str, str]  # CLUSTER_ID, NAMESPACE, NODE_NAME, ISTIO_VERSION if sent
    types: Mapping[str, str]  # type URL -> NOT_SENT | SYNCED | STALE | ERROR


_STATUS_METADATA = ("CLUSTER_ID", "NAMESPACE", "NODE_NAME", "ISTIO_VERSION")


@dataclass(frozen=True)
class _Close:
    code: grpc.StatusCode
    message: str


_PUSH = object()  # inbox item: the snapshot changed (coalesced per stream)
_EOF = object()  # inbox item: the client closed its side (or the transport failed)
_GARBAGE = object()  # inbox item: bytes that are not a DeltaDiscoveryRequest


ABORT_TIMEOUT = 1.0


class _Abandoned(Exception):
    """The stream's status could not be delivered (the client reads nothing)."""


def _parse_request(data: bytes) -> Any:
    """gRPC's own deserializer failure logs a traceback; ours hands the servicer a marker
    and the stream is closed with INVALID_ARGUMENT instead."""
    try:
        return discovery_pb2.DeltaDiscoveryRequest.FromString(data)
    except DecodeError:
        return _GARBAGE


def _parse_sotw_request(data: bytes) -> Any:
    try:
        return discovery_pb2.DiscoveryRequest.FromString(data)
    except DecodeError:
        return _GARBAGE


class _Stream:
    def __init__(self, sid: int, caller: Caller, peer: str, session: ServerStream, inbox: int):
        self.id = sid
        self.caller = caller
        self.peer = peer
        self.session = session
        self.since = time.time()
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.room = asyncio.Semaphore(inbox)
        self.pending: set[str] = set()
        #: per type, the names pushes changed since this stream's last answer of the type
        self.changed: dict[str, set[str]] = {}
        self.push_queued = False
        self.subscribed: set[str] = set()  # type URLs the client has asked for
        self.held = False  # Address answer held back until Authorization is subscribed
        self.node_id = ""
        self.metadata: dict[str, str] = {}

    def push(self, deltas: Iterable[TypeDelta]) -> None:
        for d in deltas:
            self.pending.add(d.type_url)
            names = self.changed.setdefault(d.type_url, set())
            names.update(d.changed)
            names.update(d.removed)
        if not self.push_queued:
            self.push_queued = True
            self.inbox.put_nowait(_PUSH)

    def close(self, code: grpc.StatusCode, message: str) -> None:
        self.inbox.put_nowait(_Close(code, message))


class PushServer:
    """The delta ADS servicer (DeltaAggregatedResources only) plus the client registry.

    Per stream: authenticate (node certificate over mTLS, or a bearer token), admit (stream
    caps), then one loop that owns the stream's `ServerStream` and does all its writes;
    a reader task feeds it requests, `notify()` feeds it pushes, `disconnect()` ends it.
    Each subscription is answered from the current snapshot; each push sends what the
    client lacks, Authorization before Address. `istio.io/debug/syncz` on the same stream
    (for callers `allow_debug` admits) returns one Resource per connected stream: an
    `envoy.service.status.v3.ClientConfig` (`_syncz`). `clients()` is the same registry as
    Python objects.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        trust_domain: str,
        cert_is_current: CertIsCurrent,
        validate_token: TokenValidator | None = None,
        token_is_current: Callable[[str], bool] | None = None,
        limits: Limits | None = None,
        session_factory: Callable[[Sequence[str]], ServerStream] = ServerStream,
        served_types: Sequence[str] = PUSH_ORDER,
        allow_debug: Callable[[Caller], bool] = lambda _caller: True,
        ready: bool = True,
    ) -> None:
        self._snapshot = snapshot
        self._trust_domain = trust_domain
        self._cert_is_current = cert_is_current
        self._validate_token = validate_token
        self._token_is_current = token_is_current
        self.limits = limits or Limits()
        self._session_factory = session_factory
        self._served = tuple(served_types)
        self._allow_debug = allow_debug
        self._streams: dict[int, _Stream] = {}
        self._next_id = 0
        self._syncz_nonce = 0
        self._ready = asyncio.Event()
        if ready:
            self._ready.set()

    def set_ready(self) -> None:
        """The first snapshot is built: serve the streams (those opened before it wait, so
        that no node is answered from an empty snapshot and told to drop what it holds)."""
        self._ready.set()

    # --- the registry ---

    def notify(self, deltas: Sequence[TypeDelta]) -> None:
        """The snapshot changed (Pusher's `on_push`): wake every stream, with the names."""
        for stream in self._streams.values():
            stream.push(deltas)

    def clients(self) -> list[ClientStatus]:
        return [
            ClientStatus(
                stream=s.id,
                node=s.caller.node,
                auth=s.caller.method,
                peer=s.peer,
                connected_since=s.since,
                node_id=s.node_id,
                metadata=dict(s.metadata),
                types={t: s.session.status(t).state.value for t in self._served},
            )
            for s in sorted(self._streams.values(), key=lambda s: s.id)
        ]

    def disconnect(
        self,
        node: str,
        message: str = "disconnected by the control plane",
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
    ) -> int:
        """End every stream of `node` (e.g. after `ketch node revoke`); how many."""
        victims = [s for s in self._streams.values() if s.caller.node == node]
        for stream in victims:
            stream.close(code, message)
        return len(victims)

    async def revalidate(self) -> list[str]:
        """Re-check the credential of every stream and end those whose certificate is no
        longer current (`ketch node revoke` or a re-join, done by another process: the token
        store is the shared record) or whose bearer token was revoked or expired
        (`token_is_current`). The checks read the token store, so they run in a worker
        thread. Returns the nodes disconnected."""
        held = {(s.caller.node, s.caller.serial, s.caller.token) for s in self._streams.values()}
        check_token = self._token_is_current

        def stale() -> set[tuple[str, int | None, str | None]]:
            def bad(node: str, serial: int | None, token: str | None) -> bool:
                if serial is not None:
                    return not self._cert_is_current(node, serial)
                return token is not None and (check_token is None or not check_token(token))

            return {h for h in held if bad(*h)}

        gone = await asyncio.to_thread(stale)
        for stream in list(self._streams.values()):
            c = stream.caller
            if (c.node, c.serial, c.token) in gone:
                what = "node certificate" if c.serial is not None else "xDS token"
                stream.close(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{what} of {c.node} was revoked, expired or replaced by a newer join",
                )
        return sorted({n for n, _, _ in gone})

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The ADS service: DeltaAggregatedResources for node proxies, and
        StreamAggregatedResources (SotW) for `istio.io/debug/syncz` only, as istioctl asks
        it. Registered by hand rather than with
        `ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server` for the tolerant
        request parsers (`_parse_request`)."""
        delta = grpc.stream_stream_rpc_method_handler(
            self.DeltaAggregatedResources,
            request_deserializer=_parse_request,
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        )
        sotw = grpc.stream_stream_rpc_method_handler(
            self.StreamAggregatedResources,
            request_deserializer=_parse_sotw_request,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {"DeltaAggregatedResources": delta, "StreamAggregatedResources": sotw},
        )

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        try:
            return await asyncio.to_thread(
                authenticate,
                _peer_cert(context),
                tuple(context.invocation_metadata() or ()),
                trust_domain=self._trust_domain,
                cert_is_current=self._cert_is_current,
                validate_token=self._validate_token,
            )
        except IdentityError as err:
            log.warning("refused xDS stream from %s: %s", context.peer(), err)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))
        raise AssertionError("unreachable")

    async def StreamAggregatedResources(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """State-of-the-world ADS, for syncz only (istioctl proxy-status's request): each
        `DiscoveryRequest` of `istio.io/debug/syncz` without a response nonce is answered
        with one `ClientConfig` per node proxy stream; ACKs are ignored. Node proxies get
        their config over delta ADS; any other type ends the stream (INVALID_ARGUMENT), as
        does `first_request_timeout` without a request."""
        caller = await self._authenticate(context)
        if not self._allow_debug(caller):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {caller.node} may not read {SYNCZ_TYPE}; node proxies use "
                "DeltaAggregatedResources",
            )
        it = aiter(requests)
        while True:
            try:
                async with asyncio.timeout(self.limits.first_request_timeout):
                    request = await anext(it)
            except (StopAsyncIteration, TimeoutError):
                return
            if request is _GARBAGE or request.type_url != SYNCZ_TYPE:
                what = "not a DiscoveryRequest" if request is _GARBAGE else request.type_url
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"StreamAggregatedResources serves only {SYNCZ_TYPE} (got "
                    f"{what[:200]!r}); node proxies use DeltaAggregatedResources",
                )
            if request.response_nonce:
                continue  # an ACK of a syncz answer
            delta = self._syncz(None)
            response = discovery_pb2.DiscoveryResponse(
                type_url=SYNCZ_TYPE,
                nonce=delta.nonce,
                version_info=delta.system_version_info,
                resources=[r.resource for r in delta.resources],
            )
            async with asyncio.timeout(self.limits.write_timeout):
                await context.write(response)

    # --- one stream ---

    async def DeltaAggregatedResources(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        peer = context.peer()
        caller = await self._authenticate(context)
        await self._ready.wait()
        refusal = self._admission(caller)
        if refusal:
            log.warning("refused xDS stream from node %s (%s): %s", caller.node, peer, refusal)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        self._next_id += 1
        stream = _Stream(
            self._next_id, caller, peer, self._session_factory(self._served), self.limits.inbox
        )
        self._streams[stream.id] = stream
        log.info(
            "xDS stream %d opened by node %s (%s, %s)", stream.id, caller.node, caller.method, peer
        )
        reader = spawn(self._read(requests, stream), f"xds-read-{stream.id}")
        why = "closed by the control plane"  # _close logged the reason
        try:
            why = await self._serve(stream, context)
        except _Abandoned:
            why = "abandoned: the client reads nothing, not even the closing status"
        except asyncio.CancelledError:
            why = "cancelled (client went away or server stopping)"
            raise
        finally:
            reader.cancel()
            del self._streams[stream.id]
            log.info("xDS stream %d of node %s closed: %s", stream.id, caller.node, why)

    def _admission(self, caller: Caller) -> str | None:
        if len(self._streams) >= self.limits.max_streams:
            return f"the control plane serves at most {self.limits.max_streams} xDS streams"
        mine = sum(1 for s in self._streams.values() if s.caller.node == caller.node)
        if mine >= self.limits.max_streams_per_node:
            return (
                f"node {caller.node} already has {mine} xDS streams open (limit "
                f"{self.limits.max_streams_per_node}); is more than one node proxy running "
                "with this node's identity?"
            )
        return None

    async def _read(self, requests: AsyncIterator[Any], stream: _Stream) -> None:
        """Feed requests to the stream's loop, at most `limits.inbox` ahead of it."""
        try:
            async for request in requests:
                await stream.room.acquire()
                stream.inbox.put_nowait(request)
        except (
            grpc.RpcError,
            grpc.aio.AbortError,  # the stream's loop aborted the RPC
            grpc.aio.UsageError,
            asyncio.InvalidStateError,
        ) as err:
            log.debug("xDS stream %d: reading failed: %r", stream.id, err)
        stream.inbox.put_nowait(_EOF)

    async def _serve(self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        loop = asyncio.get_running_loop()
        opened = loop.time()
        started = False
        while True:
            timeout = None if started else self.limits.first_request_timeout
            if stream.held:
                timeout = max(0.0, opened + self.limits.policy_grace - loop.time())
            items: list[object] = []
            try:
                async with asyncio.timeout(timeout):
                    items.append(await stream.inbox.get())
            except TimeoutError:
                if not stream.held:
                    await self._close(
                        stream,
                        context,
                        _Close(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            "no DeltaDiscoveryRequest within "
                            f"{self.limits.first_request_timeout:g}s of opening the stream",
                        ),
                    )
            # Take everything already queued, so that requests sent together (a client's
            # first Address and Authorization subscriptions) are answered in push order.
            while not stream.inbox.empty():
                items.append(stream.inbox.get_nowait())
            answer: set[str] = set()
            full: set[str] = set()  # answered over the whole snapshot (requests)
            for item in items:
                if item is _EOF:
                    return "client closed the stream"
                if isinstance(item, _Close):
                    await self._close(stream, context, item)
                if item is _PUSH:
                    stream.push_queued = False
                    answer |= stream.pending
                    stream.pending.clear()
                    continue
                request: Any = item  # a DeltaDiscoveryRequest, or _GARBAGE
                stream.room.release()
                started = True
                problem = self._check(stream, request)
                if problem is not None:
                    await self._close(stream, context, problem)
                self._note_node(stream, request)
                if request.type_url == SYNCZ_TYPE:
                    if not request.response_nonce:  # a request, not an ACK of a syncz answer
                        await self._write(stream, context, self._syncz(stream))
                    continue
                stream.subscribed.add(request.type_url)
                asked = stream.session.on_request(request)
                answer.update(asked)
                full.update(asked)
            # Authorization before Address for the first answers too: hold Address until
            # the client subscribed to Authorization (and gets it first, by push order), or
            # `policy_grace` after the stream opened (a client that never asks for policies).
            hold = (
                AUTHORIZATION_TYPE in self._served
                and AUTHORIZATION_TYPE not in stream.subscribed
                and loop.time() < opened + self.limits.policy_grace
            )
            if hold and ADDRESS_TYPE in answer:
                answer.discard(ADDRESS_TYPE)
                stream.held = True
            elif stream.held and not hold:
                answer.add(ADDRESS_TYPE)
                full.add(ADDRESS_TYPE)
                stream.held = False
            for type_url in push_order(answer):
                # The snapshot and the changed names are taken together, with no await
                # between: a push during a write below is answered by the next round.
                snapshot = self._snapshot()
                changed = stream.changed.pop(type_url, set())
                resources, version = snapshot.of(type_url), str(snapshot.version)
                if type_url in full:
                    response = stream.session.respond(type_url, resources, version=version)
                else:  # a push: only the names it changed (the session falls back if needed)
                    response = stream.session.respond_changes(
                        type_url, resources, changed, version=version
                    )
                if response is not None:
                    await self._write(stream, context, response)

    def _check(self, stream: _Stream, request: Any) -> _Close | None:
        def bad(message: str) -> _Close:
            return _Close(grpc.StatusCode.INVALID_ARGUMENT, message)

        if request is _GARBAGE:
            return bad("the message is not a DeltaDiscoveryRequest")
        if not request.type_url:
            return bad("DeltaDiscoveryRequest without type_url")
        if request.type_url == SYNCZ_TYPE:
            if not self._allow_debug(stream.caller):
                return _Close(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node {stream.caller.node} may not read {SYNCZ_TYPE}",
                )
        elif request.type_url not in self._served:
            return bad(
                f"unknown type URL {request.type_url[:200]!r}; this control plane serves "
                f"{', '.join(self._served)} and {SYNCZ_TYPE}"
            )
        names = (
            len(request.resource_names_subscribe)
            + len(request.resource_names_unsubscribe)
            + len(request.initial_resource_versions)
        )
        if names > self.limits.max_names_per_request:
            return bad(
                f"{names} resource names in one request (limit {self.limits.max_names_per_request})"
            )
        return None

    @staticmethod
    def _note_node(stream: _Stream, request: Any) -> None:
        if stream.node_id or not request.HasField("node"):
            return
        stream.node_id = request.node.id[:512]
        for key in _STATUS_METADATA:
            value = request.node.metadata.fields.get(key)
            if value is not None and value.WhichOneof("kind") == "string_value":
                stream.metadata[key] = value.string_value[:253]
        claimed = stream.metadata.get("NODE_NAME")
        if claimed and claimed != stream.caller.node:
            log.warning(
                "xDS stream %d: node %s says NODE_NAME=%s; proxy-status shows the "
                "authenticated name",
                stream.id,
                stream.caller.node,
                claimed,
            )

    def _syncz(self, asker: _Stream | None) -> Any:
        """One `ClientConfig` per connected stream (istiod's syncz shape, what istioctl
        proxy-status reads), named `<node>/<stream id>`; Ketch's own facts about the stream
        ride in the node metadata under `KETCH_*` keys (istioctl ignores them). The asking
        stream is left out when it subscribed to nothing (a pure debug connection, as
        istiod leaves out istioctl's own)."""
        self._syncz_nonce += 1
        response = discovery_pb2.DeltaDiscoveryResponse(
            type_url=SYNCZ_TYPE,
            nonce=f"syncz-{self._syncz_nonce}",
            system_version_info=str(self._snapshot().version),
        )
        version = str(self._snapshot().version)
        for s in sorted(self._streams.values(), key=lambda s: s.id):
            if s is asker and not s.subscribed:
                continue
            config = client_config(s.session, self._served)
            config.node.metadata.update(
                {
                    "KETCH_NODE": s.caller.node,
                    "KETCH_AUTH": s.caller.method,
                    "KETCH_PEER": s.peer,
                    "KETCH_STREAM": str(s.id),
                    "KETCH_CONNECTED_SINCE": datetime.fromtimestamp(s.since, UTC).isoformat(),
                }
            )
            resource = response.resources.add(name=f"{s.caller.node}/{s.id}", version=version)
            resource.resource.Pack(config)
        return response

    async def _write(
        self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any], response: Any
    ) -> None:
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await context.write(response)
        except TimeoutError:
            await self._close(
                stream,
                context,
                _Close(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"client read nothing for {self.limits.write_timeout:g}s",
                ),
            )

    @staticmethod
    async def _close(
        stream: _Stream, context: grpc.aio.ServicerContext[Any, Any], close: _Close
    ) -> NoReturn:
        log.warning(
            "closing xDS stream %d of node %s (%s): %s %s",
            stream.id,
            stream.caller.node,
            stream.peer,
            close.code.name,
            close.message,
        )
        try:
            # Sending the status waits for the transport; a client that reads nothing may
            # never take it, so the stream is let go after a bound either way.
            async with asyncio.timeout(ABORT_TIMEOUT):
                await context.abort(close.code, close.message)
        except TimeoutError:
            raise _Abandoned from None
        raise AssertionError("unreachable")


def _peer_cert(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    values = list(context.auth_context().get("x509_pem_cert") or [])
    return values[0] if values else None


# --- the listeners ------------------------------------------------------------------------


SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),  # find dead peers of idle streams
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_connection_idle_ms", 300_000),  # connections with no stream at all
)
"""gRPC server options for long-lived xDS streams."""


async def serve_push(
    push: PushServer,
    ca: CertificateAuthority,
    directory: NodeDirectory,
    tokens: TokenStore,
    *,
    address: str | None = None,
    unix_path: Path | None = None,
    join_address: str | None = None,
    join_unix_path: Path | None = None,
) -> RunningCa:
    """The control plane's gRPC server with delta ADS: the certificate service and node join
    (`identity.server.serve_ca`) plus `push`'s ADS on the same listeners, as istiod serves
    certificates and xDS on 15012. On the mTLS listeners (`address`, `unix_path`) callers
    present their node certificate; on the server-auth TLS ones (`join_*`: grpcio cannot ask
    for a client certificate without requiring it) a bearer xDS token. The limits cover both
    services: ADS's larger messages and stream counts, the keepalive of long-lived streams."""
    limits = push.limits
    return await serve_ca(
        ca,
        directory,
        tokens,
        address=address,
        unix_path=unix_path,
        join_address=join_address,
        join_unix_path=join_unix_path,
        extra_handlers=[push.handler()],
        max_receive_bytes=max(limits.max_receive_bytes, MAX_MESSAGE_BYTES),
        # gRPC's own cap is the backstop; ours (with a message that says why) comes first,
        # with room for streams still being authenticated or refused.
        max_concurrent_rpcs=MAX_CONCURRENT_RPCS + limits.max_streams + 64,
        extra_options=SERVER_OPTIONS,
    )
