"""Who opened an xDS stream (`authenticate`, pure): the node certificate wins, then a bearer
token, each refusal an `Unauthenticated` with a reason an operator can act on."""

from __future__ import annotations

import pytest
from cryptography import x509

from ketch.control.push import Caller, authenticate
from ketch.identity.ca import CertificateAuthority
from ketch.identity.errors import TokenError, Unauthenticated
from ketch.identity.spiffe import SpiffeId
from ketch.identity.tokens import token_id

TD = "cluster.local"
CA = CertificateAuthority.create(TD)
NODE_A = CA.issue_node("node-a").cert_pem
OTHER_TD_NODE = CertificateAuthority.create("other.example").issue_node("node-a").cert_pem
WORKLOAD = CA.issue_workload(SpiffeId(TD, "shop", "cart")).cert_pem


def tokens(token: str) -> str:
    if token == "t0k3n":
        return "node-b"
    raise TokenError("bootstrap token unknown or expired")


def auth(
    cert: bytes | None, metadata: tuple[tuple[str, str | bytes], ...] = (), **kw: object
) -> Caller:
    args: dict[str, object] = {
        "trust_domain": TD,
        "cert_is_current": lambda node, serial: node != "revoked-node",
        "validate_token": tokens,
    }
    args.update(kw)
    return authenticate(cert, metadata, **args)  # type: ignore[arg-type]


def test_node_certificate() -> None:
    serial = x509.load_pem_x509_certificate(NODE_A).serial_number
    assert auth(NODE_A) == Caller("node-a", "certificate", serial)


def test_certificate_wins_over_a_token() -> None:
    assert auth(NODE_A, (("authorization", "Bearer t0k3n"),)).method == "certificate"


@pytest.mark.parametrize(
    ("metadata", "caller"),
    [
        ((("authorization", "Bearer t0k3n"),), Caller("node-b", "token", token=token_id("t0k3n"))),
        (
            (("Authorization", "bearer  t0k3n "),),
            Caller("node-b", "token", token=token_id("t0k3n")),
        ),
        (
            (("x-other", "1"), ("authorization", b"Bearer t0k3n")),
            Caller("node-b", "token", token=token_id("t0k3n")),
        ),
    ],
)
def test_bearer_token(metadata: tuple[tuple[str, str | bytes], ...], caller: Caller) -> None:
    assert auth(None, metadata) == caller


@pytest.mark.parametrize(
    ("cert", "metadata", "kw", "reason"),
    [
        (None, (), {}, "no node certificate and no 'authorization: Bearer"),
        (b"", (), {}, "no node certificate"),
        (WORKLOAD, (), {}, "not a node certificate"),
        (OTHER_TD_NODE, (), {}, "not in trust domain 'cluster.local'"),
        (NODE_A, (), {"cert_is_current": lambda n, s: False}, "revoked or replaced"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", (), {}, "unusable"),
        (None, (("authorization", "Basic dXNlcg=="),), {}, "must be 'Bearer <token>'"),
        (None, (("authorization", "Bearer "),), {}, "must be 'Bearer <token>'"),
        (None, (("authorization", "Bearer nope"),), {}, "unknown or expired"),
        (None, (("authorization", "Bearer t0k3n"),), {"validate_token": None}, "not enabled"),
    ],
)
def test_refusals(
    cert: bytes | None,
    metadata: tuple[tuple[str, str], ...],
    kw: dict[str, object],
    reason: str,
) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        auth(cert, metadata, **kw)
