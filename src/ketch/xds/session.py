"""Both ends of one delta ADS stream (`DeltaAggregatedResources`) as sans-IO state machines.

`ServerStream` is istiod's side for one connected node proxy; `ClientStream` is ztunnel's
side. Neither does I/O: the gRPC layer feeds them the messages it reads and writes the
messages they return, h11-style.

Server (istiod `pilot/pkg/xds/delta.go` shouldRespondDelta, `xds/workload.go`):

| request for a type                          | effect                                        | respond? |
|---------------------------------------------|-----------------------------------------------|----------|
| first on this stream                        | subscribe: wildcard if it names nothing or    | yes      |
|                                             | `*`; remember `initial_resource_versions` as  |          |
|                                             | what the client holds                         |          |
| `error_detail` for an outstanding nonce     | NACK: record the error, mark what that        | no       |
|                                             | response upserted as "maybe not held"         |          |
| nonce not ours, or answered and not latest  | stale: ignored entirely                       | no       |
| nonce = an outstanding one                  | ACK; then subscription changes, if any        | if names |
|                                             |                                               | changed  |
| no nonce (spontaneous)                      | subscription changes (on-demand lookups)      | if names |
|                                             |                                               | changed  |

`on_request` returns the type URLs to answer now; the caller answers each with
`respond(type_url, full_snapshot, full=True)`, and on a config change calls `respond` for
every subscribed type (full snapshot, or changed resources plus `removed=` names). `respond`
sends only what the client lacks (absent or another version) and, for a full snapshot,
removes what the client holds that the snapshot no longer has. Resources a NACKed response
carried are resent by the next push (istiod: "the next config change retries").

Client (ztunnel `src/xds/client.rs`): one wildcard request per type (with
`initial_resource_versions` after a reconnect), then an ACK or NACK for every response.
Each resource is applied on its own; rejected ones are listed in the NACK as
`"<name>: <reason>; ..."` while good ones stay applied. Removals always take effect.
"""

from __future__ import annotations

import enum
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest as DeltaRequest,
)
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryResponse as DeltaResponse,
)
from google.protobuf import any_pb2
from google.rpc import status_pb2

from ketch.xds.types import NODE_PROXY_TYPES, UnknownType

__all__ = [
    "Apply",
    "ClientStream",
    "ServerStream",
    "Subscription",
    "SyncState",
    "TypeStatus",
    "format_nack",
]

# xds-protos ships no type stubs: these message classes are `Any` to mypy.
#: apply(type_url, upserts [(name, Any)], removals [name]) -> {name: rejection reason}
Apply = Callable[[str, list[tuple[str, any_pb2.Any]], list[str]], Mapping[str, str]]

WILDCARD = "*"
#: Responses the client has not answered yet, per type; past this the oldest is forgotten
#: (its resources are treated as maybe-not-held, so nothing is lost, only resent).
MAX_OUTSTANDING = 256


class SyncState(enum.Enum):
    """istiod's proxy-status per type (`xds/statusgen.go`)."""

    SYNCED = "SYNCED"  # the last response sent was ACKed
    STALE = "STALE"  # a response is outstanding
    NOT_SENT = "NOT_SENT"  # nothing sent for this type on this stream
    ERROR = "ERROR"  # the client NACKed (and has not ACKed a later response)


@dataclass(frozen=True)
class Subscription:
    """What a client asked for: every resource (wildcard) and/or explicit names."""

    wildcard: bool
    names: frozenset[str]

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclass(frozen=True)
class TypeStatus:
    """Sync status of one type on one stream, for syncz / `ketch proxy-status`."""

    type_url: str
    state: SyncState
    error: str = ""  # the client's last NACK message
    sent_nonce: str = ""
    acked_nonce: str = ""
    sent_version: str = ""  # system_version_info of the last response
    sent_at: float | None = None  # clock() when the last response was built


@dataclass
class _ServerType:
    wildcard: bool
    names: set[str]
    #: name -> version the client holds; None = maybe held, version unknown (after a NACK)
    held: dict[str, str | None]
    must_reply: bool = True
    #: explicitly subscribed names not answered yet (answered by a full respond)
    asked: set[str] = field(default_factory=set)
    #: nonce -> names upserted by that response, for responses not answered yet
    outstanding: OrderedDict[str, tuple[str, ...]] = field(default_factory=OrderedDict)
    sent_nonce: str = ""
    acked_nonce: str = ""
    sent_version: str = ""
    sent_at: float | None = None
    error: str = ""
    #: `held` is exactly what the last full respond and the responses since left the client
    #: with (no NACK, lost response or subscription change since): `respond_changes` may
    #: look at the changed names only
    exact: bool = False


