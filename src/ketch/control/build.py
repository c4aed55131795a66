"""The push pipeline's `build`: the store's objects -> the xDS resources every node is sent.

    full build (start, resync):  store.list() -> IncrementalMesh.apply(all) -> encode all
    update (every push):         watch events -> IncrementalMesh.apply(changed) -> encode
                                 what changed -> push.Patch
        ADDRESS_TYPE:       xds.convert.snapshot(workloads + services)
        AUTHORIZATION_TYPE: xds.convert.snapshot(authorizations)

`authorizations` already holds the policies istiod derives from PeerAuthentications
(`control/translate/peer_authentication.py`); the native PeerAuthentications of the mesh
snapshot are for Ketch's standalone node proxy and do not travel over xDS, as with istiod.

A full build's one `list()` of the whole store is one consistent read; an update applies
the events in revision order (the last event of an object wins), so it too ends at one
store revision. The translation is `control/translate/incremental.IncrementalMesh`, which
re-derives only what the changed objects affect and equals `translate_all` (the reference,
tested on random change sequences). Translation warnings are logged when the set of
warnings changes (each new warning once), not on every push.

Caches, so that a push costs in proportion to what changed:

- the validated `ketch.api` model of each manifest of the last full build, keyed by its
  apiVersion, kind, namespace, name, uid and resourceVersion (a resync validates only what
  was written since); an update validates the manifests of its events only;
- the encoded `(version, Any)` of each mesh object by type and resource name, reused when
  the new object is equal to (or is) the one it was encoded from: a push encodes and
  hashes only resources whose content changed.

The models and `Any`s are shared between builds and must not be mutated (nothing in the
translation or the push does).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2

from ketch.api import Resource, ResourceError, from_manifest
from ketch.control.push import Patch
from ketch.control.translate.incremental import (
    TRANSLATED_KINDS,
    IncrementalMesh,
    ObjectKey,
    object_key,
)
from ketch.control.translate.workloads import DEFAULT_CLUSTER_ID, DEFAULT_DOMAIN_SUFFIX
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    Authorization,
    Service,
    Workload,
)
from ketch.store.base import EventType, Store, WatchEvent
from ketch.xds.convert import snapshot
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

if TYPE_CHECKING:
    from ketch.control.push import Entry, Resources, StoreChange

log = logging.getLogger("ketch.control.build")

__all__ = ["TRANSLATED_KINDS", "MeshBuild"]

_Encoded = tuple[object, str, any_pb2.Any, str]
"""(mesh object, version, packed Any, network) of one encoded resource."""


@dataclass
class MeshBuild:
    """`build(store) -> Resources` for `plane.start_push`, with the mesh settings of the plane.
    Callable (a full build); `update(changes)` is the incremental build from the store's
    watch events. Keeps the last warnings to log only what is new."""

    cluster_id: str = DEFAULT_CLUSTER_ID
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    domain_suffix: str = DEFAULT_DOMAIN_SUFFIX
    network: str = ""  # the network of service VIPs (xds.convert.service_to_proto)
    warn: Callable[[str], None] = field(default=lambda m: log.warning("%s", m), repr=False)
    _warnings: frozenset[str] = field(default=frozenset(), repr=False)
    #: validated models by (apiVersion, kind, namespace, name, uid, resourceVersion)
    _models: dict[tuple[Any, ...], Resource] = field(
        default_factory=dict, repr=False, compare=False
    )
    #: per type, resource name -> (mesh object, version, Any) it was encoded from/to
    _encoded: dict[str, dict[str, _Encoded]] = field(
        default_factory=dict, repr=False, compare=False
    )
    #: the translation, kept up to date by `update` (None before the first full build)
    _mesh: IncrementalMesh | None = field(default=None, repr=False, compare=False)
    #: how many manifests were validated / mesh objects encoded by the last build or update
    validated: int = field(default=0, repr=False, compare=False)
    encoded: int = field(default=0, repr=False, compare=False)

    def __call__(self, store: Store) -> Resources:
        # The cyclic GC is off while building: a build allocates ~10^5 objects next to a heap
        # of ~10^6 long-lived ones (the store's manifests, the cached models, the last
        # snapshot), and the full collections that triggers cost ~40% of a rebuild at 10000
        # pods (bench/xds_build_profile.py). Reference counting still frees everything
        # acyclic; the collector runs again as soon as the build returns.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._build(store)
        finally:
            if enabled:
                gc.enable()

    def _build(self, store: Store) -> Resources:
        objects = self._validate(m for m in store.list().items if m.get("kind") in TRANSLATED_KINDS)
        self._mesh = IncrementalMesh(
            cluster_id=self.cluster_id,
            root_namespace=self.root_namespace,
            trust_domain=self.trust_domain,
            domain_suffix=self.domain_suffix,
        )
        self._mesh.apply(objects)
        self._report(self._mesh.warnings())
        self.encoded = 0
        old, self._encoded = self._encoded, {}
        out: dict[str, dict[str, Entry]] = {}
        for type_url, objs in self._by_type(self._mesh):
            out[type_url] = {}
            # by name: a session sorts the names it sends, and Timsort is linear on sorted
            # input (the mesh's dicts are in the order objects arrived)
            for name, obj in sorted(objs, key=lambda item: item[0]):
                entry = self._encode(obj, old.get(type_url, {}).get(name))
                self._encoded.setdefault(type_url, {})[name] = entry
                out[type_url][name] = (entry[1], entry[2])
        return out

    @staticmethod
    def _by_type(
        mesh: IncrementalMesh,
    ) -> list[tuple[str, Iterable[tuple[str, Workload | Service | Authorization]]]]:
        return [
            (AUTHORIZATION_TYPE, mesh.authorizations.items()),
            (ADDRESS_TYPE, [*mesh.workloads.items(), *mesh.services.items()]),
        ]

    def update(self, changes: Sequence[StoreChange]) -> Patch | None:
        """The Patch `changes` (watch events since the last build or update) make: only the
        changed objects are validated, only what they affect is translated again
        (`IncrementalMesh`), only resources whose mesh object changed are encoded. None
        (a full build is needed) before the first build or after a resync."""
        if self._mesh is None or any(c.resync for c in changes):
            return None
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._update(self._mesh, changes)
        finally:
            if enabled:
                gc.enable()

    def _update(self, mesh: IncrementalMesh, changes: Sequence[StoreChange]) -> Patch:
        last: dict[ObjectKey, WatchEvent] = {}  # the last event of each object wins
        for change in changes:
            for event in change.events:
                if event.object.get("kind") in TRANSLATED_KINDS:
                    key = object_key(event.object)
                    if key is not None:
                        last.pop(key, None)
                        last[key] = event
        upserted: list[Resource | Mapping[str, Any]] = []
        deleted: list[ObjectKey] = []
        self.validated = 0
        for key, event in last.items():
            if event.type is EventType.DELETED:
                deleted.append(key)
            else:
                self.validated += 1
                try:
                    upserted.append(from_manifest(event.object, source="store"))
                except ResourceError:
                    upserted.append(event.object)  # the mesh warns about it
        touched = mesh.apply(upserted, deleted)
        self._report(mesh.warnings())
        self.encoded = 0
        changed: dict[str, dict[str, Entry]] = {}
        removed: dict[str, frozenset[str]] = {}
        for type_url, names, live in (
            (AUTHORIZATION_TYPE, touched.authorizations, (mesh.authorizations,)),
            (ADDRESS_TYPE, touched.workloads | touched.services, (mesh.workloads, mesh.services)),
        ):
            cache = self._encoded.setdefault(type_url, {})
            gone = set()
            for name in names:
                obj = next((m[name] for m in live if name in m), None)
                if obj is None:
                    if cache.pop(name, None) is not None:
                        gone.add(name)
                    continue
                old = cache.get(name)
                entry = self._encode(obj, old)
                if entry is not old:
                    cache[name] = entry
                    changed.setdefault(type_url, {})[name] = (entry[1], entry[2])
            if gone:
                removed[type_url] = frozenset(gone)
        return Patch(changed, removed)

    def _validate(
        self, manifests: Iterable[Mapping[str, Any]]
    ) -> list[Resource | Mapping[str, Any]]:
        """Each manifest's model, from the cache when that version was validated before; a
        manifest that cannot be keyed or does not validate is returned as is (for the
        translation to validate and warn about)."""
        models: dict[tuple[Any, ...], Resource] = {}
        out: list[Resource | Mapping[str, Any]] = []
        self.validated = 0
        for m in manifests:
            meta = m.get("metadata")
            rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
            if not rv or not isinstance(meta, Mapping):
                out.append(m)
                continue
            key = (
                m.get("apiVersion"),
                m.get("kind"),
                meta.get("namespace"),
                meta.get("name"),
                meta.get("uid"),
                str(rv),
            )
            model = self._models.get(key)
            if model is None:
                self.validated += 1
                try:
                    model = from_manifest(m, source="store")
                except ResourceError:
                    out.append(m)
                    continue
            models[key] = model
            out.append(model)
        self._models = models
        return out

    def _encode(self, obj: Workload | Service | Authorization, old: _Encoded | None) -> _Encoded:
        """`old` when it was encoded from an equal object on the same network, else the
        object encoded (`xds.convert.snapshot`: version = content hash, packed Any)."""
        if old is not None and old[3] == self.network and (old[0] is obj or old[0] == obj):
            return old
        self.encoded += 1
        ((_, (version, packed)),) = snapshot([obj], network=self.network).items()
        return (obj, version, packed, self.network)

    def _report(self, warnings: tuple[str, ...]) -> None:
        now = frozenset(warnings)
        for message in dict.fromkeys(warnings):  # in order, without repeats
            if message not in self._warnings:
                self.warn(f"translation: {message}")
        if self._warnings - now:
            log.info("translation: %d earlier warning(s) resolved", len(self._warnings - now))
        self._warnings = now
