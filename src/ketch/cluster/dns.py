"""Cluster DNS (CoreDNS's `kubernetes` plugin in miniature): Services and EndpointSlices as
names under `cluster.local`, served on 10.96.0.10:53 (UDP and TCP) in every node netns.

Where it sits: the node process runs `ClusterDns` inside its node netns, where 10.96.0.10/32
is an address on `lo` (like NodeLocal DNSCache); pods reach it through their default route
and find it in their resolv.conf (`nameserver 10.96.0.10`, `search <ns>.svc.cluster.local
svc.cluster.local cluster.local`, `options ndots:5`), written by the kubelet.

Three layers:
- `DnsView.build(services, slices)`: an immutable index name -> records, rebuilt on every
  store change (pure).
- `answer(query, view) -> response | None`: pure, dnspython messages in and out (table
  tests). Names answered (the Kubernetes DNS specification, TTL 5 s like CoreDNS):
    * `<svc>.<ns>.svc.cluster.local` A/AAAA: the clusterIP(s); for a headless Service
      (clusterIP None) the ready endpoint addresses;
    * `<host>.<svc>.<ns>.svc.cluster.local` for each ready endpoint of a headless Service,
      `<host>` being the endpoint's hostname, or its address with dashes;
    * SRV `_<port>._<proto>.<svc>.<ns>.svc.cluster.local` for each named port: the
      Service name and port (ClusterIP), or one record per ready endpoint (headless), with
      the targets' addresses in the additional section;
    * `<a-b-c-d>.<ns>.pod.cluster.local` A: the dashed address itself (CoreDNS's
      `pods insecure`);
    * `dns-version.cluster.local` TXT "1.1.0"; SOA and NS at `cluster.local`.
  A name that exists with no record of the type asked for (AAAA of an IPv4 Service, the
  empty non-terminals `<ns>.svc.cluster.local`, `_tcp.<svc>...`) is NODATA (NOERROR, SOA in
  authority, RFC 2308/8020); any other name in `cluster.local` is NXDOMAIN with the SOA.
  Names outside `cluster.local` get REFUSED: the local cluster has no upstream resolver to
  forward to (the machine may have no network) and refusing tells a stub resolver at once,
  where SERVFAIL would invite retries. More than one question, or a message that does not
  parse, is FORMERR; an EDNS version above 0 is BADVERS; opcodes other than QUERY NOTIMP.
- `ClusterDns`: the asyncio UDP and TCP servers and the store watch. UDP answers are cut to
  the client's payload size (512 without EDNS) and marked TC when they do not fit. TCP
  connections are capped in number, each read has an idle timeout, and a length prefix
  beyond `MAX_TCP_QUERY` closes the connection: nothing a client sends makes it log a
  traceback or stop answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from ketch.api.core import Service
from ketch.api.discovery import EndpointSlice
from ketch.cluster.layout import CLUSTER_DOMAIN, DNS_IP, ClusterLayout
from ketch.cluster.services import slices_by_service
from ketch.cluster.watch import ServiceWatch, wait_any
from ketch.store.base import Store

log = logging.getLogger("ketch.cluster.dns")

TTL = 5
"""Seconds, for every record and for negative answers (CoreDNS's kubernetes plugin default)."""
DNS_VERSION = "1.1.0"
"""The Kubernetes DNS specification version answered at dns-version.<zone>."""
EDNS_PAYLOAD = 1232
"""Our UDP payload size (the DNS flag day 2020 recommendation)."""
MAX_TCP_QUERY = 4096
"""A query longer than this over TCP closes the connection (queries are ~50-300 bytes)."""

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
SRV = dns.rdatatype.SRV
SOA = dns.rdatatype.SOA
NS = dns.rdatatype.NS
TXT = dns.rdatatype.TXT
ANY = dns.rdatatype.ANY

Records = dict[dns.rdatatype.RdataType, dns.rrset.RRset]


def _dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


def _addr_type(ip: str) -> dns.rdatatype.RdataType:
    return A if isinstance(ipaddress.ip_address(ip), ipaddress.IPv4Address) else AAAA


def _address(ip: str) -> dns.rdata.Rdata:
    if _addr_type(ip) == A:
        return dns.rdtypes.IN.A.A(IN, A, ip)  # type: ignore[no-untyped-call]
    return dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, ip)  # type: ignore[no-untyped-call]


