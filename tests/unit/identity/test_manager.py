"""CertificateManager with an in-process CA behind a switchable fake client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ketch.identity.ca import CertificateAuthority
from ketch.identity.client import InProcessCaClient
from ketch.identity.errors import CaUnavailable, PermissionDenied
from ketch.identity.manager import CertificateManager, CertState
from ketch.identity.spiffe import SpiffeId

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


async def test_renews_at_half_life(mgr: CertificateManager) -> None:
    mgr.track(A)
    first = await mgr.fetch(A)
    assert first.not_after - first.fetched_at <= timedelta(seconds=2)
    await _until(mgr, lambda: mgr.snapshot()[0].serial != first.serial)
    renewed = await mgr.fetch(A)
    # Renewed before the first one expired.
    assert renewed.fetched_at < first.not_after
    assert renewed.key_pem != first.key_pem  # a fresh key per certificate


async def test_keeps_valid_cert_while_ca_down_then_recovers(
    mgr: CertificateManager, client: SwitchableClient
) -> None:
    mgr.track(A)
    first = await mgr.fetch(A)
    client.down = True
    await _until(mgr, lambda: mgr.snapshot()[0].reason is not None)
    status = mgr.snapshot()[0]
    if datetime.now(UTC) < first.not_after:
        assert status.state is CertState.AVAILABLE
        assert status.serial == first.serial
    assert "CA is down" in (status.reason or "")
    await _until(mgr, lambda: mgr.snapshot()[0].state is CertState.UNAVAILABLE)
    assert "expired" in (mgr.snapshot()[0].reason or "")
    calls = client.calls
    client.down = False
    await _until(mgr, lambda: mgr.snapshot()[0].state is CertState.AVAILABLE)
    assert client.calls > calls
    assert (await mgr.fetch(A)).serial != first.serial


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