def _random_nonces() -> Callable[[], str]:
    prefix = secrets.token_hex(4)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


class ServerStream:
    """The control plane's state for one connected client stream."""

    def __init__(
        self,
        types: Iterable[str] = NODE_PROXY_TYPES,
        *,
        clock: Callable[[], float] = time.time,
        nonces: Callable[[], str] | None = None,
    ) -> None:
        self._served = tuple(types)
        self._clock = clock
        self._nonce = nonces or _random_nonces()
        self._types: dict[str, _ServerType] = {}
        self.node: Node | None = None

    @property
    def served(self) -> tuple[str, ...]:
        return self._served

    def subscribed(self) -> list[str]:
        """The types this client subscribed to, in the order served (istiod's push order)."""
        return [t for t in self._served if t in self._types]

    def subscription(self, type_url: str) -> Subscription | None:
        st = self._types.get(type_url)
        return None if st is None else Subscription(st.wildcard, frozenset(st.names))

    def held(self, type_url: str) -> Mapping[str, str | None]:
        """What the server believes the client holds: name -> version (None: unknown)."""
        st = self._types.get(type_url)
        return dict(st.held) if st is not None else {}

    def on_request(self, req: DeltaRequest) -> list[str]:
        """Take one request; return the type URLs that need a response now (0 or 1)."""
        if req.type_url not in self._served:
            raise UnknownType(req.type_url, self._served)
        if self.node is None and req.HasField("node"):
            self.node = req.node
        st = self._types.get(req.type_url)
        if st is None:
            return self._subscribe(req)
        if req.HasField("error_detail"):
            self._nack(st, req.response_nonce, req.error_detail.message)
            return []
        if req.response_nonce in st.outstanding:
            self._ack(st, req.response_nonce)
        elif req.response_nonce and req.response_nonce != st.sent_nonce:
            return []  # stale: a newer response was sent, or not ours
        # else: no nonce, or the latest one again (istiod takes its subscription changes)
        if self._change_names(st, req):
            st.must_reply = True
            return [req.type_url]
        return []

    def _subscribe(self, req: DeltaRequest) -> list[str]:
        subscribe = set(req.resource_names_subscribe)
        unsubscribe = set(req.resource_names_unsubscribe)
        # istiod deltaWatchedResources: never named anything, or named `*` = wildcard;
        # ztunnel's on-demand "subscribe to nothing" names `*` in both lists.
        wildcard = (not subscribe and not unsubscribe) or (
            WILDCARD in subscribe and WILDCARD not in unsubscribe
        )
        names = subscribe - unsubscribe - {WILDCARD}
        st = _ServerType(
            wildcard=wildcard,
            names=names,
            held=dict(req.initial_resource_versions),
            asked=set(names),
        )
        self._types[req.type_url] = st
        return [req.type_url]

    def _change_names(self, st: _ServerType, req: DeltaRequest) -> bool:
        """Apply subscription changes; True if the client now wants more (istiod answers
        new subscriptions; an unsubscribe alone gets no response)."""
        grew = False
        if req.resource_names_subscribe or req.resource_names_unsubscribe:
            st.exact = False
        for name in req.resource_names_subscribe:
            if name == WILDCARD:
                grew = grew or not st.wildcard
                st.wildcard = True
            elif name not in st.names:
                st.names.add(name)
                st.asked.add(name)
                grew = True
        for name in req.resource_names_unsubscribe:
            if name == WILDCARD:
                st.wildcard = False  # what is no longer wanted is removed by the next push
            else:
                # The client forgets what it unsubscribed from (no removal is sent for it).
                st.names.discard(name)
                st.asked.discard(name)
                st.held.pop(name, None)
        return grew

    def _resolve_older(self, st: _ServerType, nonce: str) -> None:
        """The client answers in order: responses before `nonce` it never answered are
        treated as NACKed without a message (their resources may not be held)."""
        for older in list(st.outstanding):
            if older == nonce:
                break
            self._forget(st, st.outstanding.pop(older))

    @staticmethod
    def _forget(st: _ServerType, names: Iterable[str]) -> None:
        st.exact = False
        for name in names:
            if name in st.held:
                st.held[name] = None

    def _ack(self, st: _ServerType, nonce: str) -> None:
        self._resolve_older(st, nonce)
        st.outstanding.pop(nonce)
        st.acked_nonce = nonce
        if nonce == st.sent_nonce:
            st.error = ""

    def _nack(self, st: _ServerType, nonce: str, message: str) -> None:
        if nonce not in st.outstanding:
            return  # stale
        self._resolve_older(st, nonce)
        self._forget(st, st.outstanding.pop(nonce))
        st.error = message or "rejected without a message"

    def respond(
        self,
        type_url: str,
        resources: Mapping[str, tuple[str, any_pb2.Any]],
        *,
        full: bool = True,
        removed: Collection[str] = (),
        version: str = "",
        aliases: Mapping[str, Collection[str]] | None = None,
        also: Collection[str] = (),
    ) -> DeltaResponse | None:
        """The response that brings the client to `resources` (name -> (version, Any)), or
        None when it already has them (and no answer is owed). `full`: `resources` is the
        whole snapshot, so anything else the client holds is removed; otherwise `resources`
        are changes and `removed` the deleted names. `version` goes to system_version_info.

        For a client that is not wildcard (on-demand), a resource is sent when its name or one
        of its `aliases` (e.g. `network/IP` keys of a workload) was subscribed, or when it is
        in `also` (istiod's additions: pods behind a subscribed VIP, workloads on the client's
        node). A subscribed name that matches nothing is answered in `removed_resources`."""
        if type_url not in self._served:
            raise UnknownType(type_url, self._served)
        st = self._types.get(type_url)
        if st is None:
            return None  # not subscribed
        alias_of = aliases or {}
        extra = frozenset(also)

        def wants(name: str) -> bool:
            return (
                st.wildcard
                or name in st.names
                or name in extra
                or any(a in st.names for a in alias_of.get(name, ()))
            )

        wanted = {n for n in resources if wants(n)}
        upserts = [
            name
            for name in sorted(wanted)
            if name not in st.held or st.held[name] != resources[name][0]
        ]
        answered = wanted | {a for n in wanted for a in alias_of.get(n, ())}
        if full:
            gone = {n for n in st.held if n not in wanted}
            gone |= {n for n in st.asked if n not in answered}
        else:
            gone = {n for n in removed if n in st.held or n in st.asked}
            gone -= set(upserts)
        if not upserts and not gone and not st.must_reply:
            return None
        nonce = self._nonce()
        resp = DeltaResponse(type_url=type_url, nonce=nonce, system_version_info=version)
        for name in upserts:
            ver, packed = resources[name]
            resp.resources.add(
                name=name, version=ver, resource=packed, aliases=sorted(alias_of.get(name, ()))
            )
            st.held[name] = ver
        resp.removed_resources.extend(sorted(gone))
        for name in gone:
            st.held.pop(name, None)
        if full:
            st.asked.clear()
        else:
            st.asked -= gone | answered
        st.must_reply = False
        if full:
            st.exact = True
        st.outstanding[nonce] = tuple(upserts)
        while len(st.outstanding) > MAX_OUTSTANDING:
            _, names = st.outstanding.popitem(last=False)
            self._forget(st, names)
        st.sent_nonce = nonce
        st.sent_version = version
        st.sent_at = self._clock()
        return resp

    def respond_changes(
        self,
        type_url: str,
        resources: Mapping[str, tuple[str, any_pb2.Any]],
        changed: Collection[str],
        *,
        version: str = "",
    ) -> DeltaResponse | None:
        """What `respond(type_url, resources)` (a full snapshot) answers, when `resources`
        differs from the snapshot of this type's last response only at the `changed` names:
        only those are looked at (a push of one change to a client holding 10^4 resources).
        Falls back to the full comparison whenever that could answer differently: before
        the first response, for a non-wildcard or changed subscription, after a NACK or a
        response never answered."""
        st = self._types.get(type_url)
        if st is None or not st.exact or not st.wildcard or st.asked or st.must_reply:
            return self.respond(type_url, resources, version=version)
        return self.respond(
            type_url,
            {n: resources[n] for n in changed if n in resources},
            full=False,
            removed=[n for n in changed if n not in resources],
            version=version,
        )

    def status(self, type_url: str) -> TypeStatus:
        st = self._types.get(type_url)
        if st is None or not st.sent_nonce:
            return TypeStatus(type_url, SyncState.NOT_SENT)
        if st.error:
            state = SyncState.ERROR
        elif st.acked_nonce == st.sent_nonce:
            state = SyncState.SYNCED
        else:
            state = SyncState.STALE
        return TypeStatus(
            type_url,
            state,
            error=st.error,
            sent_nonce=st.sent_nonce,
            acked_nonce=st.acked_nonce,
            sent_version=st.sent_version,
            sent_at=st.sent_at,
        )