def _srv(weight: int, port: int, target: dns.name.Name) -> dns.rdata.Rdata:
    return dns.rdtypes.IN.SRV.SRV(IN, SRV, 0, weight, port, target)  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class DnsView:
    """Every record of the zone, by (lower-cased) owner name; plus the names that exist
    without records of their own (empty non-terminals)."""

    zone: dns.name.Name
    records: dict[dns.name.Name, Records] = field(default_factory=dict)
    existing: frozenset[dns.name.Name] = frozenset()

    @classmethod
    def build(
        cls,
        services: Iterable[Service],
        endpoint_slices: Iterable[EndpointSlice],
        *,
        domain: str = CLUSTER_DOMAIN,
    ) -> DnsView:
        zone = dns.name.from_text(domain)
        records: dict[dns.name.Name, Records] = {}

        def add(name: dns.name.Name, rd: dns.rdata.Rdata) -> None:
            by_type = records.setdefault(name, {})
            rrset = by_type.get(rd.rdtype)
            if rrset is None:
                rrset = by_type[rd.rdtype] = dns.rrset.RRset(name, IN, rd.rdtype)
            rrset.add(rd, TTL)

        add(zone, dns.rdata.from_text(IN, SOA, soa_text(zone)))
        add(zone, dns.rdata.from_text(IN, NS, f"ns.dns.{zone}"))
        add(dns.name.from_text("ns.dns", zone), _address(str(DNS_IP)))
        add(dns.name.from_text("dns-version", zone), dns.rdata.from_text(IN, TXT, DNS_VERSION))

        by_svc = slices_by_service(endpoint_slices)
        for svc in services:
            ns = svc.namespace or "default"
            try:
                base = dns.name.from_text(f"{svc.name}.{ns}.svc", zone)
            except dns.exception.DNSException:  # names are validated DNS labels; be safe
                continue
            records.setdefault(base, {})  # exists (NODATA for other types) even when empty
            slices = by_svc.get((ns, svc.name), [])
            headless = svc.spec.headless
            # ready endpoints of a headless Service: host label -> addresses, and the names
            hosts: dict[str, set[str]] = {}
            host_names: dict[str, dns.name.Name] = {}
            if headless:
                for s in slices:
                    if s.address_type not in ("IPv4", "IPv6"):
                        continue
                    for ep in s.endpoints:
                        if ep.is_ready():
                            for addr in ep.addresses:
                                label = ep.hostname or _dashed(str(addr))
                                hosts.setdefault(label, set()).add(str(addr))
                for label, addrs in hosts.items():
                    try:
                        # an unvalidated hostname ("a.b", "") must not become a deeper name
                        host = dns.name.from_text(label, base)
                    except dns.exception.DNSException:
                        host = None
                    if host is not None and len(host.labels) == len(base.labels) + 1:
                        host_names[label] = host
                    for addr in addrs:
                        add(base, _address(addr))
                        if label in host_names:
                            add(host_names[label], _address(addr))
            else:
                ips = dict.fromkeys([svc.spec.cluster_ip or "", *(svc.spec.cluster_ips or [])])
                for ip in ips:
                    if ip and ip != "None":
                        add(base, _address(ip))
            for sp in svc.spec.ports or []:
                if not sp.name:
                    continue
                srv_name = dns.name.from_text(f"_{sp.name}._{sp.protocol.lower()}", base)
                records.setdefault(srv_name, {})
                if not headless:
                    add(srv_name, _srv(100, sp.port, base))
                    continue
                targets: set[tuple[str, int]] = set()
                for s in slices:
                    port = next(
                        (
                            p.port
                            for p in s.ports or []
                            if (p.name or "") == sp.name and p.protocol == sp.protocol
                        ),
                        None,
                    )
                    if port is None:
                        continue
                    for ep in s.endpoints:
                        if ep.is_ready() and ep.addresses:
                            label = ep.hostname or _dashed(str(ep.addresses[0]))
                            if label in host_names:
                                targets.add((label, port))
                weight = max(1, 100 // len(targets)) if targets else 0
                for label, port in sorted(targets):
                    add(
                        srv_name,
                        _srv(weight, port, host_names[label]),
                    )

        # every proper ancestor of an owner name exists (empty non-terminals, RFC 8020)
        below = len(zone.labels)
        seen: set[tuple[bytes, ...]] = {zone.labels}
        for name in records:
            labels = name.labels
            for i in range(len(labels) - below):
                if labels[i:] in seen:
                    break  # so are all of its ancestors
                seen.add(labels[i:])
        existing = {dns.name.Name(labels) for labels in seen}
        existing.add(dns.name.from_text("svc", zone))
        existing.add(dns.name.from_text("pod", zone))
        return cls(zone, records, frozenset(existing))

    def address_records(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        by_type = self.records.get(name, {})
        return [by_type[t] for t in (A, AAAA) if t in by_type]


def soa_text(zone: dns.name.Name) -> str:
    # serial is fixed: there is no secondary to notice changes; minimum = negative TTL
    return f"ns.dns.{zone} hostmaster.{zone} 1 7200 1800 86400 {TTL}"


def _pod_address(name: dns.name.Name, zone: dns.name.Name) -> str | None:
    """`a-b-c-d.<ns>.pod.<zone>` -> "a.b.c.d" (IPv6 with dashes too), else None."""
    pod_zone = dns.name.from_text("pod", zone)
    if not name.is_subdomain(pod_zone):
        return None
    rel = name.relativize(pod_zone).labels
    if len(rel) != 2:
        return None
    try:
        label = rel[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    for candidate in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


def _copy(rrset: dns.rrset.RRset, owner: dns.name.Name) -> dns.rrset.RRset:
    """The rrset under the spelling the client used (0x20 case randomisation echoes back)."""
    out = dns.rrset.RRset(owner, rrset.rdclass, rrset.rdtype)
    for rd in rrset:
        out.add(rd, rrset.ttl)
    return out


def answer(query: dns.message.Message, view: DnsView) -> dns.message.Message | None:
    """The response to `query`, or None when it must not be answered (it is a response).

    Pure: depends only on the query and the view.
    """
    if query.flags & dns.flags.QR:
        return None  # never answer a response: no loops, no reflection
    response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
    response.flags &= ~dns.flags.RA
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if query.edns > 0:
        response.set_rcode(dns.rcode.BADVERS)
        return response
    if len(query.question) != 1:
        response.question = []
        response.set_rcode(dns.rcode.FORMERR)
        return response
    q = query.question[0]
    qname, qtype = q.name, q.rdtype
    if q.rdclass not in (IN, dns.rdataclass.ANY) or not qname.is_subdomain(view.zone):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    if dns.rdatatype.is_metatype(qtype) and qtype != ANY:
        response.set_rcode(dns.rcode.NOTIMP)  # AXFR, IXFR, ...
        return response

    by_type = view.records.get(qname)
    if by_type is None:
        pod_ip = _pod_address(qname, view.zone)
        if pod_ip is not None:
            by_type = {}
            rd = _address(pod_ip)
            rr = dns.rrset.RRset(qname, IN, rd.rdtype)
            rr.add(rd, TTL)
            by_type[rd.rdtype] = rr
    if by_type is None and qname not in view.existing:
        response.set_rcode(dns.rcode.NXDOMAIN)
        _negative(response, view)
        return response
    found = [rr for t, rr in (by_type or {}).items() if t == qtype or qtype == ANY]
    if not found:
        _negative(response, view)  # NODATA
        return response
    for rr in found:
        response.answer.append(_copy(rr, qname))
        if rr.rdtype == SRV:
            targets = {rd.target for rd in rr}
            for target in sorted(targets):
                response.additional.extend(view.address_records(target))
    return response


def _negative(response: dns.message.Message, view: DnsView) -> None:
    soa = view.records[view.zone][SOA]
    response.authority.append(soa)


def response_wire(response: dns.message.Message, max_size: int) -> bytes:
    """`response` in wire form within `max_size` bytes; if it does not fit, the header and
    question only, with TC set (the client retries over TCP; RFC 2181 9)."""
    try:
        return response.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=max_size)


def formerr_for(data: bytes) -> bytes | None:
    """A FORMERR reply to a message that did not parse, if its header is there and it is not
    itself a response (a garbage response is dropped, never answered)."""
    if len(data) < 12:
        return None
    msg_id, flags = struct.unpack("!HH", data[:4])
    if flags & dns.flags.QR:
        return None
    reply = dns.message.Message(id=msg_id)
    reply.flags = dns.flags.QR | (flags & dns.flags.RD)
    reply.set_rcode(dns.rcode.FORMERR)
    return reply.to_wire()


def handle(data: bytes, view: DnsView, *, max_size: int | None) -> bytes | None:
    """Bytes in, bytes out (or None: send nothing). `max_size` None means TCP (64 KiB)."""
    try:
        query = dns.message.from_wire(data)
    except Exception:  # hostile input boundary: any parse failure is the client's fault
        return formerr_for(data)
    response = answer(query, view)
    if response is None:
        return None
    if max_size is None:
        limit = 65535
    else:
        asked = query.payload if query.edns >= 0 else 512
        limit = max(512, min(asked, max_size))
    return response_wire(response, limit)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        reply = self.server.reply(data, max_size=EDNS_PAYLOAD)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (the client went away): nothing to do
        pass


class ClusterDns:
    """The cluster DNS server of one node (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        layout: ClusterLayout,
        node_name: str,
        *,
        address: str = str(DNS_IP),
        port: int = 53,
        domain: str = CLUSTER_DOMAIN,
        idle_timeout: float = 10.0,
        max_tcp_connections: int = 256,
        coalesce: float = 0.02,
    ) -> None:
        self.store = store
        self.layout = layout
        self.node_name = node_name
        self.address = address
        self.port = port
        self.domain = domain
        self.idle_timeout = idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.coalesce = coalesce
        self.view = DnsView.build([], [], domain=domain)
        self.ready = asyncio.Event()
        self._tcp_open = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.queries = 0
        self.bound_port: int | None = None

    def rebuild(self, services: Sequence[Service], slices: Sequence[EndpointSlice]) -> None:
        self.view = DnsView.build(services, slices, domain=self.domain)

    def reply(self, data: bytes, *, max_size: int | None) -> bytes | None:
        self.queries += 1
        try:
            return handle(data, self.view, max_size=max_size)
        except dns.exception.DNSException as exc:
            # a query we parsed but cannot answer (a bug, or a corner of the protocol)
            log.error("cluster DNS: cannot answer a query: %s", exc)
            return formerr_for(data)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_open >= self.max_tcp_connections:
            writer.close()
            return
        self._tcp_open += 1
        self._writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                (length,) = struct.unpack("!H", head)
                if length < 12 or length > MAX_TCP_QUERY:
                    break
                data = await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
                reply = self.reply(data, max_size=None)
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, half a message, or reset: just close
        finally:
            self._tcp_open -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _serve(self) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.address, self.port)
        )
        # port 0 (tests): TCP takes the port the kernel gave UDP
        port = int(transport.get_extra_info("sockname")[1])
        try:
            server = await asyncio.start_server(
                self._tcp, self.address, port, reuse_address=True, backlog=128
            )
        except OSError:
            transport.close()
            raise
        self.bound_port = port
        return transport, server

    async def run(self, stop: asyncio.Event) -> None:
        changed = asyncio.Event()
        watch = ServiceWatch(self.store, on_change=changed.set, name="cluster-dns")
        await watch.start()
        await asyncio.to_thread(self.rebuild, *watch.snapshot())
        udp: asyncio.DatagramTransport | None = None
        tcp: asyncio.Server | None = None
        try:
            while not stop.is_set():
                if udp is None:
                    try:
                        udp, tcp = await self._serve()
                        log.info(
                            "cluster DNS: serving %s on %s:%d", self.domain, self.address, self.port
                        )
                        self.ready.set()
                    except OSError as exc:
                        log.error(
                            "cluster DNS: cannot listen on %s:%d: %s (is %s/32 an address of "
                            "lo in node %s's netns?); retrying in 1 s",
                            self.address,
                            self.port,
                            exc.strerror or exc,
                            self.address,
                            self.node_name,
                        )
                await wait_any(stop, changed, 1.0 if udp is None else None)
                if changed.is_set():
                    await asyncio.sleep(self.coalesce)
                    changed.clear()
                    # in a thread: ~0.3 s for 1000 Services, and queries keep being answered
                    await asyncio.to_thread(self.rebuild, *watch.snapshot())
        finally:
            await watch.stop()
            if udp is not None:
                udp.close()
            if tcp is not None:
                tcp.close()
                for w in list(self._writers):
                    w.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tcp.wait_closed(), 2.0)
