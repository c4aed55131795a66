"""Certificate manager against the real gRPC service: renewal before expiry, and keeping the
valid certificate while the CA is down, recovering when it returns."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ketch.identity.ca import CertificateAuthority
from ketch.identity.client import GrpcCaClient, join_node
from ketch.identity.directory import InMemoryNodeDirectory
from ketch.identity.manager import CertificateManager, CertState
from ketch.identity.server import serve_ca
from ketch.identity.spiffe import SpiffeId
from ketch.identity.tokens import TokenStore
from tests.faketime import FakeClock

POD = SpiffeId("cluster.local", "shop", "cart")


@pytest.fixture
def tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kid-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _until(mgr: CertificateManager, cond: Callable[[], bool], within: float = 20) -> None:
    async with asyncio.timeout(within):
        while not cond():
            await mgr.wait_for_change()


async def test_renewal_and_ca_outage(tmp: Path) -> None:
    """The manager runs on a fake clock; the CA signs 24-hour certificates on the real one,
    backdated by a minute. Fake time starts at the real time and moves only by renewal
    (12 h, then 6 h) and backoff steps (0.4 s each, one per failed retry; thousands would be
    needed to reach the end of the held certificate), so each certificate is valid whenever
    the test says it must be, however slow the machine. (Expiry during an outage is covered
    in tests/unit/identity/test_manager.py, where the CA runs on the fake clock too.)"""
    ca = CertificateAuthority.create(state_dir=tmp / "state")
    directory = InMemoryNodeDirectory()
    directory.add_node("node-a")
    directory.add_pod("node-a", "shop", "cart-1", "cart")
    tokens = TokenStore.in_state_dir(tmp / "state")
    sock, join_sock = tmp / "ca.sock", tmp / "join.sock"

    running = await serve_ca(ca, directory, tokens, unix_path=sock, join_unix_path=join_sock)
    creds = await join_node(f"unix:{join_sock}", ca.root_pem, tokens.create("node-a"), "node-a")
    client = GrpcCaClient(
        f"unix:{sock}",
        creds.trust_bundle_pem,
        creds.issued.key_pem,
        creds.issued.chain_bytes,
        timeout=2,
        max_reconnect_ms=200,
    )
    clock = FakeClock()
    mgr = CertificateManager(
        client,
        ttl=timedelta(hours=24),
        backoff_initial=0.1,
        backoff_cap=0.4,
        now=clock.now,
        sleep=clock.sleep,
    )
    await mgr.start()
    try:
        mgr.track(POD)
        first = await mgr.fetch(POD)
        assert first.not_after - first.fetched_at <= timedelta(hours=24)
        # Renewal happens at half-life, before the first certificate expires.
        await clock.sleeping()
        clock.advance(first.renew_at() - clock.now())
        await _until(mgr, lambda: mgr.snapshot()[0].serial != first.serial)
        second = await mgr.fetch(POD)
        assert second.fetched_at == first.renew_at() < first.not_after

        # CA goes away at the next renewal: the manager keeps the valid certificate and
        # reports the error.
        await running.stop(None)
        await clock.sleeping()
        clock.advance(second.renew_at() - clock.now())
        await _until(mgr, lambda: mgr.snapshot()[0].reason is not None)
        assert clock.now() < second.not_after
        status = mgr.snapshot()[0]
        assert status.state is CertState.AVAILABLE
        assert status.serial == second.serial
        assert "certificate service" in (status.reason or "")
        assert await mgr.fetch(POD) is second

        # CA returns (same root, same enrolment state): the manager recovers by itself on a
        # later retry (the channel may need a retry or two to reconnect).
        running = await serve_ca(ca, directory, tokens, unix_path=sock, join_unix_path=join_sock)

        def recovered() -> bool:
            s = mgr.snapshot()[0]
            return s.state is CertState.AVAILABLE and s.reason is None and s.serial != second.serial

        async with asyncio.timeout(30):
            while not recovered():
                await clock.advance_to_next_wakeup()
                await mgr.wait_for_change()
        third = await mgr.fetch(POD)
        assert third.serial != second.serial
        assert third.not_after > datetime.now(UTC)
    finally:
        await mgr.stop()
        await client.close()
        await running.stop(None)
