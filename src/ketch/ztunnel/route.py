"""What to do with an outbound connection, decided before any I/O.

Data path: the outbound listener (15001 in the pod netns) accepts a connection, reads its
original destination (SO_ORIGINAL_DST) and calls `route(state, src, dst_ip, dst_port)`.
The returned `Plan` is one of:

- `Hbone`: open (or reuse) an mTLS HTTP/2 connection to `next_hop` (a pod or waypoint on
  15008), verify the server presents one of `expected_identities`, send CONNECT with
  `:authority` = `authority`;
- `Passthrough`: plain TCP to `dst` (not a mesh destination);
- `Refuse`: close the client connection (`status` is the HTTP status an HBONE peer would
  have answered, for logs and metrics).

The decision order mirrors ztunnel's `outbound.rs` `build_request()`:
service VIP (waypoint? else pick a healthy endpoint) -> workload address (loop? waypoint?
HBONE?) -> unknown address (passthrough).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import (
    HBONE_PORT,
    SELF_PORTS,
    IpAddr,
    NamespacedHostname,
    Service,
    TunnelProtocol,
    Workload,
    format_authority,
)
from ketch.ztunnel.state import ProxyState

Pick = Callable[[int], int]
"""Connection-level load balancing: given n candidates, the index (0..n-1) to use."""


@dataclass(frozen=True)
class Hbone:
    """Tunnel to `next_hop` (ip, 15008) with CONNECT `authority`.

    `dst_workload` is the workload that will terminate the tunnel (the destination pod, or
    the waypoint); `dst_service` the service the client addressed, if any; `waypoint` is
    true when the tunnel goes to a waypoint (then `authority` is the original VIP/pod
    address and port, and `final_workload` is None for a service, the pod otherwise)."""

    next_hop: tuple[IpAddr, int]
    authority: str
    expected_identities: tuple[SpiffeId, ...]
    dst_workload: Workload
    dst_service: Service | None = None
    waypoint: bool = False
    final_workload: Workload | None = None


@dataclass(frozen=True)
class Passthrough:
    """Plain TCP to `dst`; `dst_workload`/`dst_service` are set when the destination is a
    known non-mesh workload (for telemetry)."""

    dst: tuple[IpAddr, int]
    dst_workload: Workload | None = None
    dst_service: Service | None = None


@dataclass(frozen=True)
class Refuse:
    status: int
    reason: str


Plan = Hbone | Passthrough | Refuse


def random_pick(n: int) -> int:
    return random.randrange(n)


def first_pick(n: int) -> int:
    return 0


def _resolve_waypoint(
    state: ProxyState, wp_dst: IpAddr | NamespacedHostname, pick: Pick
) -> tuple[Workload | None, str]:
    """The waypoint workload behind a GatewayAddress destination, or (None, why not)."""
    if isinstance(wp_dst, NamespacedHostname):
        svc = state.service_by_hostname(wp_dst.namespace, wp_dst.hostname)
        if svc is None:
            return None, f"waypoint service {wp_dst} is unknown"
    else:
        w = state.workload_by_address(wp_dst)
        if w is not None:
            return w, ""
        svc = state.service_by_vip(wp_dst)
        if svc is None:
            return None, f"waypoint address {wp_dst} is neither a workload nor a service"
    eps = state.endpoints(svc)
    if not eps:
        return None, f"waypoint service {svc.key} has no healthy endpoints"
    return eps[_index(pick, len(eps))], ""


def _index(pick: Pick, n: int) -> int:
    i = pick(n)
    if not 0 <= i < n:
        raise ValueError(f"pick({n}) returned {i}, not in 0..{n - 1}")
    return i


def _is_waypoint_source(
    state: ProxyState, src: Workload, wp_dst: IpAddr | NamespacedHostname
) -> bool:
    """Is `src` (one of) the waypoint(s) at `wp_dst`? Then it must not be sent back there."""
    if isinstance(wp_dst, NamespacedHostname):
        return f"{wp_dst.namespace}/{wp_dst.hostname}" in src.services
    if wp_dst in src.addresses:
        return True
    svc = state.service_by_vip(wp_dst)
    return svc is not None and svc.key in src.services


def _addr(w: Workload, family: int) -> IpAddr | None:
    return w.address_for(family)


def is_self_call(
    dst_ip: IpAddr,
    dst_port: int,
    own_addresses: Collection[IpAddr] = (),
    self_ports: Collection[int] = SELF_PORTS,
) -> bool:
    """A pod dialling a node-proxy port on loopback or on its own address reaches the proxy's
    listener directly (nat skips those destinations), so forwarding it would dial the
    listener again: a loop. ztunnel refuses loopback on the proxy ports
    (proxy/outbound.rs); Ketch also refuses the pod's own addresses."""
    return dst_port in self_ports and (dst_ip.is_loopback or dst_ip in own_addresses)


