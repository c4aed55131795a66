"""Node authorization (ketch.identity.authorize) as decision tables.

A node may get certificates only for identities of pods scheduled on it (or renew its own),
only with its current (not revoked) node certificate, only while its Node exists, and only in
our trust domain. Each row names one situation; flipping or removing any check makes at least
one row fail. An exhaustive cross-check against an independent statement of the rule covers
the combinations, and the certificate-reading half (`node_from_cert`) has its own table.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from ketch.identity.authorize import Decision, authorize_csr, node_from_cert
from ketch.identity.ca import CertificateAuthority
from ketch.identity.directory import InMemoryNodeDirectory, PodsOnNode
from ketch.identity.errors import BadRequest, IdentityError, PermissionDenied, Unauthenticated
from ketch.identity.spiffe import NodeId, SpiffeId

TD = "cluster.local"
NODE_A = NodeId(TD, "node-a")
CART = SpiffeId(TD, "shop", "cart")  # runs on node-a
PAYMENTS = SpiffeId(TD, "shop", "payments")  # runs on node-b only
CART_ELSEWHERE = SpiffeId(TD, "other", "cart")  # same service account name, other namespace
FOREIGN_CART = SpiffeId("evil.example", "shop", "cart")  # node-a's pod, foreign trust domain
ON_NODE_A = frozenset({("shop", "cart"), ("shop", "web")})


def _meta(identity: SpiffeId | str | None) -> dict[str, object]:
    return {} if identity is None else {"ImpersonatedIdentity": str(identity)}


def _decide(
    requested: SpiffeId | str | None,
    *,
    caller: NodeId = NODE_A,
    revoked: bool = False,
    exists: bool = True,
    pods: frozenset[tuple[str, str]] = ON_NODE_A,
    metadata: dict[str, object] | None = None,
) -> Decision:
    return authorize_csr(
        caller,
        _meta(requested) if metadata is None else metadata,
        TD,
        cert_revoked=revoked,
        node_exists=exists,
        pods_on_node=pods,
    )


# (name, decision, expected identity or (error type, message fragment))
Expected = SpiffeId | NodeId | tuple[type[IdentityError], str]
ROWS: list[tuple[str, Callable[[], Decision], Expected]] = [
    ("own pod's identity", lambda: _decide(CART), CART),
    ("renewal of its own node certificate", lambda: _decide(None), NODE_A),
    (
        "another node's pod",
        lambda: _decide(PAYMENTS),
        (PermissionDenied, "node node-a runs no pod with service account shop/payments"),
    ),
    (
        "same service account name in another namespace",
        lambda: _decide(CART_ELSEWHERE),
        (PermissionDenied, "runs no pod with service account other/cart"),
    ),
    (
        "no pods on the node at all",
        lambda: _decide(CART, pods=frozenset()),
        (PermissionDenied, "runs no pod"),
    ),
    (
        "revoked node certificate asking for its own pod",
        lambda: _decide(CART, revoked=True),
        (Unauthenticated, "node certificate of node-a was revoked or replaced"),
    ),
    (
        "revoked node certificate renewing itself",
        lambda: _decide(None, revoked=True),
        (Unauthenticated, "revoked"),
    ),
    (
        "Node deleted, asking for a pod it hosted",
        lambda: _decide(CART, exists=False),
        (PermissionDenied, "node node-a no longer exists"),
    ),
    (
        "Node deleted, renewing itself",
        lambda: _decide(None, exists=False),
        (PermissionDenied, "no longer exists"),
    ),
    (
        "caller is a node of another trust domain",
        lambda: _decide(CART, caller=NodeId("evil.example", "node-a")),
        (Unauthenticated, "is not in trust domain 'cluster.local'"),
    ),
    (
        "requested identity in another trust domain, same namespace/service account",
        lambda: _decide(FOREIGN_CART),
        (PermissionDenied, "this CA signs only 'cluster.local'"),
    ),
    (
        "requested identity is not a workload SPIFFE ID (a node identity)",
        lambda: _decide("spiffe://cluster.local/ketch/node/node-b"),
        (BadRequest, "ImpersonatedIdentity"),
    ),
    (
        "requested identity without the spiffe:// prefix",
        lambda: _decide(CART.principal),
        (BadRequest, "must be a full spiffe:// URI"),
    ),
    (
        "unknown metadata",
        lambda: _decide(None, metadata={"ImpersonatedIdentity": CART.uri, "Extra": "x"}),
        (BadRequest, "unknown request metadata keys"),
    ),
    # Precedence: the caller's own standing is judged before anything it asks for.
    (
        "revoked node certificate with malformed metadata",
        lambda: _decide(None, revoked=True, metadata={"Extra": "x"}),
        (Unauthenticated, "revoked"),
    ),
    (
        "revoked node certificate asking for another node's pod",
        lambda: _decide(PAYMENTS, revoked=True),
        (Unauthenticated, "revoked"),
    ),
    (
        "foreign-trust-domain caller that is also revoked",
        lambda: _decide(CART, caller=NodeId("evil.example", "node-a"), revoked=True),
        (Unauthenticated, "not in trust domain"),
    ),
]


@pytest.mark.parametrize(("make", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_decision_table(make: Callable[[], Decision], expected: Expected) -> None:
    decision = make()
    if isinstance(expected, tuple):
        error, fragment = expected
        assert not decision.allowed
        assert decision.identity is None
        assert type(decision.error) is error
        assert fragment in decision.reason
        with pytest.raises(error, match=fragment):
            decision.identity_or_raise()
    else:
        assert decision.allowed, decision.reason
        assert decision.error is None
        assert decision.identity == expected
        assert decision.identity_or_raise() == expected


def test_allowed_decisions_say_why() -> None:
    assert _decide(CART).reason == "node node-a runs a pod with service account shop/cart"
    assert _decide(None).reason == "node node-a renews its own certificate"
    # the caller is reported once it passed the node checks, not before
    assert _decide(PAYMENTS).caller == NODE_A
    assert _decide(CART, revoked=True).caller is None


REQUESTS = [None, CART, PAYMENTS, CART_ELSEWHERE, FOREIGN_CART]
CALLERS = [NODE_A, NodeId("evil.example", "node-a")]


@pytest.mark.parametrize(
    ("caller", "revoked", "exists", "requested"),
    list(itertools.product(CALLERS, [False, True], [False, True], REQUESTS)),
)
def test_every_combination_follows_the_rule(
    caller: NodeId, revoked: bool, exists: bool, requested: SpiffeId | None
) -> None:
    # The rule, stated independently of the implementation.
    node_in_good_standing = caller.trust_domain == TD and not revoked and exists
    hosted = requested is not None and (
        requested.trust_domain == TD
        and (requested.namespace, requested.service_account) in ON_NODE_A
    )
    may = node_in_good_standing and (requested is None or hosted)
    decision = _decide(requested, caller=caller, revoked=revoked, exists=exists)
    assert decision.allowed is may, decision.reason
    if may:
        assert decision.identity == (caller if requested is None else requested)


def test_pods_on_node_asks_the_directory_for_that_node() -> None:
    directory = InMemoryNodeDirectory()
    directory.add_pod("node-a", "shop", "cart-1", "cart")
    directory.add_pod("node-b", "shop", "payments-1", "payments")
    pods = PodsOnNode(directory, "node-a")
    assert ("shop", "cart") in pods
    assert ("shop", "payments") not in pods
    assert ("other", "cart") not in pods
    assert "shop/cart" not in pods
    directory.remove_pod("shop", "cart-1")
    assert ("shop", "cart") not in pods  # asked per lookup: a moved pod counts at once
    assert not _decide(CART, pods=pods).allowed  # type: ignore[arg-type]


# --- who is calling: node_from_cert --------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD)


def test_a_node_certificate_names_the_node_and_its_serial(ca: CertificateAuthority) -> None:
    issued = ca.issue_node("node-a")
    assert node_from_cert(issued.cert_pem) == (NODE_A, issued.certificate.serial_number)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda ca: None, "no client certificate"),
        (lambda ca: b"", "no client certificate"),
        (lambda ca: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "unusable"),
        (lambda ca: ca.issue_workload(CART).cert_pem, "is not a node certificate"),
        (lambda ca: ca.issue_server().cert_pem, "exactly one node URI SAN"),
        (lambda ca: ca.root_pem, "is not a node certificate"),  # URI SAN spiffe://<td>
    ],
    ids=["none", "empty", "garbage", "workload certificate", "server certificate", "root"],
)
def test_non_node_callers_are_unauthenticated(
    ca: CertificateAuthority,
    make: Callable[[CertificateAuthority], bytes | None],
    fragment: str,
) -> None:
    with pytest.raises(Unauthenticated, match=fragment):
        node_from_cert(make(ca))
