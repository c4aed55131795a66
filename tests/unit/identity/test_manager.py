"""CertificateManager with an in-process CA behind a switchable fake client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ketch.identity.ca import CertificateAuthority
from ketch.identity.client import InProcessCaClient
from ketch.identity.errors import CaUnavailable, PermissionDenied
from ketch.identity.manager import CertificateManager, CertState
from ketch.identity.spiffe import SpiffeId
from tests.faketime import FakeClock

A = SpiffeId("cluster.local", "shop", "cart")
B = SpiffeId("cluster.local", "shop", "payments")


class SwitchableClient:
    def __init__(self, ca: CertificateAuthority) -> None:
        self.inner = InProcessCaClient(ca)
        self.down = False
        self.calls = 0

    async def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None) -> list[bytes]:
        self.calls += 1
        if self.down:
            raise CaUnavailable("CA is down (test)")
        return await self.inner.sign(csr_pem, identity, ttl)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(default_ttl=timedelta(seconds=2))


@pytest.fixture
async def client(ca: CertificateAuthority) -> SwitchableClient:
    return SwitchableClient(ca)


@pytest.fixture
async def mgr(client: SwitchableClient) -> AsyncIterator[CertificateManager]:
    m = CertificateManager(client, backoff_initial=0.05, backoff_cap=0.2, fetch_timeout=5)
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


async def _until(mgr: CertificateManager, cond: Callable[[], bool], within: float = 10) -> None:
    async with asyncio.timeout(within):
        while not cond():
            await mgr.wait_for_change()


async def test_fetch_tracked_identity_and_key_matches(mgr: CertificateManager) -> None:
    mgr.track(A)
    cert = await mgr.fetch(A)
    leaf = x509.load_pem_x509_certificate(cert.cert_pem)
    key = serialization.load_pem_private_key(cert.key_pem, None)
    assert leaf.public_key() == key.public_key()
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == [A.uri]
    assert cert.cert_der == leaf.public_bytes(serialization.Encoding.DER)
    assert serialization.load_der_private_key(cert.key_der, None).public_key() == leaf.public_key()
    assert await mgr.fetch(A) is cert  # cached
    [status] = mgr.snapshot()
    assert status.state is CertState.AVAILABLE
    assert status.serial == cert.serial
    assert status.not_after == cert.not_after


async def test_refcount_forgets_after_last_workload(mgr: CertificateManager) -> None:
    mgr.track(A)
    mgr.track(A)
    mgr.track(B)
    await mgr.fetch(A)
    assert [s.refs for s in mgr.snapshot()] == [2, 1]
    mgr.untrack(A)
    assert {s.identity for s in mgr.snapshot()} == {A, B}
    mgr.untrack(A)
    assert {s.identity for s in mgr.snapshot()} == {B}
    mgr.untrack(B)
    mgr.untrack(B)  # extra untrack is harmless
    assert mgr.snapshot() == []


async def test_untracked_fetch_is_one_off(
    mgr: CertificateManager, client: SwitchableClient
) -> None:
    cert = await mgr.fetch(A)
    assert cert.identity == A
    assert mgr.snapshot() == []
    assert client.calls == 1


class ClockCa:
    """A CA on a `FakeClock`: certificates valid [now, now + ttl) in fake time, so the test
    decides when one is due for renewal or expired. `down` makes it fail like a CA outage."""

    def __init__(self, clock: FakeClock, ttl: timedelta = timedelta(hours=1)) -> None:
        self.clock = clock
        self.ttl = ttl
        self.down = False
        self.calls = 0
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fake-time CA")])

    async def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None) -> list[bytes]:
        self.calls += 1
        if self.down:
            raise CaUnavailable("CA is down (test)")
        csr = x509.load_pem_x509_csr(csr_pem)
        now = self.clock.now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + (ttl or self.ttl))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        return [cert.public_bytes(serialization.Encoding.PEM)]


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clock_ca(clock: FakeClock) -> ClockCa:
    return ClockCa(clock)


@pytest.fixture
async def clocked(clock: FakeClock, clock_ca: ClockCa) -> AsyncIterator[CertificateManager]:
    """A manager whose validity checks, renewal timer and backoff all run on `clock`."""
    m = CertificateManager(
        clock_ca, backoff_initial=1, backoff_cap=8, now=clock.now, sleep=clock.sleep
    )
    await m.start()
    try:
        yield m
    finally:
        await m.stop()


async def test_renews_at_half_life(
    clocked: CertificateManager, clock: FakeClock, clock_ca: ClockCa
) -> None:
    mgr = clocked
    mgr.track(A)
    first = await mgr.fetch(A)
    assert first.not_after - first.not_before == timedelta(hours=1)
    await clock.sleeping()  # the worker waits for the renewal time
    clock.advance(first.renew_at() - clock.now() - timedelta(seconds=1))
    assert clock.sleepers == 1  # one second before half-life: still waiting
    assert clock_ca.calls == 1
    clock.advance(timedelta(seconds=1))
    await _until(mgr, lambda: mgr.snapshot()[0].serial != first.serial)
    renewed = await mgr.fetch(A)
    assert clock_ca.calls == 2
    assert renewed.fetched_at == first.fetched_at + timedelta(minutes=30)  # at half-life
    assert renewed.fetched_at < first.not_after
    assert renewed.key_pem != first.key_pem  # a fresh key per certificate


async def test_keeps_valid_cert_while_ca_down_then_recovers(
    clocked: CertificateManager, clock: FakeClock, clock_ca: ClockCa
) -> None:
    mgr = clocked
    mgr.track(A)
    first = await mgr.fetch(A)
    await clock.sleeping()

    # The CA is down when renewal is due: the still-valid certificate is kept and served,
    # the error is reported, and renewal is retried.
    clock_ca.down = True
    clock.advance(first.renew_at() - clock.now())
    await _until(mgr, lambda: mgr.snapshot()[0].reason is not None)
    assert clock.now() < first.not_after  # by construction: 30 of 60 minutes
    status = mgr.snapshot()[0]
    assert status.state is CertState.AVAILABLE
    assert status.serial == first.serial
    assert "CA is down" in (status.reason or "")
    assert await mgr.fetch(A) is first
    for _ in range(3):  # backoff retries while down keep it too
        calls = clock_ca.calls
        await clock.advance_to_next_wakeup()
        await _until(mgr, lambda: clock_ca.calls > calls)  # noqa: B023
        assert mgr.snapshot()[0].state is CertState.AVAILABLE
        assert mgr.snapshot()[0].serial == first.serial

    # Still down when it expires: Unavailable, and no expired certificate is handed out.
    await clock.sleeping()
    clock.advance(first.not_after - clock.now())
    status = mgr.snapshot()[0]
    assert status.state is CertState.UNAVAILABLE
    assert "expired" in (status.reason or "")
    assert "CA is down" in (status.reason or "")
    with pytest.raises(CaUnavailable):
        await mgr.fetch(A, wait=0.05)

    # The CA returns: the next retry gets a new certificate.
    await clock.sleeping()
    clock_ca.down = False
    await clock.advance_to_next_wakeup()
    await _until(mgr, lambda: mgr.snapshot()[0].state is CertState.AVAILABLE)
    status = mgr.snapshot()[0]
    assert status.reason is None
    renewed = await mgr.fetch(A)
    assert renewed.serial != first.serial
    assert status.serial == renewed.serial
    assert renewed.is_valid(clock.now())


async def test_initial_failure_is_unavailable_and_fetch_times_out(
    mgr: CertificateManager, client: SwitchableClient
) -> None:
    client.down = True
    mgr.track(A)
    assert mgr.snapshot()[0].state in (CertState.INITIALIZING, CertState.UNAVAILABLE)
    with pytest.raises(CaUnavailable, match="CA is down"):
        await mgr.fetch(A, wait=0.3)
    assert mgr.snapshot()[0].state is CertState.UNAVAILABLE
    client.down = False
    assert (await mgr.fetch(A)).identity == A


async def test_refusal_surfaces_in_snapshot(ca: CertificateAuthority) -> None:
    class Refusing:
        async def sign(
            self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None
        ) -> list[bytes]:
            raise PermissionDenied("node x runs no pod with service account shop/cart")

    m = CertificateManager(Refusing(), backoff_initial=0.05, backoff_cap=0.1)
    await m.start()
    try:
        m.track(A)
        await _until(m, lambda: m.snapshot()[0].state is CertState.UNAVAILABLE)
        assert "runs no pod" in (m.snapshot()[0].reason or "")
    finally:
        await m.stop()


async def test_track_before_start_prefetches_on_start(client: SwitchableClient) -> None:
    m = CertificateManager(client)
    m.track(A)
    assert m.snapshot()[0].state is CertState.INITIALIZING
    await m.start()
    try:
        await _until(m, lambda: m.snapshot()[0].state is CertState.AVAILABLE)
    finally:
        await m.stop()
