"""Pure helpers: authority parsing, client headers, TLS contexts, malloc tuning."""

from __future__ import annotations

import ipaddress
import ssl

import pytest

from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import headers, tls
from ketch.ztunnel.hbone.errors import IdentityMismatch, TlsError, TrustDomainMismatch
from ketch.ztunnel.hbone.sysalloc import tune_malloc
from tests.unit.ztunnel.hbone.conftest import Mesh


@pytest.mark.parametrize(
    ("text", "ip", "port"),
    [
        ("10.0.0.1:80", "10.0.0.1", 80),
        ("[fd00::1]:8080", "fd00::1", 8080),
        ("[::ffff:1.2.3.4]:1", "::ffff:1.2.3.4", 1),
        ("255.255.255.255:65535", "255.255.255.255", 65535),
    ],
)
def test_parse_authority_ok(text: str, ip: str, port: int) -> None:
    a = headers.parse_authority(text)
    assert a == headers.Authority(ipaddress.ip_address(ip), port)
    assert headers.parse_authority(str(a)) == a


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.1",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:+80",
        "10.0.0.1:\uff18\uff10",  # full-width digits
        "host:80",
        "fd00::1:80",
        "[fd00::1]",
        "[fd00::1]80",
        "[fe80::1%eth0]:80",
        "[10.0.0.1]:80",
        "010.0.0.1:80",
    ],
)
def test_parse_authority_rejects(text: str) -> None:
    with pytest.raises(headers.InvalidAuthority):
        headers.parse_authority(text)


def test_baggage_values_are_raw_not_percent_encoded() -> None:
    # ztunnel's baggage parser does not percent-decode (zt:src/baggage.rs), so values go raw.
    assert (
        headers.baggage({"k8s.deployment.name": "web%20v2", "service.version": "1.0~rc:1"})
        == "k8s.deployment.name=web%20v2,service.version=1.0~rc:1"
    )


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        ("a,k8s.namespace.name=kube-system", "ak8s.namespace.namekube-system"),  # injection
        ("x;prop=1", "xprop1"),
        ("line\r\nx-evil: 1", "linex-evil:1"),  # header injection / illegal in a value
        ("nul\x00del\x7f", "nuldel"),
        ("sp ace\ttab", "spacetab"),
        ('q"uote\\', "quote"),
        ("caf\u00e9", "caf"),
        (",;= \r\n", None),  # nothing left: the entry is left out
    ],
)
def test_baggage_drops_characters_that_break_the_header_or_its_syntax(
    value: str, sent: str | None
) -> None:
    out = headers.baggage({"k8s.cluster.name": "c1", "service.name": value})
    assert out == "k8s.cluster.name=c1" + (f",service.name={sent}" if sent is not None else "")


def test_baggage_rejects_a_bad_key() -> None:
    with pytest.raises(ValueError, match="baggage key"):
        headers.baggage({"bad key": "v"})


def test_client_headers() -> None:
    assert headers.forwarded("10.0.0.1", 5555) == 'for="10.0.0.1:5555"'
    assert (
        headers.forwarded(ipaddress.ip_address("fd00::2"), 1, host="svc.ns.svc.cluster.local")
        == 'for="[fd00::2]:1";host=svc.ns.svc.cluster.local'
    )
    assert (
        headers.baggage({"k8s.namespace.name": "default", "service.version": "v1/b+2", "x": ""})
        == "k8s.namespace.name=default,service.version=v1/b+2"
    )
    tp = headers.traceparent(b"\x01" * 16, b"\x02" * 8)
    assert tp == "00-" + "01" * 16 + "-" + "02" * 8 + "-00"
    assert headers.traceparent() != headers.traceparent()
    with pytest.raises(ValueError, match="non-zero"):
        headers.traceparent(b"\0" * 16, b"\1" * 8)


def test_contexts_are_tls13_h2_mtls(mesh: Mesh) -> None:
    s = mesh.server_ctx()
    c = mesh.client_ctx(mesh.client_id)
    for ctx in (s, c):
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version is ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert ctx.options & ssl.OP_NO_TICKET
    assert s.num_tickets == 0


def _handshake(
    client: ssl.SSLContext, server: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """In-memory TLS handshake (no sockets)."""
    cin, cout, sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    co = client.wrap_bio(cin, cout, server_hostname=None)
    so = server.wrap_bio(sin, sout, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", co), ("s", so)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        sin.write(cout.read())
        cin.write(sout.read())
        if all(done.values()):
            break
    assert all(done.values())
    return co, so


def test_identity_checks_after_handshake(mesh: Mesh) -> None:
    co, so = _handshake(mesh.client_ctx(mesh.client_id), mesh.server_ctx())
    assert co.version() == "TLSv1.3"
    assert co.selected_alpn_protocol() == "h2"
    cipher = co.cipher()
    assert cipher is not None
    assert cipher[0] in {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}
    assert tls.peer_identity(co) == mesh.server_id
    assert tls.peer_identity(so) == mesh.client_id
    other = SpiffeId("cluster.local", "x", "y")
    assert tls.verify_server(co, [other, mesh.server_id]) == mesh.server_id
    with pytest.raises(IdentityMismatch) as ei:
        tls.verify_server(co, [other])
    assert "expected one of [spiffe://cluster.local/ns/x/sa/y]" in str(ei.value)
    assert tls.verify_client(so, "cluster.local") == mesh.client_id
    with pytest.raises(TrustDomainMismatch, match=r"outside trust domain 'other\.td'"):
        tls.verify_client(so, "other.td")


def test_bad_inputs_are_tls_errors(mesh: Mesh) -> None:
    with pytest.raises(TlsError, match="empty trust bundle"):
        tls.client_context(mesh.client_cert, [])
    with pytest.raises(TlsError, match="trust bundle"):
        tls.client_context(mesh.client_cert, [b"not a pem"])
    with pytest.raises(TlsError, match="certificate/key"):
        tls.client_context(tls.WorkloadCert(b"junk", (b"junk",)), mesh.ca.trust_bundle)
    with pytest.raises(TlsError, match="empty"):
        tls.WorkloadCert(b"k", ())


def test_tune_malloc() -> None:
    assert tune_malloc() is True
