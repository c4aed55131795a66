"""`translate_all`, kept up to date object by object: `IncrementalMesh`.

The control plane's push gets the store's watch events; re-translating the whole store for
each of them costs ~0.3 s at 10000 pods (docs/benchmark-control-plane.md). `IncrementalMesh`
holds the typed objects and what was derived from them, and `apply(upserted, deleted)`
re-derives only what the changed objects can affect:

- a Pod -> its Workload;
- a Service -> its Service, and the Workloads of the pods its old or new selector selects
  (their `services` map);
- a Namespace -> the Workloads and Services in it (waypoint from namespace labels);
- a Node -> the Workloads of the pods on it (locality);
- a Gateway -> when the set of waypoints changed, every Workload and Service;
- an AuthorizationPolicy -> its Authorization, and, when what it is attached to changed
  (scope or selector, or it appeared or went), the Workloads its old or new selector selects
  in its namespace (every namespace for the root namespace);
- a PeerAuthentication -> every converted policy (`converted_policies`, which looks at all
  of them), and the Workloads of its namespace (every namespace for the root namespace).

`translate_all` stays the reference: for any sequence of `apply` calls, `snapshot()` equals
`translate_all` of the objects held (tests/unit/control/test_translate_incremental.py checks
this on random sequences). The warnings are the same set, in a fixed order (invalid objects,
AuthorizationPolicies, PeerAuthentications, Services, Pods, each by name).

Pure and synchronous: no I/O, no clock. Objects must not be mutated after they are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ketch.api import (
    AuthorizationPolicy,
    Gateway,
    Namespace,
    Node,
    PeerAuthentication,
    Pod,
    Resource,
    ResourceError,
    Service,
    from_manifest,
)
from ketch.control.translate.peer_authentication import converted_policies
from ketch.control.translate.policy import (
    policy_warnings,
    translate_authorization_policy,
    translate_peer_authentication,
)
from ketch.control.translate.snapshot import MeshSnapshot
from ketch.control.translate.workloads import (
    DEFAULT_CLUSTER_ID,
    DEFAULT_DOMAIN_SUFFIX,
    PolicyIndex,
    SelectorIndex,
    WaypointIndex,
    locality_for_node,
    service_for,
    service_index,
    waypoint_index,
    workload_for_pod,
)
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    Authorization,
    MeshError,
    Scope,
    Workload,
    selector_matches,
)
from ketch.mesh import PeerAuthentication as MeshPeerAuthentication
from ketch.mesh import Service as MeshService

ObjectKey = tuple[str, str, str]
"""(kind, metadata.namespace or "", metadata.name): one object of the store."""

_Key = tuple[str, str]  # (namespace as translated, i.e. "default" for none; name)

TRANSLATED_KINDS = frozenset(
    {"Pod", "Service", "Namespace", "Node", "Gateway", "AuthorizationPolicy", "PeerAuthentication"}
)
"""The kinds the translation reads; objects of any other kind are ignored."""


def object_key(obj: Resource | Mapping[str, Any]) -> ObjectKey | None:
    """The store key of a typed object or a manifest (None for a manifest without a name)."""
    if isinstance(obj, Resource):
        return (obj.kind, obj.namespace or "", obj.name)
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        return None
    ns = meta.get("namespace")
    return (str(obj.get("kind")), ns if isinstance(ns, str) else "", meta["name"])


def _ns(obj: Resource) -> str:
    return obj.namespace or "default"


def _key(obj: Resource) -> _Key:
    return (_ns(obj), obj.name)


def _ref(kind: str, key: _Key) -> str:
    return f"{kind} {key[0]}/{key[1]}"


def _attachment(a: Authorization | None) -> tuple[str, Mapping[str, str]] | None:
    """What makes a policy appear in `Workload.authorization_policies` (`PolicyIndex`)."""
    if a is None or a.scope is not Scope.WORKLOAD_SELECTOR or a.selector is None:
        return None
    return (a.namespace, a.selector)


@dataclass(frozen=True)
class MeshChanges:
    """What one `apply` may have changed, by xDS name: look each name up in the
    `IncrementalMesh` (absent = removed). A name may be listed with an equal value."""

    workloads: frozenset[str] = frozenset()
    services: frozenset[str] = frozenset()
    authorizations: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.workloads or self.services or self.authorizations)


class IncrementalMesh:
    """The mesh snapshot of a changing set of objects (module docstring). `workloads`,
    `services` and `authorizations` are the live results, keyed as `MeshSnapshot`'s."""

    def __init__(
        self,
        *,
        cluster_id: str = DEFAULT_CLUSTER_ID,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
    ) -> None:
        self.cluster_id = cluster_id
        self.root_namespace = root_namespace
        self.trust_domain = trust_domain
        self.domain_suffix = domain_suffix
        self._clear()

    def _clear(self) -> None:
        # inputs
        self._models: dict[ObjectKey, Resource] = {}
        self._invalid: dict[ObjectKey, str] = {}
        self._namespaces: dict[str, Namespace] = {}
        self._nodes: dict[str, Node] = {}
        self._pods: dict[_Key, Pod] = {}
        self._services: dict[_Key, Service] = {}
        self._gateways: dict[_Key, Gateway] = {}
        self._aps: dict[_Key, AuthorizationPolicy] = {}
        self._pas: dict[_Key, PeerAuthentication] = {}
        # indexes of the pods
        self._pods_by_ns: dict[str, set[str]] = {}
        self._pods_by_label: dict[tuple[str, str, str], set[str]] = {}
        self._pods_by_node: dict[str, set[_Key]] = {}
        # derived
        self._warnings: dict[tuple[int, str], tuple[str, ...]] = {}
        self._ap_auth: dict[str, Authorization] = {}  # by Authorization key
        self._ap_name: dict[_Key, str] = {}
        self._mesh_pas: dict[_Key, MeshPeerAuthentication] = {}
        self._converted: dict[str, Authorization] = {}
        self.authorizations: dict[str, Authorization] = {}
        self._index = PolicyIndex()
        self._waypoints: WaypointIndex = waypoint_index(())
        self._svc_index: dict[str, SelectorIndex[Service]] = {}
        self.services: dict[str, MeshService] = {}
        self._svc_name: dict[_Key, str] = {}
        self.workloads: dict[str, Workload] = {}
        self._pod_uid: dict[_Key, str] = {}

    # --- results ---

    def warnings(self) -> tuple[str, ...]:
        invalid = [self._invalid[k] for k in sorted(self._invalid)]
        return (*invalid, *(w for _, ws in sorted(self._warnings.items()) for w in ws))

    def snapshot(self) -> MeshSnapshot:
        return MeshSnapshot(
            workloads=self.workloads,
            services=self.services,
            authorizations=self.authorizations,
            peer_authentications={m.key: m for m in self._mesh_pas.values()},
            warnings=self.warnings(),
        )

    # --- changes ---

    def reset(self, objects: Iterable[Resource | Mapping[str, Any]]) -> MeshChanges:
        """Forget everything and translate `objects` (keys must be unique)."""
        old = MeshChanges(
            frozenset(self.workloads), frozenset(self.services), frozenset(self.authorizations)
        )
        self._clear()
        new = self.apply(objects)
        return MeshChanges(
            old.workloads | new.workloads,
            old.services | new.services,
            old.authorizations | new.authorizations,
        )

    def apply(
        self,
        upserted: Iterable[Resource | Mapping[str, Any]] = (),
        deleted: Iterable[ObjectKey] = (),
    ) -> MeshChanges:
        """Objects created or updated (typed, or manifests to validate) and objects deleted
        (by key); each key at most once per call. Returns what may have changed."""
        dirty = _Dirty()
        for key in deleted:
            self._invalid.pop(key, None)
            self._set(key, None, dirty)
        for obj in upserted:
            okey = self._typed_key(obj)
            if okey is not None:
                model = obj if isinstance(obj, Resource) else self._validate(okey, obj)
                self._set(okey, model, dirty)
        return self._recompute(dirty)

    def _typed_key(self, obj: Resource | Mapping[str, Any]) -> ObjectKey | None:
        key = object_key(obj)
        if key is None or key[0] not in TRANSLATED_KINDS:
            return None
        return key

    def _validate(self, key: ObjectKey, manifest: Mapping[str, Any]) -> Resource | None:
        self._invalid.pop(key, None)
        try:
            return from_manifest(manifest, source="store")
        except ResourceError as e:
            ns = key[1] or "default"
            self._invalid[key] = (
                f"{key[0]} {ns}/{key[2]}: not sent to the node proxies: invalid object: {e}"
            )
            return None

    def _set(self, key: ObjectKey, model: Resource | None, dirty: _Dirty) -> None:
        """Replace the object under `key` (None: remove) and note what it touches."""
        old = self._models.pop(key, None)
        if model is not None:
            self._models[key] = model
        for obj in (old, model):
            if obj is None:
                continue
            k = _key(obj)
            if isinstance(obj, Pod):
                dirty.pods.add(k)
            elif isinstance(obj, Service):
                dirty.services.add(k)
                if obj.spec.selector:
                    dirty.selections.append((k[0], obj.spec.selector))
            elif isinstance(obj, Namespace):
                dirty.namespaces.add(obj.name)
            elif isinstance(obj, Node):
                dirty.nodes.add(obj.name)
            elif isinstance(obj, Gateway):
                dirty.gateways = True
            elif isinstance(obj, AuthorizationPolicy):
                dirty.aps.add(k)
            elif isinstance(obj, PeerAuthentication):
                dirty.pas.add(k)
        if isinstance(old, Pod):
            self._unindex_pod(old)
        if isinstance(model, Pod):
            self._index_pod(model)
        # the typed views
        for obj, value in ((old, None), (model, model)):
            if obj is None:
                continue
            if isinstance(obj, Namespace):
                _put(self._namespaces, obj.name, value)
            elif isinstance(obj, Node):
                _put(self._nodes, obj.name, value)
            elif isinstance(obj, Pod):
                _put(self._pods, _key(obj), value)
            elif isinstance(obj, Service):
                _put(self._services, _key(obj), value)
            elif isinstance(obj, Gateway):
                _put(self._gateways, _key(obj), value)
            elif isinstance(obj, AuthorizationPolicy):
                _put(self._aps, _key(obj), value)
            elif isinstance(obj, PeerAuthentication):
                _put(self._pas, _key(obj), value)

    def _index_pod(self, pod: Pod) -> None:
        ns, name = _key(pod)
        self._pods_by_ns.setdefault(ns, set()).add(name)
        for k, v in pod.labels.items():
            self._pods_by_label.setdefault((ns, k, v), set()).add(name)
        self._pods_by_node.setdefault(pod.spec.node_name or "", set()).add((ns, name))

    def _unindex_pod(self, pod: Pod) -> None:
        ns, name = _key(pod)
        _discard(self._pods_by_ns, ns, name)
        for k, v in pod.labels.items():
            _discard(self._pods_by_label, (ns, k, v), name)
        _discard(self._pods_by_node, pod.spec.node_name or "", (ns, name))

    def _selected(self, namespace: str, selector: Mapping[str, str]) -> set[_Key]:
        """Pods of `namespace` (every namespace for the root namespace) whose labels match
        `selector` (all of them for an empty selector)."""
        spaces = list(self._pods_by_ns) if namespace == self.root_namespace else [namespace]
        out: set[_Key] = set()
        for ns in spaces:
            if not selector:
                out.update((ns, n) for n in self._pods_by_ns.get(ns, ()))
                continue
            k, v = min(selector.items())
            for name in self._pods_by_label.get((ns, k, v), ()):
                if selector_matches(selector, self._pods[(ns, name)].labels):
                    out.add((ns, name))
        return out

    def _policy_scope(self, namespace: str) -> set[_Key]:
        """Every pod a policy of `namespace` can apply to (all, for the root namespace)."""
        return self._selected(namespace, {})

    # --- recomputation ---

    def _recompute(self, dirty: _Dirty) -> MeshChanges:
        touched_auth: set[str] = set()
        pods = set(dirty.pods)
        services = set(dirty.services)

        if dirty.gateways:
            waypoints = waypoint_index(self._gateways.values())
            if waypoints != self._waypoints:
                self._waypoints = waypoints
                pods.update(self._pods)
                services.update(self._services)

        if dirty.aps or dirty.pas:
            before: dict[str, Authorization | None] = {}
            for key in dirty.aps:
                name = self._ap_name.pop(key, None)
                if name is not None:
                    touched_auth.add(name)
                    self._ap_auth.pop(name, None)
                self._translate_ap(key)
            if dirty.pas:
                for key in dirty.pas:
                    self._translate_pa(key)
                    pods |= self._policy_scope(key[0])
                mesh_pas = [self._mesh_pas[k] for k in sorted(self._mesh_pas, key=_pa_ref)]
                converted = {
                    a.key: a
                    for a in converted_policies(mesh_pas, root_namespace=self.root_namespace)
                }
                touched_auth |= set(self._converted) | set(converted)
                self._converted = converted
            touched_auth |= {self._ap_name[k] for k in dirty.aps if k in self._ap_name}
            for name in touched_auth:
                before[name] = self.authorizations.get(name)
                value = self._converted.get(name) or self._ap_auth.get(name)
                _put(self.authorizations, name, value)
            for name, old in before.items():
                new = self.authorizations.get(name)
                was, now = _attachment(old), _attachment(new)
                if was != now:
                    for att in (was, now):
                        if att is not None:
                            pods |= self._selected(*att)
            self._index = PolicyIndex.build(
                self.authorizations.values(),
                [self._mesh_pas[k] for k in sorted(self._mesh_pas, key=_pa_ref)],
            )

        for ns in dirty.namespaces:
            pods |= self._all_pods_of_exact(ns)
            services.update(k for k in self._services if k[0] == ns)
        for node in dirty.nodes:
            pods.update(self._pods_by_node.get(node, ()))

        if dirty.services:
            for ns in {k[0] for k in dirty.services}:
                in_ns = [self._services[k] for k in sorted(self._services) if k[0] == ns]
                index = service_index(in_ns).get(ns)
                _put(self._svc_index, ns, index)
            for ns, selector in dirty.selections:
                pods |= self._selected_exact(ns, selector)

        touched_svc = {n for k in services if (n := self._recompute_service(k)) is not None}
        touched_svc |= {self._svc_name[k] for k in services if k in self._svc_name}
        touched_wl: set[str] = set()
        for key in pods:
            touched_wl |= self._recompute_pod(key)
        return MeshChanges(frozenset(touched_wl), frozenset(touched_svc), frozenset(touched_auth))

    def _all_pods_of_exact(self, namespace: str) -> set[_Key]:
        return {(namespace, n) for n in self._pods_by_ns.get(namespace, ())}

    def _selected_exact(self, namespace: str, selector: Mapping[str, str]) -> set[_Key]:
        k, v = min(selector.items())
        return {
            (namespace, name)
            for name in self._pods_by_label.get((namespace, k, v), ())
            if selector_matches(selector, self._pods[(namespace, name)].labels)
        }

    def _translate_ap(self, key: _Key) -> None:
        slot = (1, _ref("AuthorizationPolicy", key))
        self._warnings.pop(slot, None)
        ap = self._aps.get(key)
        if ap is None:
            return
        ref = _ref("AuthorizationPolicy", key)
        warnings = [f"{ref}: {path}: {msg}" for path, msg in policy_warnings(ap)]
        try:
            a = translate_authorization_policy(ap, root_namespace=self.root_namespace)
        except (MeshError, ValueError) as e:
            warnings.append(f"{ref}: not sent to the node proxies: {e}")
            a = None
        if warnings:
            self._warnings[slot] = tuple(warnings)
        if a is not None:
            self._ap_auth[a.key] = a
            self._ap_name[key] = a.key

    def _translate_pa(self, key: _Key) -> None:
        slot = (2, _ref("PeerAuthentication", key))
        self._warnings.pop(slot, None)
        self._mesh_pas.pop(key, None)
        pa = self._pas.get(key)
        if pa is None:
            return
        ref = _ref("PeerAuthentication", key)
        warnings = [f"{ref}: {path}: {msg}" for path, msg in policy_warnings(pa)]
        try:
            self._mesh_pas[key] = translate_peer_authentication(pa)
        except (MeshError, ValueError) as e:
            warnings.append(f"{ref}: not sent to the node proxies: {e}")
        if warnings:
            self._warnings[slot] = tuple(warnings)

    def _recompute_service(self, key: _Key) -> str | None:
        slot = (3, _ref("Service", key))
        self._warnings.pop(slot, None)
        old = self._svc_name.pop(key, None)
        if old is not None:
            del self.services[old]
        svc = self._services.get(key)
        if svc is None:
            return old
        try:
            s = service_for(
                svc,
                namespace=self._namespaces.get(key[0]),
                waypoints=self._waypoints,
                domain_suffix=self.domain_suffix,
            )
        except (MeshError, ValueError) as e:
            self._warnings[slot] = (f"{_ref('Service', key)}: not sent to the node proxies: {e}",)
            return old
        if s is None:
            return old
        self.services[s.key] = s
        self._svc_name[key] = s.key
        return s.key

    def _recompute_pod(self, key: _Key) -> set[str]:
        slot = (4, _ref("Pod", key))
        self._warnings.pop(slot, None)
        touched = set()
        old = self._pod_uid.pop(key, None)
        if old is not None:
            del self.workloads[old]
            touched.add(old)
        pod = self._pods.get(key)
        if pod is None:
            return touched
        ns = key[0]
        candidates = self._svc_index.get(ns)
        try:
            w = workload_for_pod(
                pod,
                namespace=self._namespaces.get(ns),
                services=candidates.matching(pod.labels) if candidates is not None else [],
                policies_index=self._index,
                cluster_id=self.cluster_id,
                trust_domain=self.trust_domain,
                root_namespace=self.root_namespace,
                node_locality=locality_for_node(self._nodes.get(pod.spec.node_name or "")),
                waypoints=self._waypoints,
                domain_suffix=self.domain_suffix,
            )
        except (MeshError, ValueError) as e:
            self._warnings[slot] = (f"{_ref('Pod', key)}: not sent to the node proxies: {e}",)
            return touched
        if w is not None:
            self.workloads[w.uid] = w
            self._pod_uid[key] = w.uid
            touched.add(w.uid)
        return touched


def _pa_ref(key: _Key) -> str:
    return _ref("PeerAuthentication", key)


class _Dirty:
    """What one `apply` touched, before its consequences are worked out."""

    def __init__(self) -> None:
        self.pods: set[_Key] = set()
        self.services: set[_Key] = set()
        self.selections: list[tuple[str, Mapping[str, str]]] = []  # old and new selectors
        self.namespaces: set[str] = set()
        self.nodes: set[str] = set()
        self.gateways = False
        self.aps: set[_Key] = set()
        self.pas: set[_Key] = set()


def _put(d: dict[Any, Any], key: Any, value: Any) -> None:
    if value is None:
        d.pop(key, None)
    else:
        d[key] = value


def _discard(d: dict[Any, set[Any]], key: Any, value: Any) -> None:
    s = d.get(key)
    if s is not None:
        s.discard(value)
        if not s:
            del d[key]
