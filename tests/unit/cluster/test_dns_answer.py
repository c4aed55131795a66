"""`answer(query, view)`: the cluster DNS names, as dnspython messages (no sockets)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.cluster.dns import TTL, DnsView, answer, formerr_for, handle
from tests.unit.cluster.factories import endpoint, eps, service

ZONE = "svc.cluster.local."


def view() -> DnsView:
    web = service(
        "web",
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ],
    )
    db = service("db", ip="None", ports=[{"name": "pg", "port": 5432}])
    single = service("single", ns="other", ip="10.96.0.40", ports=[{"port": 8080}])
    slices = [
        eps(
            "web",
            [endpoint("10.244.1.2"), endpoint("10.244.2.2"), endpoint("10.244.1.9", ready=False)],
            [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}],
        ),
        eps(
            "db",
            [
                endpoint("10.244.1.3", hostname="db-0"),
                endpoint("10.244.2.3", hostname="db-1"),
                endpoint("10.244.2.4"),
                endpoint("10.244.1.8", hostname="db-9", ready=False),
            ],
            [{"name": "pg", "port": 5433}],
        ),
    ]
    return DnsView.build([web, db, single], slices)


VIEW = view()


def ask(name: str, rtype: str = "A", **kw: object) -> dns.message.Message:
    q = dns.message.make_query(name, rtype, **kw)  # type: ignore[arg-type]
    r = answer(q, view())
    assert r is not None
    assert r.id == q.id
    assert r.flags & dns.flags.QR
    return r


def values(r: dns.message.Message, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(r, section) for rd in rrset)


def test_service_a_record() -> None:
    r = ask("web.shop.svc.cluster.local", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA
    assert not r.flags & dns.flags.RA
    assert values(r) == ["10.96.0.20"]
    assert r.answer[0].ttl == TTL == 5


def test_aaaa_of_ipv4_service_is_nodata_with_soa() -> None:
    r = ask("web.shop.svc.cluster.local", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]
    assert r.authority[0].ttl == TTL


def test_name_case_is_echoed() -> None:
    r = ask("WeB.Shop.SVC.cluster.local", "A")
    assert values(r) == ["10.96.0.20"]
    assert r.answer[0].name.to_text() == "WeB.Shop.SVC.cluster.local."


def test_headless_returns_ready_endpoint_ips() -> None:
    r = ask("db.shop.svc.cluster.local", "A")
    assert values(r) == ["10.244.1.3", "10.244.2.3", "10.244.2.4"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("db-0.db.shop.svc.cluster.local", ["10.244.1.3"]),
        ("db-1.db.shop.svc.cluster.local", ["10.244.2.3"]),
        ("10-244-2-4.db.shop.svc.cluster.local", ["10.244.2.4"]),
    ],
)
def test_endpoint_hostnames(name: str, expected: list[str]) -> None:
    assert values(ask(name)) == expected


def test_not_ready_endpoint_hostname_is_nxdomain() -> None:
    assert ask("db-9.db.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_srv_cluster_ip_service() -> None:
    r = ask("_http._tcp.web.shop.svc.cluster.local", "SRV")
    assert values(r) == ["0 100 80 web.shop.svc.cluster.local."]
    assert values(r, "additional") == ["10.96.0.20"]
    udp = ask("_dns._udp.web.shop.svc.cluster.local", "SRV")
    assert values(udp) == ["0 100 53 web.shop.svc.cluster.local."]


def test_srv_headless_one_per_endpoint_with_endpoint_port() -> None:
    r = ask("_pg._tcp.db.shop.svc.cluster.local", "SRV")
    assert values(r) == [
        "0 33 5433 10-244-2-4.db.shop.svc.cluster.local.",
        "0 33 5433 db-0.db.shop.svc.cluster.local.",
        "0 33 5433 db-1.db.shop.svc.cluster.local.",
    ]
    assert values(r, "additional") == ["10.244.1.3", "10.244.2.3", "10.244.2.4"]


def test_srv_wrong_protocol_is_nxdomain_and_parent_is_nodata() -> None:
    assert ask("_http._udp.web.shop.svc.cluster.local", "SRV").rcode() == dns.rcode.NXDOMAIN
    # `_tcp.web...` exists (an empty non-terminal): NODATA, not NXDOMAIN (RFC 8020)
    r = ask("_tcp.web.shop.svc.cluster.local", "SRV")
    assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, [])


def test_unnamed_port_has_no_srv() -> None:
    r = ask("single.other.svc.cluster.local", "SRV")
    assert (r.rcode(), r.answer) == (dns.rcode.NOERROR, [])
    assert values(ask("single.other.svc.cluster.local")) == ["10.96.0.40"]


@pytest.mark.parametrize(
    "name",
    ["shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "pod.cluster.local"],
)
def test_existing_parents_are_nodata(name: str) -> None:
    r = ask(name, "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.answer == []
    assert r.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize(
    "name",
    [
        "nope.shop.svc.cluster.local",
        "web.nope.svc.cluster.local",
        "web.shop.svc.cluster.local.shop.svc.cluster.local",  # search-path expansion of an FQDN
        "x.cluster.local",
        "a.b.web.shop.svc.cluster.local",
    ],
)
def test_unknown_names_are_nxdomain_with_soa(name: str) -> None:
    r = ask(name)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.flags & dns.flags.AA
    assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]
    soa = r.authority[0][0]
    assert soa.minimum == TTL  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["example.com", "localhost", "local", "10.in-addr.arpa"])
def test_outside_the_zone_is_refused(name: str) -> None:
    r = ask(name)
    assert r.rcode() == dns.rcode.REFUSED
    assert r.answer == []
    assert not r.flags & dns.flags.AA


def test_pod_names() -> None:
    assert values(ask("10-244-1-7.shop.pod.cluster.local")) == ["10.244.1.7"]
    assert ask("10-244-1-7.shop.pod.cluster.local", "AAAA").answer == []
    assert ask("not-an-ip.shop.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert ask("10-244-1-700.shop.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_soa_ns_and_version() -> None:
    assert values(ask("cluster.local", "NS")) == ["ns.dns.cluster.local."]
    assert len(ask("cluster.local", "SOA").answer) == 1
    assert values(ask("dns-version.cluster.local", "TXT")) == ['"1.1.0"']


def test_any_returns_every_type() -> None:
    assert values(ask("web.shop.svc.cluster.local", "ANY")) == ["10.96.0.20"]


def test_edns_is_echoed_and_bad_version_refused() -> None:
    r = ask("web.shop.svc.cluster.local", use_edns=0, payload=4096)
    assert r.edns == 0
    assert values(r) == ["10.96.0.20"]
    bad = ask("web.shop.svc.cluster.local", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS


def test_many_questions_is_formerr() -> None:
    q = dns.message.make_query("web.shop.svc.cluster.local", "A")
    q.question.append(dns.rrset.RRset(q.question[0].name, 1, dns.rdatatype.AAAA))
    r = answer(q, view())
    assert r is not None
    assert r.rcode() == dns.rcode.FORMERR
    wire = handle(q.to_wire(), view(), max_size=512)
    assert wire is not None
    assert dns.message.from_wire(wire).rcode() == dns.rcode.FORMERR


def test_zero_questions_is_formerr() -> None:
    q = dns.message.Message()
    r = answer(q, view())
    assert r is not None
    assert r.rcode() == dns.rcode.FORMERR


def test_other_opcodes_not_implemented() -> None:
    q = dns.message.make_query("web.shop.svc.cluster.local", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = answer(q, view())
    assert r is not None
    assert r.rcode() == dns.rcode.NOTIMP


def test_zone_transfer_not_implemented() -> None:
    assert ask("cluster.local", "AXFR").rcode() == dns.rcode.NOTIMP


def test_responses_are_never_answered() -> None:
    q = dns.message.make_query("web.shop.svc.cluster.local", "A")
    q.flags |= dns.flags.QR
    assert answer(q, view()) is None
    assert handle(q.to_wire(), view(), max_size=512) is None


def test_garbage_gets_formerr_or_nothing() -> None:
    assert handle(b"", view(), max_size=512) is None
    assert handle(b"\x12\x34", view(), max_size=512) is None
    junk = b"\xab\xcd\x01\x00" + b"\xff" * 40
    reply = handle(junk, view(), max_size=512)
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert (msg.id, msg.rcode()) == (0xABCD, dns.rcode.FORMERR)
    # a garbage *response* (QR set) is dropped: no reflection
    assert formerr_for(b"\xab\xcd\x81\x00" + b"\xff" * 40) is None


def test_truncated_udp_answer_sets_tc() -> None:
    big = service("big", ip="None", ports=[{"name": "http", "port": 80}])
    many = [endpoint(f"10.244.{i // 200 + 1}.{i % 200 + 2}") for i in range(100)]
    v = DnsView.build([big], [eps("big", many)])
    q = dns.message.make_query("big.shop.svc.cluster.local", "A")
    udp = handle(q.to_wire(), v, max_size=1232)
    assert udp is not None
    assert len(udp) <= 512
    r = dns.message.from_wire(udp)
    assert r.flags & dns.flags.TC
    assert r.answer == []
    tcp = handle(q.to_wire(), v, max_size=None)
    assert tcp is not None
    assert len(values(dns.message.from_wire(tcp))) == 100
    # with EDNS the client may take more over UDP
    q2 = dns.message.make_query("big.shop.svc.cluster.local", "A", use_edns=0, payload=4096)
    udp2 = handle(q2.to_wire(), v, max_size=4096)
    assert udp2 is not None
    assert not dns.message.from_wire(udp2).flags & dns.flags.TC


def test_view_follows_objects() -> None:
    v = DnsView.build([], [])
    q = dns.message.make_query("web.shop.svc.cluster.local", "A")
    r = answer(q, v)
    assert r is not None
    assert r.rcode() == dns.rcode.NXDOMAIN


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_never_raise(data: bytes) -> None:
    reply = handle(data, VIEW, max_size=512)
    if reply is not None:
        msg = dns.message.from_wire(reply)
        assert msg.flags & dns.flags.QR
        assert len(reply) <= 512


@settings(max_examples=200, deadline=None)
@given(
    name=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20),
        min_size=1,
        max_size=8,
    ),
    suffix=st.sampled_from(["svc.cluster.local", "pod.cluster.local", "cluster.local", "example"]),
    rtype=st.sampled_from(["A", "AAAA", "SRV", "TXT", "ANY", "MX", "PTR", "SOA", "NS"]),
    flip=st.integers(min_value=0, max_value=11),
)
def test_mutated_queries_never_raise(name: list[str], suffix: str, rtype: str, flip: int) -> None:
    wire = bytearray(dns.message.make_query(".".join([*name, suffix]), rtype).to_wire())
    wire[flip] ^= 0xFF  # corrupt one header byte
    reply = handle(bytes(wire), VIEW, max_size=512)
    if reply is not None:
        assert dns.message.from_wire(reply).flags & dns.flags.QR


def test_odd_endpoint_hostnames_do_not_make_deeper_names() -> None:
    db = service("db", ip="None", ports=[{"name": "pg", "port": 5432}])
    s = eps(
        "db",
        [
            endpoint("10.244.1.3", hostname="a.b"),
            endpoint("10.244.1.4", hostname="x" * 70),  # longer than a DNS label
            endpoint("10.244.1.5", hostname="ok"),
        ],
        [{"name": "pg", "port": 5432}],
    )
    v = DnsView.build([db], [s])

    def get(name: str, rtype: str = "A") -> dns.message.Message:
        r = answer(dns.message.make_query(name, rtype), v)
        assert r is not None
        return r

    # every ready address is still behind the Service name
    assert values(get("db.shop.svc.cluster.local")) == ["10.244.1.3", "10.244.1.4", "10.244.1.5"]
    assert get("a.b.db.shop.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert values(get("ok.db.shop.svc.cluster.local")) == ["10.244.1.5"]
    # SRV only names targets that resolve
    assert values(get("_pg._tcp.db.shop.svc.cluster.local", "SRV")) == [
        "0 100 5432 ok.db.shop.svc.cluster.local."
    ]
