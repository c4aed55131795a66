"""The push pipeline's `build`: the store's objects -> the xDS resources every node is sent.

    store.list() ─(kinds the translation reads)─> translate_all ─> MeshSnapshot
        ADDRESS_TYPE:       xds.convert.snapshot(workloads + services)
        AUTHORIZATION_TYPE: xds.convert.snapshot(authorizations)

`authorizations` already holds the policies istiod derives from PeerAuthentications
(`control/translate/peer_authentication.py`); the native PeerAuthentications of the mesh
snapshot are for Ketch's standalone node proxy and do not travel over xDS, as with istiod.

One `list()` of the whole store is one consistent read: a Pod and the Service selecting it
are never taken from two different revisions. Translation warnings are logged when the set
of warnings changes (each new warning once), not on every rebuild.

Between rebuilds `MeshBuild` keeps three caches, so a push costs less than the first build
while giving exactly what a fresh `MeshBuild` gives:

- the validated `ketch.api` model of each manifest, keyed by its apiVersion, kind,
  namespace, name, uid and resourceVersion (the store gives every write a new
  resourceVersion, so only written objects are validated again; a manifest without a
  resourceVersion, or one that does not validate, is handed to `translate_all` as is);
- the encoded `(version, Any)` of each mesh object by resource name, reused when the new
  object is equal to the one it was encoded from (mesh objects are frozen dataclasses).
- the Workload of each pod (`translate_all`'s `workload_cache`), reused when its inputs are
  the same cached models and equal values.

Each keeps only what the last build saw. The models and `Any`s are shared between builds
and must not be mutated (nothing in the translation or the push does).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2

from ketch.api import Resource, ResourceError, from_manifest
from ketch.control.translate.snapshot import WorkloadCache, translate_all
from ketch.control.translate.workloads import DEFAULT_CLUSTER_ID, DEFAULT_DOMAIN_SUFFIX
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    Authorization,
    Service,
    Workload,
)
from ketch.store.base import Store
from ketch.xds.convert import Snapshot, resource_name, snapshot
from ketch.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

if TYPE_CHECKING:
    from ketch.control.push import Resources

log = logging.getLogger("ketch.control.build")

#: The kinds `translate_all` reads; everything else in the store is not listed for it.
TRANSLATED_KINDS = frozenset(
    {
        "Pod",
        "Service",
        "Namespace",
        "Node",
        "Gateway",
        "AuthorizationPolicy",
        "PeerAuthentication",
    }
)


@dataclass
class MeshBuild:
    """`build(store) -> Resources` for `plane.start_push`, with the mesh settings of the plane.
    Callable; keeps the last warnings to log only what is new."""

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
    #: resource name -> (mesh object, network, version, Any) it was encoded from/to
    _encoded: dict[str, tuple[object, str, str, any_pb2.Any]] = field(
        default_factory=dict, repr=False, compare=False
    )
    #: the Workloads of the last build (`translate_all`'s `workload_cache`)
    _workloads: WorkloadCache = field(default_factory=dict, repr=False, compare=False)
    #: how many manifests were validated / mesh objects encoded by the last build
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
        mesh = translate_all(
            objects,
            cluster_id=self.cluster_id,
            root_namespace=self.root_namespace,
            trust_domain=self.trust_domain,
            domain_suffix=self.domain_suffix,
            workload_cache=self._workloads,
        )
        self._report(mesh.warnings)
        self.encoded = 0
        encoded: dict[str, tuple[object, str, str, any_pb2.Any]] = {}
        out = {
            AUTHORIZATION_TYPE: self._encode(mesh.authorizations.values(), encoded),
            ADDRESS_TYPE: self._encode(
                [*mesh.workloads.values(), *mesh.services.values()], encoded
            ),
        }
        self._encoded = encoded
        return out

    def _validate(
        self, manifests: Iterable[Mapping[str, Any]]
    ) -> list[Resource | Mapping[str, Any]]:
        """Each manifest's model, from the cache when that version was validated before; a
        manifest that cannot be keyed or does not validate is returned as is (for
        `translate_all` to validate and warn about)."""
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

    def _encode(
        self,
        objects: Iterable[Workload | Service | Authorization],
        encoded: dict[str, tuple[object, str, str, any_pb2.Any]],
    ) -> Snapshot:
        """`xds.convert.snapshot(objects)`, encoding only objects not equal to the one last
        encoded under their name."""
        out: Snapshot = {}
        for obj in objects:
            name = resource_name(obj)
            hit = self._encoded.get(name)
            if hit is not None and hit[1] == self.network and (hit[0] is obj or hit[0] == obj):
                entry = hit
            else:
                self.encoded += 1
                ((_, (version, packed)),) = snapshot([obj], network=self.network).items()
                entry = (obj, self.network, version, packed)
            encoded[name] = entry
            out[name] = (entry[2], entry[3])
        return out

    def _report(self, warnings: tuple[str, ...]) -> None:
        now = frozenset(warnings)
        for message in dict.fromkeys(warnings):  # in order, without repeats
            if message not in self._warnings:
                self.warn(f"translation: {message}")
        if self._warnings - now:
            log.info("translation: %d earlier warning(s) resolved", len(self._warnings - now))
        self._warnings = now