def format_nack(rejections: Iterable[tuple[str, str]]) -> str:
    """ztunnel's NACK message: `"<name>: <reason>"` joined by `"; "`."""
    return "; ".join(f"{name}: {reason}" for name, reason in rejections)


class ClientStream:
    """The node proxy's side: name -> version per type, kept across reconnects."""

    def __init__(
        self, types: Iterable[str] = NODE_PROXY_TYPES, *, on_demand: Collection[str] = ()
    ) -> None:
        self._types = tuple(types)
        self._on_demand = frozenset(on_demand)
        self._versions: dict[str, dict[str, str]] = {t: {} for t in self._types}
        self._synced: set[str] = set()
        self._demanded: dict[str, set[str]] = {t: set() for t in self._types}

    @property
    def types(self) -> tuple[str, ...]:
        return self._types

    def versions(self, type_url: str) -> Mapping[str, str]:
        """name -> version of every resource applied (and not removed) of this type."""
        return dict(self._versions.get(type_url, {}))

    def synced(self, type_url: str) -> bool:
        """True once a response of this type was ACKed (ztunnel's readiness gate)."""
        return type_url in self._synced

    def ready(self) -> bool:
        """Every type that is not on-demand has synced."""
        return all(self.synced(t) for t in self._types if t not in self._on_demand)

    def initial_requests(self, node: Node) -> list[DeltaRequest]:
        """The first request of each type on a new stream: wildcard (on-demand types
        subscribe to nothing, `*` in both lists, or to the names demanded so far), with what
        we hold as `initial_resource_versions` so the server skips it."""
        out = []
        for t in self._types:
            req = DeltaRequest(type_url=t, node=node)
            if t in self._on_demand and self._demanded[t]:
                # After a reconnect: the names looked up so far, again.
                req.resource_names_subscribe.extend(sorted(self._demanded[t]))
            elif t in self._on_demand:
                req.resource_names_subscribe.append(WILDCARD)
                req.resource_names_unsubscribe.append(WILDCARD)
            req.initial_resource_versions.update(self._versions[t])
            out.append(req)
        return out

    def demand(self, type_url: str, names: Iterable[str]) -> DeltaRequest:
        """An on-demand lookup: subscribe to `names` (a workload uid, `namespace/hostname`,
        or `network/IP`); remembered and subscribed again after a reconnect."""
        names = list(names)
        self._demanded.setdefault(type_url, set()).update(names)
        return DeltaRequest(type_url=type_url, resource_names_subscribe=names)

    def on_response(self, resp: DeltaResponse, apply: Apply) -> DeltaRequest:
        """Apply one response through `apply`; return the ACK, or the NACK listing the
        rejected resources (the accepted ones stay applied)."""
        reply = DeltaRequest(type_url=resp.type_url, response_nonce=resp.nonce)
        held = self._versions.get(resp.type_url)
        if held is None:
            reply.error_detail.CopyFrom(
                status_pb2.Status(message=f"type {resp.type_url!r} was not subscribed")
            )
            return reply
        upserts = [(r.name, r.resource) for r in resp.resources]
        removals = list(resp.removed_resources)
        rejected = apply(resp.type_url, upserts, removals)
        for r in resp.resources:
            if r.name not in rejected:
                held[r.name] = r.version
        for name in removals:
            held.pop(name, None)  # a removal always takes effect (ztunnel)
        if rejected:
            ordered = [n for n, _ in upserts if n in rejected]
            ordered += [n for n in rejected if n not in set(ordered)]
            message = format_nack((n, rejected[n]) for n in dict.fromkeys(ordered))
            reply.error_detail.CopyFrom(status_pb2.Status(message=message))
        else:
            self._synced.add(resp.type_url)
        return reply
