"""The inbound HBONE decision (authority, ownership, self-call ports, policy) as a table."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from ketch.control.translate.policy import translate_policies
from ketch.identity.spiffe import SpiffeId
from ketch.mesh import Workload
from ketch.ztunnel.hbone.headers import parse_authority
from ketch.ztunnel.inbound import Admit, Refusal, decide
from ketch.ztunnel.state import ProxyState

POD = Workload(
    uid="srv",
    name="server",
    namespace="app",
    addresses=(ip_address("10.0.0.2"), ip_address("fd00::2")),
    service_account="server",
)
PEER = SpiffeId("cluster.local", "client", "client")
DENY_CLIENT = {
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-client", "namespace": "app"},
    "spec": {"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["client"]}}]}]},
}


def state(*policies: dict[str, object]) -> ProxyState:
    conv = translate_policies(policies)
    return ProxyState.build([POD], (), conv.authorizations, conv.peer_authentications)


@pytest.mark.parametrize(
    ("name", "workload", "removed", "local", "authority", "policies", "want"),
    [
        ("admitted", POD, False, "10.0.0.2", "10.0.0.2:8080", (), 200),
        ("admitted over IPv6", POD, False, "fd00::2", "[fd00::2]:8080", (), 200),
        ("no workload yet: 503 as ztunnel", None, False, "10.0.0.2", "10.0.0.2:8080", (), 503),
        ("pod removed from the mesh: 503", POD, True, "10.0.0.2", "10.0.0.2:8080", (), 503),
        ("authority IP is not where it arrived", POD, False, "10.0.0.2", "[fd00::2]:8080", (), 400),
        ("authority IP not the pod's", POD, False, "10.0.0.2", "10.0.0.9:8080", (), 400),
        ("arrived on another address", POD, False, "10.0.0.9", "10.0.0.2:8080", (), 400),
        ("self-call 15008: 503 as ztunnel", POD, False, "10.0.0.2", "10.0.0.2:15008", (), 503),
        ("self-call 15001", POD, False, "10.0.0.2", "10.0.0.2:15001", (), 503),
        ("self-call 15006", POD, False, "10.0.0.2", "10.0.0.2:15006", (), 503),
        ("policy deny: 401", POD, False, "10.0.0.2", "10.0.0.2:8080", (DENY_CLIENT,), 401),
        # self-call is refused before policy is evaluated
        ("self-call before policy", POD, False, "10.0.0.2", "10.0.0.2:15006", (DENY_CLIENT,), 503),
    ],
)
def test_decide(
    name: str,
    workload: Workload | None,
    removed: bool,
    local: str,
    authority: str,
    policies: tuple[dict[str, object], ...],
    want: int,
) -> None:
    target = parse_authority(authority)
    verdict = decide(
        state(*policies),
        workload,
        removed=removed,
        local_ip=ip_address(local),
        target=target,
        peer=(ip_address("10.0.1.5"), 40000),
        peer_identity=PEER,
    )
    if want == 200:
        assert isinstance(verdict, Admit), verdict
        assert verdict.conn.dst_port == target.port
        assert verdict.decision.allowed
    else:
        assert isinstance(verdict, Refusal)
        assert verdict.status == want, verdict.reason
        assert verdict.denied_by_policy is (want == 401)
        if want == 401:
            assert "app/no-client" in verdict.reason
