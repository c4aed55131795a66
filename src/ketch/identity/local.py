"""What the certificate manager needs of a CA (`CaClient`), and the in-process one.

Kept apart from `client.py` (the gRPC clients) so that a node proxy with an in-process CA
(standalone mode) never loads grpc.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from ketch.identity.ca import CertificateAuthority
from ketch.identity.spiffe import SpiffeId


class CaClient(Protocol):
    async def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None) -> list[bytes]:
        """PEM chain leaf..root for `csr_pem`, or raise an IdentityError."""
        ...


class InProcessCaClient:
    """Signs with a local CertificateAuthority (no node authorization: standalone mode)."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self._ca = ca

    async def sign(self, csr_pem: bytes, identity: SpiffeId, ttl: timedelta | None) -> list[bytes]:
        return self._ca.sign_csr(csr_pem, identity, ttl)
