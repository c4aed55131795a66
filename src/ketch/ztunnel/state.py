"""The node proxy's snapshot of the mesh (`ProxyState`): the shared model's workloads,
services and policies (`ketch.mesh`) with the indexes the data path needs.

`ProxyState` is never mutated. A delta from the control plane (or a reloaded config file)
builds a new snapshot with `with_changes()`; the listeners keep using the snapshot they
started a connection with and pick up the new one for the next decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    Authorization,
    HealthStatus,
    IpAddr,
    MeshError,
    MtlsMode,
    PeerAuthentication,
    Scope,
    Service,
    Workload,
    selector_matches,
)
from ketch.mesh.common import require

_T = TypeVar("_T")


class StateError(MeshError):
    """A snapshot would be inconsistent (duplicate uid, an address claimed twice, ...)."""


@dataclass(frozen=True)
class ProxyState:
    """An immutable, validated snapshot with lookup indexes.

    Invariants checked on construction: workload uids, workload addresses, service VIPs and
    service keys are unique, and no IP is both a workload address and a service VIP.
    """

    workloads: Mapping[str, Workload] = field(default_factory=dict)  # by uid
    services: Mapping[str, Service] = field(default_factory=dict)  # by "ns/hostname"
    policies: Mapping[str, Authorization] = field(default_factory=dict)  # by "ns/name"
    peer_authentications: Mapping[str, PeerAuthentication] = field(default_factory=dict)
    root_namespace: str = DEFAULT_ROOT_NAMESPACE

    _by_address: Mapping[IpAddr, Workload] = field(init=False, repr=False, compare=False)
    _by_vip: Mapping[IpAddr, Service] = field(init=False, repr=False, compare=False)
    _endpoints: Mapping[str, tuple[Workload, ...]] = field(init=False, repr=False, compare=False)
    # policies by namespace: (namespace-wide or global, with a selector); sorted by key
    _policies_by_ns: Mapping[str, tuple[tuple[Authorization, ...], tuple[Authorization, ...]]] = (
        field(init=False, repr=False, compare=False)
    )
    _global_policies: tuple[Authorization, ...] = field(init=False, repr=False, compare=False)
    _peer_authn_by_ns: Mapping[str, tuple[PeerAuthentication, ...]] = field(
        init=False, repr=False, compare=False
    )
    # policies_for() results for this snapshot's own workloads (the snapshot never changes)
    _policy_cache: dict[str, tuple[Authorization, ...]] = field(
        init=False, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        workloads: Iterable[Workload] = (),
        services: Iterable[Service] = (),
        policies: Iterable[Authorization] = (),
        peer_authentications: Iterable[PeerAuthentication] = (),
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> ProxyState:
        """A snapshot from lists; duplicates (same uid/key) are an error."""
        return cls(
            workloads=_unique("workload uid", ((w.uid, w) for w in workloads)),
            services=_unique("service", ((s.key, s) for s in services)),
            policies=_unique("authorization policy", ((p.key, p) for p in policies)),
            peer_authentications=_unique(
                "peer authentication", ((p.key, p) for p in peer_authentications)
            ),
            root_namespace=root_namespace,
        )

    def __post_init__(self) -> None:
        require("root namespace", self.root_namespace)
        for name, m in (
            ("workloads", self.workloads),
            ("services", self.services),
            ("policies", self.policies),
            ("peer_authentications", self.peer_authentications),
        ):
            object.__setattr__(self, name, MappingProxyType(dict(m)))
        for uid, w in self.workloads.items():
            if uid != w.uid:
                raise StateError(f"workload indexed as {uid!r} has uid {w.uid!r}")
        for k, s in self.services.items():
            if k != s.key:
                raise StateError(f"service indexed as {k!r} has key {s.key!r}")
        for k, p in self.policies.items():
            if k != p.key:
                raise StateError(f"policy indexed as {k!r} has key {p.key!r}")
        for k, pa in self.peer_authentications.items():
            if k != pa.key:
                raise StateError(f"peer authentication indexed as {k!r} has key {pa.key!r}")

        by_address: dict[IpAddr, Workload] = {}
        for w in self.workloads.values():
            for a in w.addresses:
                other = by_address.get(a)
                if other is not None:
                    raise StateError(
                        f"address {a} is claimed by workloads {other.key} ({other.uid}) and "
                        f"{w.key} ({w.uid}); is a deleted pod still in the config?"
                    )
                by_address[a] = w
        by_vip: dict[IpAddr, Service] = {}
        for s in self.services.values():
            for v in s.vips:
                if v in by_vip:
                    raise StateError(f"VIP {v} is claimed by services {by_vip[v].key} and {s.key}")
                if v in by_address:
                    raise StateError(
                        f"VIP {v} of service {s.key} is also the address of workload "
                        f"{by_address[v].key}"
                    )
                by_vip[v] = s
        endpoints: dict[str, list[Workload]] = {}
        for w in sorted(self.workloads.values(), key=lambda w: w.uid):
            if w.status is not HealthStatus.HEALTHY:
                continue
            for key in w.services:
                endpoints.setdefault(key, []).append(w)
        wide: dict[str, list[Authorization]] = {}
        selecting: dict[str, list[Authorization]] = {}
        global_policies = []
        for key in sorted(self.policies):
            p = self.policies[key]
            if p.scope is Scope.GLOBAL:
                global_policies.append(p)
            elif p.scope is Scope.NAMESPACE:
                wide.setdefault(p.namespace, []).append(p)
            elif p.selector is not None:
                selecting.setdefault(p.namespace, []).append(p)
        object.__setattr__(
            self,
            "_policies_by_ns",
            MappingProxyType(
                {
                    ns: (tuple(wide.get(ns, ())), tuple(selecting.get(ns, ())))
                    for ns in wide.keys() | selecting.keys()
                }
            ),
        )
        object.__setattr__(self, "_global_policies", tuple(global_policies))
        pa_by_ns: dict[str, list[PeerAuthentication]] = {}
        for pa in sorted(self.peer_authentications.values(), key=_age):
            pa_by_ns.setdefault(pa.namespace, []).append(pa)
        object.__setattr__(
            self, "_peer_authn_by_ns", MappingProxyType({k: tuple(v) for k, v in pa_by_ns.items()})
        )
        object.__setattr__(self, "_policy_cache", {})
        object.__setattr__(self, "_by_address", MappingProxyType(by_address))
        object.__setattr__(self, "_by_vip", MappingProxyType(by_vip))
        object.__setattr__(
            self, "_endpoints", MappingProxyType({k: tuple(v) for k, v in endpoints.items()})
        )

    # ---- lookups

    def workload_by_uid(self, uid: str) -> Workload | None:
        return self.workloads.get(uid)

    def workload_by_address(self, ip: IpAddr) -> Workload | None:
        return self._by_address.get(ip)

    def service_by_vip(self, ip: IpAddr) -> Service | None:
        return self._by_vip.get(ip)

    def service_by_hostname(self, namespace: str, hostname: str) -> Service | None:
        return self.services.get(f"{namespace}/{hostname}")

    def endpoints(self, service: Service) -> tuple[Workload, ...]:
        """Healthy workloads that list `service` in their `services`, ordered by uid."""
        return self._endpoints.get(service.key, ())

    def services_of(self, workload: Workload) -> tuple[Service, ...]:
        """The known services `workload` is an endpoint of."""
        return tuple(self.services[k] for k in sorted(workload.services) if k in self.services)

    def policies_for(self, workload: Workload) -> tuple[Authorization, ...]:
        """The authorization policies that apply to `workload`: global ones (root namespace,
        or scope GLOBAL), its namespace's namespace-wide ones, and selector policies that
        select it (by label, or attached by name through `authorization_policies`).
        Ordered by key so evaluation and its report are deterministic."""
        own = self.workloads.get(workload.uid) is workload
        if own and workload.uid in self._policy_cache:
            return self._policy_cache[workload.uid]
        found = {p.key: p for p in self._global_policies}
        for ns in {workload.namespace, self.root_namespace}:
            wide, selecting = self._policies_by_ns.get(ns, ((), ()))
            found.update((p.key, p) for p in wide)
            found.update(
                (p.key, p)
                for p in selecting
                if p.selector is not None and selector_matches(p.selector, workload.labels)
            )
        for key in workload.authorization_policies:
            p = self.policies.get(key)
            if p is not None and p.scope is Scope.WORKLOAD_SELECTOR:
                found[key] = p
        result = tuple(found[k] for k in sorted(found))
        if own:
            self._policy_cache[workload.uid] = result
        return result

    def mtls_mode(self, workload: Workload, port: int) -> tuple[MtlsMode, str | None]:
        """The effective PeerAuthentication mode for `workload` on (target) `port`, and the
        key of the policy that set it (None: the default, PERMISSIVE).

        Precedence as Istio: a selecting policy in the workload's namespace, then the
        namespace-wide policy, then the mesh-wide one (root namespace, no selector). UNSET
        inherits from the next level; a port-level mode beats the policy's own mode. Several
        candidates at one level: the oldest (`created`) wins, as in Istio; without creation
        times, the first by name.
        """
        local = self._peer_authn_by_ns.get(workload.namespace, ())
        root = self._peer_authn_by_ns.get(self.root_namespace, ())
        levels = [
            [
                p
                for p in local
                if p.selector is not None and selector_matches(p.selector, workload.labels)
            ],
            [p for p in local if p.selector is None],
            [p for p in root if p.selector is None],
        ]
        for level in levels:
            if not level:
                continue
            p = level[0]
            mode = p.port_modes.get(port, MtlsMode.UNSET)
            if mode is MtlsMode.UNSET:
                mode = p.mode
            if mode is not MtlsMode.UNSET:
                return mode, p.key
        return MtlsMode.PERMISSIVE, None

    # ---- deltas

    def with_changes(
        self,
        *,
        upsert_workloads: Iterable[Workload] = (),
        remove_workloads: Iterable[str] = (),
        upsert_services: Iterable[Service] = (),
        remove_services: Iterable[str] = (),
        upsert_policies: Iterable[Authorization] = (),
        remove_policies: Iterable[str] = (),
        upsert_peer_authentications: Iterable[PeerAuthentication] = (),
        remove_peer_authentications: Iterable[str] = (),
    ) -> ProxyState:
        """A new snapshot: removals (by uid / `ns/hostname` / `ns/name`; unknown keys are
        ignored, as xDS removals of unknown names are) then upserts. Raises `StateError` if
        the result is inconsistent; `self` is unchanged either way."""
        workloads = dict(self.workloads)
        services = dict(self.services)
        policies = dict(self.policies)
        pas = dict(self.peer_authentications)
        for uid in remove_workloads:
            workloads.pop(uid, None)
        for k in remove_services:
            services.pop(k, None)
        for k in remove_policies:
            policies.pop(k, None)
        for k in remove_peer_authentications:
            pas.pop(k, None)
        workloads.update((w.uid, w) for w in upsert_workloads)
        services.update((s.key, s) for s in upsert_services)
        policies.update((p.key, p) for p in upsert_policies)
        pas.update((p.key, p) for p in upsert_peer_authentications)
        return ProxyState(
            workloads=workloads,
            services=services,
            policies=policies,
            peer_authentications=pas,
            root_namespace=self.root_namespace,
        )


def _unique(what: str, items: Iterable[tuple[str, _T]]) -> dict[str, _T]:
    out: dict[str, _T] = {}
    for k, v in items:
        if k in out:
            raise StateError(f"{what} {k!r} appears twice")
        out[k] = v
    return out


def _age(pa: PeerAuthentication) -> tuple[float, str]:
    """Sort key: oldest first; policies without a creation time after those with one."""
    return (pa.created.timestamp() if pa.created else float("inf"), pa.name)
