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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ketch.control.translate.snapshot import translate_all
from ketch.control.translate.workloads import DEFAULT_CLUSTER_ID, DEFAULT_DOMAIN_SUFFIX
from ketch.mesh import DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN
from ketch.store.base import Store
from ketch.xds.convert import snapshot
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

    def __call__(self, store: Store) -> Resources:
        objects = [m for m in store.list().items if m.get("kind") in TRANSLATED_KINDS]
        mesh = translate_all(
            objects,
            cluster_id=self.cluster_id,
            root_namespace=self.root_namespace,
            trust_domain=self.trust_domain,
            domain_suffix=self.domain_suffix,
        )
        self._report(mesh.warnings)
        return {
            AUTHORIZATION_TYPE: snapshot(mesh.authorizations.values()),
            ADDRESS_TYPE: snapshot(
                [*mesh.workloads.values(), *mesh.services.values()], network=self.network
            ),
        }

    def _report(self, warnings: tuple[str, ...]) -> None:
        now = frozenset(warnings)
        for message in dict.fromkeys(warnings):  # in order, without repeats
            if message not in self._warnings:
                self.warn(f"translation: {message}")
        if self._warnings - now:
            log.info("translation: %d earlier warning(s) resolved", len(self._warnings - now))
        self._warnings = now
