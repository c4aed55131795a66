"""Glue between a certificate source and the TLS contexts the HBONE listeners and pools use.

The node proxy gets workload certificates from a *cert source*: a
`ketch.identity.manager.CertificateManager` (keeps certificates of tracked identities fresh,
renews at half-life) or any object with `async fetch(SpiffeId) -> cert` (tests, standalone).
The HBONE layer wants `ssl.SSLContext`s built from `ketch.ztunnel.hbone.tls.WorkloadCert`.

Two certificate types exist in the code base and this module bridges them (`to_tls_cert`):

- `ketch.identity.manager.WorkloadCert`: `key_pem`, `chain_pems` (tuple, leaf..root) and a
  `chain_pem` *property* that is one joined `bytes` blob without the root;
- `ketch.ztunnel.hbone.tls.WorkloadCert`: `key_pem`, `chain_pem` (tuple of PEM blocks).
  Its `WorkloadCert.of()` expects a sequence in `chain_pem`, so applied to the manager's
  type it would iterate over the bytes of one blob: never pass a manager cert to `of()`.

`IdentityContexts` caches one client and one server context per identity. `ensure(id)` is
the only awaiting call (fetch, then build contexts if the certificate changed); the pool's
synchronous `client_tls(id)` callback then reads the cache. Each entry is refreshed from the
source after `refresh_interval` seconds or half the certificate's remaining lifetime,
whichever is sooner, so rotations reach new connections without a fetch per connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from ketch.identity.errors import IdentityError
from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import TlsError, tls

log = logging.getLogger("ketch.ztunnel.identity")

DEFAULT_REFRESH_INTERVAL = 30.0


class CertSource(Protocol):
    """What the proxy needs from a certificate provider."""

    async def fetch(self, identity: SpiffeId) -> Any: ...


class IdentityUnavailable(Exception):
    """No usable certificate for a local identity (the CA is unreachable or refused)."""


def to_tls_cert(cert: Any) -> tls.WorkloadCert:
    """Convert any of the code base's certificate objects to the HBONE TLS type.

    Accepts `hbone.tls.WorkloadCert` (returned as is), `identity.manager.WorkloadCert`
    (`chain_pems`, leaf..root) and `identity.ca.IssuedCert` (`chain_pem` list)."""
    if isinstance(cert, tls.WorkloadCert):
        return cert
    key = getattr(cert, "key_pem", None)
    if not isinstance(key, bytes):
        raise TypeError(f"{type(cert).__name__} has no key_pem: not a workload certificate")
    chain = getattr(cert, "chain_pems", None)
    if chain is None:
        chain = getattr(cert, "chain_pem", None)
    if isinstance(chain, bytes) or not isinstance(chain, Sequence) or not chain:
        raise TypeError(
            f"{type(cert).__name__}: expected a sequence of PEM certificates in "
            "chain_pems/chain_pem"
        )
    return tls.WorkloadCert(key, tuple(bytes(c) for c in chain))


def leaf_validity(cert: tls.WorkloadCert) -> tuple[datetime, datetime]:
    leaf = x509.load_pem_x509_certificate(cert.chain_pem[0])
    return leaf.not_valid_before_utc, leaf.not_valid_after_utc


@dataclass
class _Entry:
    cert: tls.WorkloadCert
    client: ssl.SSLContext
    server: ssl.SSLContext
    serial: int
    not_after: datetime
    refresh_at: float  # loop time


class IdentityContexts:
    """Per-identity TLS contexts from a cert source (see the module docstring).

    `on_change(identity, server_context)` is called whenever an identity gets a new
    certificate, so listeners can `HboneServer.set_tls()` the new context."""

    def __init__(
        self,
        source: CertSource,
        trust_bundle: Sequence[bytes],
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        fetch_timeout: float = 15.0,
    ) -> None:
        self._source = source
        self._roots = list(trust_bundle)
        self._refresh = refresh_interval
        self._fetch_timeout = fetch_timeout
        self._entries: dict[SpiffeId, _Entry] = {}
        self._locks: dict[SpiffeId, asyncio.Lock] = {}
        self.on_change: list[Callable[[SpiffeId, ssl.SSLContext], None]] = []

    def track(self, identity: SpiffeId) -> None:
        """Prefetch: tell a CertificateManager-like source a local workload uses `identity`."""
        track = getattr(self._source, "track", None)
        if callable(track):
            track(identity)

    def untrack(self, identity: SpiffeId) -> None:
        untrack = getattr(self._source, "untrack", None)
        if callable(untrack):
            untrack(identity)

    def forget(self, identity: SpiffeId) -> None:
        self._entries.pop(identity, None)
        self._locks.pop(identity, None)

    def ready(self, identity: SpiffeId) -> bool:
        return identity in self._entries

    async def ensure(self, identity: SpiffeId) -> None:
        """Make sure fresh contexts for `identity` are cached; raises IdentityUnavailable."""
        loop = asyncio.get_running_loop()
        e = self._entries.get(identity)
        if e is not None and loop.time() < e.refresh_at:
            return
        lock = self._locks.setdefault(identity, asyncio.Lock())
        async with lock:
            e = self._entries.get(identity)
            if e is not None and loop.time() < e.refresh_at:
                return
            try:
                async with asyncio.timeout(self._fetch_timeout):
                    raw = await self._source.fetch(identity)
            except (TimeoutError, OSError, IdentityError) as err:
                if e is not None and datetime.now(UTC) < e.not_after:
                    # keep serving with the still-valid certificate; try again soon
                    e.refresh_at = loop.time() + min(self._refresh, 5.0)
                    log.warning(
                        "certificate refresh for %s failed (%s); keeping the current one",
                        identity,
                        err,
                    )
                    return
                raise IdentityUnavailable(
                    f"no certificate for {identity}: {err or type(err).__name__}; is the CA "
                    "reachable and does it accept this node for the identity?"
                ) from err
            cert = to_tls_cert(raw)
            if e is not None and e.cert == cert:
                e.refresh_at = loop.time() + self._next_refresh(e.not_after)
                return
            leaf = x509.load_pem_x509_certificate(cert.chain_pem[0])
            not_after = leaf.not_valid_after_utc
            entry = _Entry(
                cert=cert,
                client=tls.client_context(cert, self._roots),
                server=tls.server_context(cert, self._roots),
                serial=leaf.serial_number,
                not_after=not_after,
                refresh_at=loop.time() + self._next_refresh(not_after),
            )
            self._entries[identity] = entry
            log.info(
                "TLS contexts for %s: certificate serial %x until %s",
                identity,
                entry.serial,
                not_after,
            )
            for cb in list(self.on_change):
                cb(identity, entry.server)

    def _next_refresh(self, not_after: datetime) -> float:
        remaining = (not_after - datetime.now(UTC)).total_seconds()
        return max(min(0.5, self._refresh), min(self._refresh, remaining / 2))

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        """The cached client context (call `ensure` first); for HboneClientPool."""
        e = self._entries.get(identity)
        if e is None:
            # an HboneError, so the pool fails the dial cleanly (the pod may be gone)
            raise TlsError(f"no certificate for {identity} (pod removed or not ready)")
        return e.client

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        e = self._entries.get(identity)
        if e is None:
            raise IdentityUnavailable(f"no certificate for {identity} yet")
        return e.server

    def chain(self, identity: SpiffeId) -> tuple[bytes, ...] | None:
        """The certificate chain (PEM, leaf first) in use for `identity`, if any."""
        e = self._entries.get(identity)
        return e.cert.chain_pem if e is not None else None

    def identities(self) -> list[SpiffeId]:
        return sorted(self._entries)

    def snapshot(self) -> list[dict[str, str]]:
        """What config_dump shows: identity, serial and expiry of each cached certificate."""
        return [
            {"identity": i.uri, "serial": f"{e.serial:x}", "not_after": e.not_after.isoformat()}
            for i, e in sorted(self._entries.items())
        ]
