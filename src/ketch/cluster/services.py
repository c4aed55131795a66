"""Service VIPs for every pod (kube-proxy's job): Services + EndpointSlices -> nftables rules.

Where it sits: every pod packet crosses its node's netns (the ptp layout, `ketch.netns.fabric`),
so one nftables table per node netns gives every pod its Service VIPs. The node process runs
`ServiceProxy` inside that netns; pods enrolled in the mesh have their service traffic
resolved by the node proxy in the pod netns before it ever gets here.

Two layers:
- `render(services, endpoint_slices, *, node_pod_cidr)` is pure: objects in, the complete
  nft script out (table tests on the text). It is one transaction that creates, deletes and
  re-creates `table ip ketch-svc`, so `nft -f` replaces the rules atomically: a packet sees
  the old ruleset or the new one, never a mix.
- `ServiceProxy` watches the store, re-renders on every Service/EndpointSlice change (after
  a short coalescing delay), applies only when the text changed, retries a failed `nft`,
  keeps a route for the Service range (for the node's own connections, see the class)
  and deletes its table and route on stop.

What the rules do (docs/cluster-networking.md has an example):
- `prerouting` (pod traffic entering the node netns) and `output` (the node netns's own
  traffic) nat chains look `ip daddr . meta l4proto . th dport` up in the `services` verdict
  map and jump to the Service port's chain;
- a Service port's chain DNATs to a ready endpoint's `IP . port`, picked by
  `numgen random mod N` from an anonymous map (uniform; one rule per Service port, no
  chain per endpoint, so a large ruleset stays quick to load); the port comes from the
  EndpointSlice port with the Service port's name, so named targetPorts resolve per slice;
- a Service port without ready endpoints is in the `no-endpoints` set: a filter chain
  before DNAT rejects it (TCP reset, ICMP port unreachable for UDP), as kube-proxy does, so
  clients fail at once instead of timing out; other ports of a VIP are rejected likewise;
- hairpin: a pod reaching itself through a VIP gets a packet from its own address, which its
  kernel drops as a martian; `postrouting` masquerades DNATed traffic whose source equals
  its new destination (the `hairpin` set holds `ip . ip` of this node's endpoints), so the
  pod sees the node's gateway address instead;
- headless Services (clusterIP None) get no rules (DNS hands out the pod IPs).

IPv4 only (the local cluster's Service range is IPv4). SCTP ports and IPv6 addresses are
skipped. NodePort, LoadBalancer, externalTrafficPolicy and sessionAffinity are not
implemented.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ketch.api.core import Service
from ketch.api.discovery import EndpointSlice
from ketch.cluster.layout import DNS_IP, SERVICE_CIDR, ClusterLayout
from ketch.cluster.watch import ServiceWatch, wait_any
from ketch.store.base import Store

log = logging.getLogger("ketch.cluster.services")

TABLE = "ketch-svc"
_PROTOS = {"TCP": "tcp", "UDP": "udp"}


@dataclass(frozen=True, order=True)
class Backend:
    ip: str
    port: int


@dataclass(frozen=True)
class VipPort:
    """One Service port on one clusterIP and the ready endpoints behind it."""

    namespace: str
    service: str
    port_name: str
    cluster_ip: str
    port: int
    protocol: str  # "tcp" | "udp"
    backends: tuple[Backend, ...]

    @property
    def chain(self) -> str:
        # nft identifiers allow letters, digits and / - _ . ; k8s names are DNS labels.
        return f"svc-{self.namespace}/{self.service}/{self.protocol}/{self.cluster_ip}/{self.port}"


def _ipv4(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
    except ValueError:
        return False


def slices_by_service(
    slices: Iterable[EndpointSlice],
) -> dict[tuple[str, str], list[EndpointSlice]]:
    """EndpointSlices grouped by (namespace, Service name) through their service-name label."""
    out: dict[tuple[str, str], list[EndpointSlice]] = {}
    for s in slices:
        name = s.service_name
        if name:
            out.setdefault((s.namespace or "default", name), []).append(s)
    return out


def resolve_backends(
    port_name: str, protocol: str, slices: Iterable[EndpointSlice], *, family: str = "IPv4"
) -> tuple[Backend, ...]:
    """Ready endpoints of one Service port, as kube-proxy finds them: in each slice of the
    address family, the slice port with the Service port's name (and protocol) gives the
    target port of that slice's endpoints. Sorted and de-duplicated."""
    found: set[Backend] = set()
    for s in slices:
        if s.address_type != family:
            continue
        match = next(
            (
                p
                for p in s.ports or []
                if (p.name or "") == port_name and p.protocol == protocol and p.port is not None
            ),
            None,
        )
        if match is None or match.port is None:
            continue
        for ep in s.endpoints:
            if not ep.is_ready():
                continue
            for addr in ep.addresses:
                found.add(Backend(str(addr), match.port))
    return tuple(sorted(found, key=lambda b: (ipaddress.ip_address(b.ip), b.port)))


