"""Applying xDS resources to the proxy snapshot: by name, per resource, rejections isolated."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest
from google.protobuf import any_pb2

from ketch.mesh import Action, Authorization, Scope, Service, ServicePort, Workload
from ketch.xds import ADDRESS_TYPE, AUTHORIZATION_TYPE, to_address, to_any
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.xds_state import (
    MeshObject,
    StateApplier,
    apply_changes,
)


def wl(uid: str, ip: str, ns: str = "default") -> Workload:
    return Workload(uid=uid, name=uid.rsplit("/", 1)[-1], namespace=ns, addresses=(ip_address(ip),))


def svc(name: str, vip: str, ns: str = "default") -> Service:
    return Service(
        name=name,
        namespace=ns,
        hostname=f"{name}.{ns}.svc.cluster.local",
        vips=(ip_address(vip),),
        ports=(ServicePort(80, 8080),),
    )


def pol(name: str, ns: str = "default", action: Action = Action.DENY) -> Authorization:
    return Authorization(name=name, namespace=ns, scope=Scope.NAMESPACE, action=action)


W1 = wl("c//Pod/default/a", "10.0.0.1")
W2 = wl("c//Pod/default/b", "10.0.0.2")
W1_MOVED = wl("c//Pod/default/a", "10.0.0.9")
W_CLASH = wl("c//Pod/default/c", "10.0.0.2")  # W2's address
S1 = svc("web", "10.96.0.1")
S1_VIP_CLASH = svc("api", "10.0.0.1")  # W1's address as a VIP
P1 = pol("deny-all")
P2 = pol("allow", action=Action.ALLOW)
BASE = ProxyState.build([W1, W2], [S1], [P1])


def by_name(*objs: MeshObject) -> dict[str, MeshObject]:
    return {(o.uid if isinstance(o, Workload) else o.key): o for o in objs}


CASES: list[
    tuple[str, str, dict[str, MeshObject], list[str], set[str], set[str], set[str], set[str]]
] = [
    # id, type, upserts, removals, workloads, services, policies, rejected names
    (
        "add workload",
        ADDRESS_TYPE,
        by_name(wl("c//Pod/default/c", "10.0.0.3")),
        [],
        {W1.uid, W2.uid, "c//Pod/default/c"},
        {S1.key},
        {P1.key},
        set(),
    ),
    (
        "update workload by uid",
        ADDRESS_TYPE,
        by_name(W1_MOVED),
        [],
        {W1.uid, W2.uid},
        {S1.key},
        {P1.key},
        set(),
    ),
    ("remove workload by uid", ADDRESS_TYPE, {}, [W2.uid], {W1.uid}, {S1.key}, {P1.key}, set()),
    (
        "remove service by ns/hostname",
        ADDRESS_TYPE,
        {},
        [S1.key],
        {W1.uid, W2.uid},
        set(),
        {P1.key},
        set(),
    ),
    (
        "remove unknown name is ignored",
        ADDRESS_TYPE,
        {},
        ["nope"],
        {W1.uid, W2.uid},
        {S1.key},
        {P1.key},
        set(),
    ),
    (
        "add service",
        ADDRESS_TYPE,
        by_name(svc("db", "10.96.0.2")),
        [],
        {W1.uid, W2.uid},
        {S1.key, "default/db.default.svc.cluster.local"},
        {P1.key},
        set(),
    ),
    (
        "add and remove policy",
        AUTHORIZATION_TYPE,
        by_name(P2),
        [P1.key],
        {W1.uid, W2.uid},
        {S1.key},
        {P2.key},
        set(),
    ),
    (
        "address clash rejected, others applied",
        ADDRESS_TYPE,
        by_name(W_CLASH, W1_MOVED),
        [],
        {W1.uid, W2.uid},
        {S1.key},
        {P1.key},
        {W_CLASH.uid},
    ),
    (
        "VIP clash rejected, others applied",
        ADDRESS_TYPE,
        by_name(S1_VIP_CLASH, svc("db", "10.96.0.2")),
        [],
        {W1.uid, W2.uid},
        {S1.key, "default/db.default.svc.cluster.local"},
        {P1.key},
        {S1_VIP_CLASH.key},
    ),
    (
        "clash resolved by a removal in the same response",
        ADDRESS_TYPE,
        by_name(W_CLASH),
        [W2.uid],
        {W1.uid, W_CLASH.uid},
        {S1.key},
        {P1.key},
        set(),
    ),
    (
        "name must match the key",
        ADDRESS_TYPE,
        {"wrong": W1_MOVED, P2.key: P2},
        [],
        {W1.uid, W2.uid},
        {S1.key},
        {P1.key},
        {"wrong", P2.key},
    ),
    (
        "policy on the address type rejected",
        AUTHORIZATION_TYPE,
        {W1.uid: W1},
        [],
        {W1.uid, W2.uid},
        {S1.key},
        {P1.key},
        {W1.uid},
    ),
    (
        "unknown type rejects all",
        "type.googleapis.com/x.Y",
        by_name(P2),
        [P1.key],
        {W1.uid, W2.uid},
        {S1.key},
        {P1.key},
        {P2.key},
    ),
]


@pytest.mark.parametrize(
    ("type_url", "upserts", "removals", "workloads", "services", "policies", "rejected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_apply_changes(
    type_url: str,
    upserts: dict[str, MeshObject],
    removals: list[str],
    workloads: set[str],
    services: set[str],
    policies: set[str],
    rejected: set[str],
) -> None:
    new, why = apply_changes(BASE, type_url, upserts, removals)
    assert set(new.workloads) == workloads
    assert set(new.services) == services
    assert set(new.policies) == policies
    assert set(why) == rejected
    assert all(why.values())
    assert set(BASE.workloads) == {W1.uid, W2.uid}  # never mutated
    for name, obj in upserts.items():
        if name not in rejected:
            assert obj in (*new.workloads.values(), *new.services.values(), *new.policies.values())


def test_clash_reason_names_the_address() -> None:
    _, why = apply_changes(BASE, ADDRESS_TYPE, by_name(W_CLASH))
    assert "10.0.0.2" in why[W_CLASH.uid]


def test_swap_within_one_response_is_applied_whatever_the_name_order() -> None:
    taker = wl("c//Pod/default/0", "10.0.0.1")  # sorts before W1, takes W1's old address
    new, why = apply_changes(BASE, ADDRESS_TYPE, by_name(taker, W1_MOVED))
    assert why == {}
    assert new.workload_by_address(ip_address("10.0.0.1")) == taker
    assert new.workload_by_address(ip_address("10.0.0.9")) == W1_MOVED


def test_two_new_claimants_of_one_address_are_both_rejected() -> None:
    x, y = wl("c//Pod/default/x", "10.0.0.50"), wl("c//Pod/default/y", "10.0.0.50")
    new, why = apply_changes(BASE, ADDRESS_TYPE, by_name(x, y, W1_MOVED))
    assert set(why) == {x.uid, y.uid}
    assert why[x.uid] == f"address 10.0.0.50 is also claimed by {y.uid}"
    assert new.workloads[W1.uid] == W1_MOVED


def test_a_rejected_update_keeps_its_old_version_which_may_reject_another() -> None:
    # W1 tries to move onto W2's address (rejected, W1 stays on 10.0.0.1), so a new workload
    # taking 10.0.0.1 clashes with W1's kept version and is rejected as well
    w1_bad = wl(W1.uid, "10.0.0.2")
    taker = wl("c//Pod/default/t", "10.0.0.1")
    new, why = apply_changes(BASE, ADDRESS_TYPE, by_name(w1_bad, taker))
    assert set(why) == {W1.uid, taker.uid}
    assert new.workloads[W1.uid] == W1


def test_nothing_applied_returns_the_same_state() -> None:
    new, why = apply_changes(BASE, ADDRESS_TYPE, by_name(W_CLASH))
    assert new is BASE
    assert set(why) == {W_CLASH.uid}


class _Target:
    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.updates = 0

    def update_state(self, new: ProxyState) -> object:
        self.state = new
        self.updates += 1
        return []


def test_state_applier_decodes_applies_and_rejects_per_resource() -> None:
    """Real istio protos through `ketch.xds.convert.decode_all`."""
    target = _Target(BASE)
    apply = StateApplier(target)
    garbage = any_pb2.Any(type_url=ADDRESS_TYPE, value=b"\xff\xff\xff")
    rejected = apply(
        ADDRESS_TYPE,
        [
            (W1_MOVED.uid, to_any(to_address(W1_MOVED))),
            ("bad", garbage),
            ("x", to_any(to_address(W_CLASH))),  # named other than its uid
        ],
        [W2.uid],
    )
    assert rejected["x"] == (
        f"resource name does not match its content (content names '{W_CLASH.uid}')"
    )
    assert rejected["bad"].startswith("cannot decode istio.workload.Address: ")
    assert set(rejected) == {"bad", "x"}
    assert target.state.workloads == {W1.uid: W1_MOVED}
    assert target.updates == 1
    # all rejected, nothing removed: the proxy's state is not swapped
    assert set(apply(AUTHORIZATION_TYPE, [("bad", garbage)], [])) == {"bad"}
    assert target.updates == 1
    # a type the node proxy does not take: every resource rejected, the state kept
    assert apply("type.googleapis.com/other", [("o", garbage)], []) == {
        "o": "unsupported type type.googleapis.com/other"
    }
    assert target.updates == 1


def test_state_applier_reasons_fit_the_nack_message() -> None:
    def decode(type_url: str, upserts: Any) -> tuple[dict[str, Any], dict[str, str]]:
        return {}, {name: "bad\nbytes; really" for name, _ in upserts}

    apply = StateApplier(_Target(BASE), decode)
    assert apply(ADDRESS_TYPE, [("bad", any_pb2.Any())], []) == {"bad": "bad bytes, really"}