def route(
    state: ProxyState,
    src: Workload,
    dst_ip: IpAddr,
    dst_port: int,
    *,
    self_ports: Collection[int] = SELF_PORTS,
    pick: Pick = random_pick,
) -> Plan:
    """Decide how `src`'s connection to `dst_ip:dst_port` leaves the node (module docstring)."""
    if is_self_call(dst_ip, dst_port, src.addresses, self_ports):
        return Refuse(
            503,
            f"{format_authority(dst_ip, dst_port)} is this pod's own node-proxy port: refusing a self-call (loop)",
        )
    svc = state.service_by_vip(dst_ip)
    if svc is not None:
        return _route_service(state, src, svc, dst_ip, dst_port, pick)

    w = state.workload_by_address(dst_ip)
    if w is None or w.protocol is TunnelProtocol.NONE:
        return Passthrough((dst_ip, dst_port), w)
    if dst_port in self_ports:
        return Refuse(
            400,
            f"{w.key} ({dst_ip}) port {dst_port} is a node-proxy port: refusing a self-call (loop)",
        )
    if w.waypoint is not None and not _is_waypoint_source(state, src, w.waypoint.destination):
        wp, why = _resolve_waypoint(state, w.waypoint.destination, pick)
        if wp is None:
            return Refuse(503, f"cannot reach the waypoint of {w.key}: {why}")
        return _via_waypoint(
            wp, w.waypoint.hbone_port, w.waypoint.identity, dst_ip, dst_port, None, w
        )
    return Hbone(
        next_hop=(dst_ip, HBONE_PORT),
        authority=format_authority(dst_ip, dst_port),
        expected_identities=(w.identity,),
        dst_workload=w,
    )


def _via_waypoint(
    wp: Workload,
    hbone_port: int,
    identity: SpiffeId | None,
    dst_ip: IpAddr,
    dst_port: int,
    svc: Service | None,
    final: Workload | None,
) -> Plan:
    hop = _addr(wp, dst_ip.version)
    if hop is None:
        return Refuse(503, f"waypoint {wp.key} has no address")
    return Hbone(
        next_hop=(hop, hbone_port),
        authority=format_authority(dst_ip, dst_port),
        expected_identities=(identity or wp.identity,),
        dst_workload=wp,
        dst_service=svc,
        waypoint=True,
        final_workload=final,
    )


def _route_service(
    state: ProxyState, src: Workload, svc: Service, vip: IpAddr, port: int, pick: Pick
) -> Plan:
    if svc.waypoint is not None and not _is_waypoint_source(state, src, svc.waypoint.destination):
        wp, why = _resolve_waypoint(state, svc.waypoint.destination, pick)
        if wp is None:
            return Refuse(503, f"cannot reach the waypoint of service {svc.key}: {why}")
        return _via_waypoint(
            wp, svc.waypoint.hbone_port, svc.waypoint.identity, vip, port, svc, None
        )

    sp = svc.port(port)
    if sp is None:
        return Refuse(503, f"service {svc.key} ({vip}) has no port {port}")
    candidates: list[tuple[Workload, int]] = []
    for ep in state.endpoints(svc):
        target = ep.services.get(svc.key, {}).get(port) or sp.target_port
        if target and _addr(ep, vip.version) is not None:
            candidates.append((ep, target))
    if not candidates:
        named = " (named target port not resolved for any endpoint)" if not sp.target_port else ""
        return Refuse(503, f"service {svc.key} ({vip}:{port}) has no healthy endpoints{named}")
    ep, target = candidates[_index(pick, len(candidates))]
    ep_ip = _addr(ep, vip.version)
    assert ep_ip is not None  # filtered above
    if ep.protocol is TunnelProtocol.NONE:
        return Passthrough((ep_ip, target), ep, svc)
    return Hbone(
        next_hop=(ep_ip, HBONE_PORT),
        authority=format_authority(ep_ip, target),
        expected_identities=_dedupe((ep.identity, *svc.subject_alt_names)),
        dst_workload=ep,
        dst_service=svc,
    )


def _dedupe(ids: Sequence[SpiffeId]) -> tuple[SpiffeId, ...]:
    return tuple(dict.fromkeys(ids))