def vip_ports(
    services: Iterable[Service], endpoint_slices: Iterable[EndpointSlice]
) -> list[VipPort]:
    """Every (clusterIP, port, protocol) to program, sorted for a stable rendering."""
    by_svc = slices_by_service(endpoint_slices)
    out: list[VipPort] = []
    for svc in services:
        if svc.spec.headless:
            continue
        ns = svc.namespace or "default"
        ips = list(dict.fromkeys([svc.spec.cluster_ip or "", *(svc.spec.cluster_ips or [])]))
        ips = [ip for ip in ips if _ipv4(ip)]
        slices = by_svc.get((ns, svc.name), [])
        for sp in svc.spec.ports or []:
            proto = _PROTOS.get(sp.protocol)
            if proto is None:
                continue
            backends = resolve_backends(sp.name or "", sp.protocol, slices)
            for ip in ips:
                out.append(VipPort(ns, svc.name, sp.name or "", ip, sp.port, proto, backends))
    out.sort(key=lambda v: (ipaddress.ip_address(v.cluster_ip), v.protocol, v.port))
    return out


def render(
    services: Sequence[Service],
    endpoint_slices: Sequence[EndpointSlice],
    *,
    node_pod_cidr: ipaddress.IPv4Network | str | None = None,
    table: str = TABLE,
    dns_ip: str = str(DNS_IP),
) -> str:
    """The nft script (for `nft -f -`) that replaces `table ip <table>` with the rules for
    these objects. `node_pod_cidr` limits the hairpin set to this node's pods (None: every
    endpoint). Port 53 of `dns_ip` (the cluster DNS, a local address of the node) is never
    refused, even if a Service claims that address. See the module docstring for what each
    chain does."""
    cidr = ipaddress.IPv4Network(node_pod_cidr) if node_pod_cidr is not None else None
    vips = vip_ports(services, endpoint_slices)
    with_eps = [v for v in vips if v.backends]
    without = [v for v in vips if not v.backends]
    cluster_ips = sorted({v.cluster_ip for v in vips}, key=ipaddress.ip_address)
    hairpin = sorted(
        {
            b.ip
            for v in with_eps
            for b in v.backends
            if cidr is None or ipaddress.IPv4Address(b.ip) in cidr
        },
        key=ipaddress.ip_address,
    )

    def key(v: VipPort) -> str:
        return f"{v.cluster_ip} . {v.protocol} . {v.port}"

    def elements(items: Sequence[str]) -> list[str]:
        if not items:
            return []
        return ["\t\telements = {", *(f"\t\t\t{i}," for i in items), "\t\t}"]

    lines = [
        f"# Ketch service proxy: {len(vips)} service ports, {len(with_eps)} with endpoints",
        f"table ip {table}",
        f"delete table ip {table}",
        f"table ip {table} {{",
        "\tset cluster-ips {",
        "\t\ttype ipv4_addr",
        *elements(cluster_ips),
        "\t}",
        "\tset service-ports {",
        "\t\ttype ipv4_addr . inet_proto . inet_service",
        *elements([key(v) for v in vips]),
        "\t}",
        "\tset no-endpoints {",
        "\t\ttype ipv4_addr . inet_proto . inet_service",
        *elements([key(v) for v in without]),
        "\t}",
        "\tmap services {",
        "\t\ttype ipv4_addr . inet_proto . inet_service : verdict",
        *elements([f"{key(v)} : goto {v.chain}" for v in with_eps]),
        "\t}",
        "\tset hairpin {",
        "\t\ttype ipv4_addr . ipv4_addr",
        *elements([f"{ip} . {ip}" for ip in hairpin]),
        "\t}",
        "",
        "\t# before DNAT: a VIP port without ready endpoints, or not a port of the Service",
        "\tchain filter-prerouting {",
        "\t\ttype filter hook prerouting priority dstnat - 10; policy accept;",
        "\t\tjump check",
        "\t}",
        "\tchain filter-output {",
        "\t\ttype filter hook output priority -110; policy accept;",
        "\t\tjump check",
        "\t}",
        "\tchain check {",
        f"\t\tip daddr {dns_ip} meta l4proto {{ tcp, udp }} th dport 53 return  # cluster DNS",
        "\t\tip daddr . meta l4proto . th dport @no-endpoints goto refuse",
        "\t\tip daddr @cluster-ips ip daddr . meta l4proto . th dport != @service-ports "
        "goto refuse",
        "\t}",
        "\tchain refuse {",
        "\t\tmeta l4proto tcp reject with tcp reset",
        "\t\treject with icmp port-unreachable",
        "\t}",
        "",
        "\tchain nat-prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tip daddr . meta l4proto . th dport vmap @services",
        "\t}",
        "\tchain nat-output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        "\t\tip daddr . meta l4proto . th dport vmap @services",
        "\t}",
        "\tchain nat-postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        "\t\tct status dnat ip saddr . ip daddr @hairpin masquerade",
        "\t}",
    ]
    for v in with_eps:
        lines.append("")
        lines.append(f"\t# {v.namespace}/{v.service}:{v.port_name or v.port} {v.protocol}")
        lines.append(f"\tchain {v.chain} {{")
        if len(v.backends) == 1:
            b = v.backends[0]
            lines.append(f"\t\tmeta l4proto {v.protocol} dnat to {b.ip}:{b.port}")
        else:
            arms = ", ".join(f"{i} : {b.ip} . {b.port}" for i, b in enumerate(v.backends))
            lines.append(
                f"\t\tmeta l4proto {v.protocol} dnat ip addr . port to "
                f"numgen random mod {len(v.backends)} map {{ {arms} }}"
            )
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def delete_script(table: str = TABLE) -> str:
    """Removes the table whether or not it exists (one transaction)."""
    return f"table ip {table}\ndelete table ip {table}\n"


