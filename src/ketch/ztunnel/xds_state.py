"""Applying xDS resources to the node proxy's snapshot (pure, apart from `StateApplier`'s one
call to `update_state`).

The xDS client hands every response to an `apply(type_url, upserts, removals)` callback and
NACKs the names it returns (`{name: reason}`), as ztunnel does (XDS.md §3): each resource is
applied on its own, a rejected one leaves the others of the same response applied.

- `apply_changes(state, type_url, upserts, removals)`: already decoded mesh objects ->
  `(new ProxyState, rejected)`. Resource names are Istio's: a Workload's `uid`, a Service's
  `namespace/hostname`, an Authorization's `namespace/name`; an object whose name does not
  match its key is rejected. Removals of Address names drop the workload or the service of
  that name (unknown names are ignored, as xDS removals are). An upsert that would claim an
  IP another object holds in the result is rejected (`_claim_conflicts`: order-independent,
  swaps within one response work); should the snapshot still be inconsistent, the upserts
  are applied one by one in name order and only the ones that break it are rejected.
- `StateApplier`: the callback itself (`ketch.xds.session.Apply`, called by
  `ClientStream.on_response` with `(name, Any)` pairs). Decodes the resources with
  `ketch.xds.convert.decode_all` (a resource it cannot convert is rejected with its
  `Rejected.reason`), applies the good ones with `apply_changes` and swaps the state through
  `update_state` (`Ztunnel.update_state` closes inbound connections the new policy denies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import any_pb2

from ketch.mesh import Authorization, IpAddr, MeshError, Service, Workload
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, decode_all, resource_name
from ketch.ztunnel.state import ProxyState

log = logging.getLogger("ketch.ztunnel.xds")

MeshObject = Workload | Service | Authorization

#: decode(type_url, [(name, Any)]) -> ({name: object}, {name: rejection reason})
Decoder = Callable[
    [str, Iterable[tuple[str, any_pb2.Any]]],
    tuple[Mapping[str, MeshObject], Mapping[str, str]],
]


class StateTarget(Protocol):
    """Where the snapshot lives: `Ztunnel` (whose `update_state` rechecks policy)."""

    @property
    def state(self) -> ProxyState: ...

    def update_state(self, new: ProxyState) -> object: ...


def apply_changes(
    state: ProxyState,
    type_url: str,
    upserts: Mapping[str, MeshObject],
    removals: Iterable[str] = (),
) -> tuple[ProxyState, dict[str, str]]:
    """The snapshot after one response of `type_url`, and the rejected names with why.
    `state` is never changed; with everything rejected the result is `state` itself."""
    rejected: dict[str, str] = {}
    good: dict[str, MeshObject] = {}
    for name, obj in upserts.items():
        why = _check(type_url, name, obj)
        if why:
            rejected[name] = why
        else:
            good[name] = obj
    removed = list(removals)
    if type_url == ADDRESS_TYPE:
        base = state.with_changes(remove_workloads=removed, remove_services=removed)
    elif type_url == AUTHORIZATION_TYPE:
        base = state.with_changes(remove_policies=removed)
    else:  # _check rejected every upsert already
        return state, rejected
    rejected.update(_claim_conflicts(base, good))
    try:
        new = _upsert(base, (o for n, o in good.items() if n not in rejected))
    except MeshError:  # another inconsistency: find the culprits one at a time
        new = base
        for name in sorted(n for n in good if n not in rejected):
            try:
                new = _upsert(new, (good[name],))
            except MeshError as e:
                rejected[name] = str(e)
    if not removed and all(n in rejected for n in good):
        return state, rejected
    return new, rejected


def _claim_conflicts(base: ProxyState, upserts: Mapping[str, MeshObject]) -> dict[str, str]:
    """Upserts that would claim an IP (workload address or service VIP) another object holds
    in the result. Every upserted claimant of such an IP is rejected (an unchanged holder
    keeps it; two new claimants are both rejected, whatever their names), so a swap inside
    one response works and the outcome does not depend on order. A rejected upsert leaves
    its previous version in place, which may clash in turn: repeat until nothing does."""
    rejected: dict[str, str] = {}
    while True:
        workloads = dict(base.workloads)
        services = dict(base.services)
        for name, obj in upserts.items():
            if name in rejected:
                continue
            if isinstance(obj, Workload):
                workloads[name] = obj
            elif isinstance(obj, Service):
                services[name] = obj
        claims: dict[IpAddr, list[str]] = {}
        for name, w in workloads.items():
            for a in w.addresses:
                claims.setdefault(a, []).append(name)
        for name, svc in services.items():
            for a in svc.vips:
                claims.setdefault(a, []).append(name)
        found: dict[str, str] = {}
        for ip, names in claims.items():
            if len(names) < 2:
                continue
            for name in names:
                if name in upserts and name not in rejected:
                    others = ", ".join(n for n in names if n != name)
                    found[name] = f"address {ip} is also claimed by {others}"
        if not found:
            return rejected
        rejected.update(found)


def _check(type_url: str, name: str, obj: MeshObject) -> str | None:
    if type_url == ADDRESS_TYPE:
        if not isinstance(obj, Workload | Service):
            return f"an Address must be a workload or a service, not {type(obj).__name__}"
    elif type_url == AUTHORIZATION_TYPE:
        if not isinstance(obj, Authorization):
            return f"expected an authorization, not {type(obj).__name__}"
    else:
        return f"unsupported type {type_url}"
    expected = resource_name(obj)
    if name != expected:
        return f"resource name does not match its key {expected!r}"
    return None


def _upsert(state: ProxyState, objs: Iterable[MeshObject]) -> ProxyState:
    objs = list(objs)
    return state.with_changes(
        upsert_workloads=[o for o in objs if isinstance(o, Workload)],
        upsert_services=[o for o in objs if isinstance(o, Service)],
        upsert_policies=[o for o in objs if isinstance(o, Authorization)],
    )


def _one_clause(why: str) -> str:
    """A reason fit for the NACK message `"<name>: <reason>; ..."`: one line, no `; `."""
    return " ".join(why.split()).replace("; ", ", ")


@dataclass
class StateApplier:
    """The xDS client's `apply` callback (see the module docstring). `decode` is
    `ketch.xds.convert.decode_all` (replaceable in tests); every reason is made one line
    without `; `, so the joined NACK message stays parseable."""

    target: StateTarget
    decode: Decoder = decode_all

    def __call__(
        self,
        type_url: str,
        upserts: Sequence[tuple[str, any_pb2.Any]],
        removals: Sequence[str],
    ) -> dict[str, str]:
        if type_url in (ADDRESS_TYPE, AUTHORIZATION_TYPE):
            decoded, bad = self.decode(type_url, upserts)
            rejected = dict(bad)
        else:
            decoded, rejected = {}, {name: f"unsupported type {type_url}" for name, _ in upserts}
        old = self.target.state
        new, more = apply_changes(old, type_url, decoded, removals)
        rejected.update(more)
        rejected = {name: _one_clause(why) for name, why in rejected.items()}
        if new is not old:
            self.target.update_state(new)
        log.debug(
            "xds %s: %d upserted, %d removed, %d rejected",
            type_url.rsplit(".", 1)[-1],
            len(upserts) - len(rejected),
            len(removals),
            len(rejected),
        )
        for name, why in rejected.items():
            log.warning("xds %s %s rejected: %s", type_url.rsplit("/", 1)[-1], name, why)
        return rejected
