"""The node proxy's certificate manager: one certificate per local identity, kept fresh.

- Keys are generated here (`generate_key_and_csr`) and never leave the node; only CSRs go to
  the CA (through a `CaClient`).
- `track(id)` / `untrack(id)` count local workloads per identity. The first `track` starts a
  worker that fetches at once (prefetch, so the certificate is usually ready before the first
  connection) and renews at half-life. The last `untrack` stops the worker and forgets the
  certificate.
- When the CA fails, the still-valid certificate is kept and the fetch retried with
  exponential backoff capped at `backoff_cap` (150 s by default, as ztunnel does).
- `snapshot()` reports every identity's state for status display.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ketch.identity.csr import generate_key_and_csr
from ketch.identity.errors import CaUnavailable, IdentityError
from ketch.identity.local import CaClient
from ketch.identity.spiffe import SpiffeId
from ketch.util.tasks import spawn

log = logging.getLogger("ketch.identity.manager")

BACKOFF_INITIAL = 1.0
BACKOFF_CAP = 150.0
FETCH_TIMEOUT = 10.0


class CertState(enum.StrEnum):
    INITIALIZING = "Initializing"
    AVAILABLE = "Available"
    UNAVAILABLE = "Unavailable"


@dataclass(frozen=True)
class WorkloadCert:
    """A workload's key and certificate chain (leaf first, root last), PEM and DER."""

    identity: SpiffeId
    key_pem: bytes
    chain_pems: tuple[bytes, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    fetched_at: datetime

    @classmethod
    def from_chain(
        cls, identity: SpiffeId, key_pem: bytes, chain: list[bytes], fetched_at: datetime
    ) -> WorkloadCert:
        if not chain:
            raise CaUnavailable(f"certificate service returned an empty chain for {identity}")
        leaf = x509.load_pem_x509_certificate(chain[0])
        return cls(
            identity=identity,
            key_pem=key_pem,
            chain_pems=tuple(chain),
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            fetched_at=fetched_at,
        )

    @property
    def cert_pem(self) -> bytes:
        return self.chain_pems[0]

    @property
    def chain_pem(self) -> bytes:
        """Leaf..intermediates as one PEM blob (the root is left out: peers have it)."""
        return b"".join(self.chain_pems[:-1] if len(self.chain_pems) > 1 else self.chain_pems)

    @property
    def cert_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(
            serialization.Encoding.DER
        )

    @property
    def key_der(self) -> bytes:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def is_valid(self, now: datetime) -> bool:
        return self.not_before <= now < self.not_after

    def renew_at(self) -> datetime:
        """Half-life, measured from when we got it (robust to backdated notBefore)."""
        start = max(self.fetched_at, self.not_before)
        return start + (self.not_after - start) / 2


@dataclass(frozen=True)
class CertStatus:
    """One line of `snapshot()`: what a status display shows."""

    identity: SpiffeId
    state: CertState
    refs: int
    serial: int | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    reason: str | None = None  # why Unavailable, or the last renewal error while Available


@dataclass
class _Entry:
    identity: SpiffeId
    refs: int = 0
    cert: WorkloadCert | None = None
    error: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def _now() -> datetime:
    return datetime.now(UTC)


class CertificateManager:
    def __init__(
        self,
        client: CaClient,
        *,
        ttl: timedelta | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_cap: float = BACKOFF_CAP,
        fetch_timeout: float = FETCH_TIMEOUT,
        now: Callable[[], datetime] = _now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`now` and `sleep` are the clock certificate validity, renewal and backoff follow
        (tests pass a fake one); `fetch(wait=...)` timeouts use the event loop's clock."""
        self._client = client
        self._now = now
        self._sleep = sleep
        self._ttl = ttl  # requested validity; None = the CA's default
        self._backoff_initial = backoff_initial
        self._backoff_cap = backoff_cap
        self._fetch_timeout = fetch_timeout
        self._entries: dict[SpiffeId, _Entry] = {}
        self._running = False
        self._any_change = asyncio.Event()

    async def start(self) -> None:
        self._running = True
        for entry in self._entries.values():
            self._start_worker(entry)

    async def stop(self) -> None:
        self._running = False
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for entry in self._entries.values():
            entry.task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- workload lifecycle ----------------------------------------------------------------

    def track(self, identity: SpiffeId) -> None:
        """A local workload with `identity` appeared: keep its certificate fresh."""
        entry = self._entries.get(identity)
        if entry is None:
            entry = self._entries[identity] = _Entry(identity)
        entry.refs += 1
        if entry.refs == 1 and self._running:
            self._start_worker(entry)

    def untrack(self, identity: SpiffeId) -> None:
        """A local workload left; the last one leaving forgets the identity."""
        entry = self._entries.get(identity)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del self._entries[identity]
            if entry.task is not None:
                entry.task.cancel()
            self._notify(entry)  # wake fetchers; they will see the entry is gone
            log.info("forgot certificate for %s (no local workload uses it)", identity)

    async def wait_for_change(self) -> None:
        """Return after the next certificate fetch, failure or forget (for status displays)."""
        await self._any_change.wait()

    def _notify(self, entry: _Entry) -> None:
        entry.changed.set()
        self._any_change.set()
        self._any_change = asyncio.Event()

    def snapshot(self) -> list[CertStatus]:
        now = self._now()
        out = []
        for entry in sorted(self._entries.values(), key=lambda e: e.identity):
            cert = entry.cert
            if cert is not None and cert.is_valid(now):
                state, reason = CertState.AVAILABLE, entry.error
            elif cert is not None:
                state = CertState.UNAVAILABLE
                reason = f"certificate expired at {cert.not_after:%Y-%m-%dT%H:%M:%SZ}" + (
                    f"; last error: {entry.error}" if entry.error else ""
                )
            elif entry.error is not None:
                state, reason = CertState.UNAVAILABLE, entry.error
            else:
                state, reason = CertState.INITIALIZING, None
            out.append(
                CertStatus(
                    identity=entry.identity,
                    state=state,
                    refs=entry.refs,
                    serial=cert.serial if cert else None,
                    not_before=cert.not_before if cert else None,
                    not_after=cert.not_after if cert else None,
                    reason=reason,
                )
            )
        return out

    # --- the proxy's question ----------------------------------------------------------------

    async def fetch(self, identity: SpiffeId, wait: float | None = None) -> WorkloadCert:
        """A valid certificate for `identity`. Tracked identities are served from the cache
        (waiting up to `wait` seconds for the first one); untracked ones are fetched once, uncached."""
        entry = self._entries.get(identity)
        if entry is None:
            return await self._issue(identity)
        deadline = asyncio.get_running_loop().time() + (wait or self._fetch_timeout)
        while True:
            if entry.cert is not None and entry.cert.is_valid(self._now()):
                return entry.cert
            if self._entries.get(identity) is not entry:
                raise CaUnavailable(f"{identity} is no longer tracked on this node")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise CaUnavailable(
                    f"no certificate for {identity} yet: {entry.error or 'still fetching'}"
                )
            entry.changed.clear()
            try:
                await asyncio.wait_for(entry.changed.wait(), remaining)
            except TimeoutError:
                continue

    # --- internals ---------------------------------------------------------------------------

    def _start_worker(self, entry: _Entry) -> None:
        if entry.task is None or entry.task.done():
            entry.task = spawn(self._maintain(entry), name=f"cert-{entry.identity.principal}")

    async def _issue(self, identity: SpiffeId) -> WorkloadCert:
        key_pem, csr_pem = generate_key_and_csr(identity.uri)
        fetched_at = self._now()
        chain = await self._client.sign(csr_pem, identity, self._ttl)
        return WorkloadCert.from_chain(identity, key_pem, chain, fetched_at)

    async def _maintain(self, entry: _Entry) -> None:
        """Fetch now, then renew at half-life; on failure keep the old cert and back off."""
        backoff = self._backoff_initial
        while self._entries.get(entry.identity) is entry:
            try:
                cert = await self._issue(entry.identity)
            except IdentityError as err:
                entry.error = str(err)
                self._notify(entry)
                delay = min(backoff, self._backoff_cap) * random.uniform(0.9, 1.0)
                backoff = min(backoff * 2, self._backoff_cap)
                kept = entry.cert is not None and entry.cert.is_valid(self._now())
                log.warning(
                    "certificate for %s: %s; %s; retrying in %.1fs",
                    entry.identity,
                    err,
                    "keeping the current certificate" if kept else "no valid certificate",
                    delay,
                )
                await self._sleep(delay)
                continue
            entry.cert, entry.error = cert, None
            self._notify(entry)
            backoff = self._backoff_initial
            log.info(
                "certificate for %s: serial %x until %s",
                entry.identity,
                cert.serial,
                cert.not_after,
            )
            await self._sleep(max(0.0, (cert.renew_at() - self._now()).total_seconds()))