class NftError(Exception):
    """`nft` (or `ip route`) refused a change or could not run; the message is theirs."""


def nft_apply(script: str, *, nft: str = "nft", timeout: float = 30.0) -> None:
    """Run `nft -f -` with `script` in the calling process's netns; NftError with nft's
    message on failure."""
    try:
        proc = subprocess.run(
            [nft, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"cannot run {nft}: {exc} (is nftables installed?)") from exc
    if proc.returncode != 0:
        raise NftError(
            f"nft -f failed (exit {proc.returncode}): {proc.stderr.strip() or 'no error output'}"
        )


def ip_route(args: Sequence[str], *, timeout: float = 30.0) -> None:
    """Run `ip route ARGS...` in the calling process's netns; NftError on failure."""
    try:
        proc = subprocess.run(
            ["ip", "route", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"cannot run ip route: {exc} (is iproute2 installed?)") from exc
    if proc.returncode != 0:
        raise NftError(f"ip route {' '.join(args)} failed: {proc.stderr.strip()}")


class ServiceProxy:
    """kube-proxy for one node: keeps `table ip ketch-svc` of the current netns equal to
    `render(...)` of the store's Services and EndpointSlices.

    Run it in the node netns (the node process already is). Event-driven: a change is
    applied `coalesce` seconds after it arrives (more changes in that window join it), and
    only when the rendered text differs from what was last applied. A failed `nft` run is
    logged with nft's message and retried every `retry` seconds; nothing here raises out of
    `run` except cancellation.

    With `manage_route` (the default) it also keeps the route `10.96.0.0/16 dev lo src
    <node InternalIP>` in the netns: a node netns has no default route, and a connection
    from the node itself (the output hook: a probe, a tool run on the node) needs a route to
    even reach the DNAT rule; the explicit source is the node's underlay address, which
    every pod can answer (without it the kernel would pick 10.96.0.10 from `lo`, an address
    every node has, and replies from other nodes would never come back). Pod traffic is
    DNATed before routing and needs no route. Removed on stop.
    """

    def __init__(
        self,
        store: Store,
        layout: ClusterLayout,
        node_name: str,
        *,
        table: str = TABLE,
        nft: str | None = None,
        coalesce: float = 0.05,
        retry: float = 1.0,
        manage_route: bool = True,
    ) -> None:
        self.store = store
        self.layout = layout
        self.node_name = node_name
        self.table = table
        self.nft = nft or shutil.which("nft") or "nft"
        self.coalesce = coalesce
        self.retry = retry
        self.manage_route = manage_route
        self.applied: str | None = None
        self.route_src: str | None = None
        self.applies = 0

    def _pod_cidr(self, watch: ServiceWatch) -> str | None:
        node = watch.node(self.node_name)
        if node is None or node.spec is None or not node.spec.pod_cidr:
            return None
        try:
            return str(ipaddress.IPv4Network(node.spec.pod_cidr))
        except ValueError:
            return None

    def _node_ip(self, watch: ServiceWatch) -> str | None:
        node = watch.node(self.node_name)
        if node is None:
            return None
        return next((ip for ip in node.internal_ips() if _ipv4(ip)), None)

    async def _sync_route(self, src: str | None) -> bool:
        """Make the service-CIDR route use `src`; False (logged) if `ip` failed."""
        if not self.manage_route or src == self.route_src or src is None:
            return True
        try:
            await asyncio.to_thread(
                ip_route, ["replace", str(SERVICE_CIDR), "dev", "lo", "src", src]
            )
        except NftError as exc:
            log.error("service proxy: %s; retrying in %.0f s", exc, self.retry)
            return False
        self.route_src = src
        return True

    async def run(self, stop: asyncio.Event) -> None:
        changed = asyncio.Event()
        watch = ServiceWatch(self.store, on_change=changed.set, nodes=True, name="service-proxy")
        await watch.start()
        healthy = False
        try:
            changed.set()
            while not stop.is_set():
                await wait_any(stop, changed, None if healthy else self.retry)
                if stop.is_set():
                    break
                await asyncio.sleep(self.coalesce)  # let a burst of changes land together
                changed.clear()
                services, slices = watch.snapshot()
                text = await asyncio.to_thread(  # ~0.1 s for 1000 Services: off the loop
                    render,
                    services,
                    slices,
                    node_pod_cidr=self._pod_cidr(watch),
                    table=self.table,
                )
                healthy = await self._sync_route(self._node_ip(watch))
                if text == self.applied:
                    continue
                try:
                    await asyncio.to_thread(nft_apply, text, nft=self.nft)
                except NftError as exc:
                    log.error(
                        "service proxy: could not program the Service VIPs of node %s: %s; "
                        "retrying in %.0f s",
                        self.node_name,
                        exc,
                        self.retry,
                    )
                    self.applied = None
                    healthy = False
                    continue
                self.applied = text
                self.applies += 1
                log.info("service proxy: applied (%s)", text.splitlines()[0].lstrip("# "))
        finally:
            await watch.stop()
            try:
                await asyncio.to_thread(nft_apply, delete_script(self.table), nft=self.nft)
            except NftError as exc:
                log.error("service proxy: could not remove table ip %s: %s", self.table, exc)
            if self.route_src is not None:
                try:
                    await asyncio.to_thread(
                        ip_route, ["del", str(SERVICE_CIDR), "dev", "lo", "src", self.route_src]
                    )
                except NftError as exc:
                    log.error("service proxy: could not remove its route: %s", exc)
                self.route_src = None
