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
    mgr = CertificateManager(client, ttl=timedelta(seconds=4), backoff_initial=0.1, backoff_cap=0.4)
    await mgr.start()
    try:
        mgr.track(POD)
        first = await mgr.fetch(POD)
        assert first.not_after - first.fetched_at <= timedelta(seconds=4)
        # Renewal happens before the first certificate expires.
        await _until(mgr, lambda: mgr.snapshot()[0].serial != first.serial)
        second = await mgr.fetch(POD)
        assert second.fetched_at < first.not_after

        # CA goes away: the manager keeps the valid certificate and reports the error.
        held = await mgr.fetch(POD)
        await running.stop(None)
        await _until(mgr, lambda: mgr.snapshot()[0].reason is not None)
        status = mgr.snapshot()[0]
        if datetime.now(UTC) < held.not_after:
            assert status.state is CertState.AVAILABLE
            assert status.serial == held.serial
        assert "certificate service" in (status.reason or "")

        # CA returns (same root, same enrolment state): the manager recovers by itself.
        running = await serve_ca(ca, directory, tokens, unix_path=sock, join_unix_path=join_sock)
        await _until(
            mgr,
            lambda: (
                mgr.snapshot()[0].state is CertState.AVAILABLE
                and mgr.snapshot()[0].reason is None
                and mgr.snapshot()[0].serial != second.serial
            ),
        )
        assert (await mgr.fetch(POD)).not_after > datetime.now(UTC)
    finally:
        await mgr.stop()
        await client.close()
        await running.stop(None)
