"""Interop with real Envoy through the node proxy's in-pod listeners, over real network
namespaces, both ways:

- Envoy as the HBONE client (tcp_proxy tunnelling over TLS 1.3 mTLS HTTP/2 CONNECT), in a
  pod outside the mesh, reaches `python3 -m http.server` in a mesh pod through that pod's
  15008 inbound; the node proxy sees and reports Envoy's SPIFFE identity.
- Our outbound (a mesh pod's 15001 capture -> HBONE) reaches a server whose 15008 is served
  by Envoy terminating HBONE, and refuses to when Envoy's certificate does not carry the
  identity the workload is supposed to have (SAN check on our side); Envoy checks ours.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from ketch.identity.ca import IssuedCert
from tests.integration.test_ztunnel_support import TD, Mesh, MeshPod, eventually, mesh
from tests.prereq import needs_tool
from tests.unit.ztunnel.hbone.test_envoy_interop import BOOTSTRAP, ENVOY, TERMINATOR, envoy_argv

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    needs_tool("envoy", ENVOY),
]
__all__ = ["mesh"]

OPENED = "istio_tcp_connections_opened_total"


def _start_envoy(
    mesh: Mesh, mp: MeshPod, tmp: Path, tag: str, template: str, cert: IssuedCert, **fmt: object
) -> subprocess.Popen[bytes]:
    """Envoy from `template` inside `mp`'s netns, with `cert`; files and log in tmp/envoy-tag."""
    d = tmp / f"envoy-{tag}"
    d.mkdir()
    (d / "chain.pem").write_bytes(b"".join(cert.chain_pem))
    (d / "key.pem").write_bytes(cert.key_pem)
    (d / "roots.pem").write_bytes(b"".join(mesh.ca.trust_bundle))
    cfg = template.format(chain=d / "chain.pem", key=d / "key.pem", roots=d / "roots.pem", **fmt)
    (d / "envoy.yaml").write_text(cfg)
    log = open(d / "envoy.log", "wb")  # noqa: SIM115 - handed to the process
    # the fabric stops it (by PID) when the test ends
    proc = mp.pod.exec(
        envoy_argv(d / "envoy.yaml"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


def _envoy_log(tmp: Path, tag: str) -> str:
    return (tmp / f"envoy-{tag}" / "envoy.log").read_text(errors="replace")[-3000:]


async def test_envoy_hbone_client_reaches_a_mesh_pod_through_our_inbound(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.pod("node1", "e", mesh=False)  # runs Envoy; not captured by a node proxy
    mesh.pod("node2", "b")
    await mesh.start()
    await mesh.http_server("b", 8080, b"hello from b\n")
    e, b = mesh.pods["e"], mesh.pods["b"]
    envoy_id = f"spiffe://{TD}/ns/app/sa/envoy"
    cert = mesh.ca.issue_workload(envoy_id)
    common = {"bind": "127.0.0.1", "hbone_ip": b.ip, "hbone": 15008}
    _start_envoy(
        mesh,
        e,
        tmp_path,
        "right",
        BOOTSTRAP,
        cert,
        listen=10001,
        authority=f"{b.ip}:8080",
        server_id=f"spiffe://{TD}/ns/app/sa/b",
        **common,
    )
    # a second Envoy that expects another identity from the server: must not get through
    _start_envoy(
        mesh,
        e,
        tmp_path,
        "wrong",
        BOOTSTRAP,
        cert,
        listen=10002,
        authority=f"{b.ip}:8080",
        server_id=f"spiffe://{TD}/ns/app/sa/not-b",
        **common,
    )
    await asyncio.to_thread(e.pod.wait_for_tcp, "127.0.0.1", 10001, 20)
    await asyncio.to_thread(e.pod.wait_for_tcp, "127.0.0.1", 10002, 20)

    r = await mesh.run("e", ["curl", "-sS", "--max-time", "10", "http://127.0.0.1:10001/"])
    assert r.returncode == 0, r.stderr + _envoy_log(tmp_path, "right")
    assert r.stdout == "hello from b\n"
    n2 = mesh.proxies["node2"]
    await eventually(
        lambda: (
            n2.metric(
                OPENED,
                reporter="destination",
                source_principal=envoy_id,
                destination_principal=f"spiffe://{TD}/ns/app/sa/b",
            )
            >= 1
        )
    )
    rec = next(a for a in n2.access if a.src_identity == envoy_id)
    assert rec.dst_workload == "b"

    r = await mesh.run("e", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:10002/"])
    assert r.returncode != 0
    assert "hello" not in r.stdout


async def test_our_outbound_reaches_a_server_behind_envoy_terminating_hbone(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.pod("node1", "a")
    t = mesh.pod("node2", "t")  # HBONE in the state, but its 15008 is Envoy, not us
    t.mesh = False
    w = mesh.pod("node2", "w", sa="t")  # should present sa/t; its Envoy will not
    w.mesh = False
    await mesh.start()
    await mesh.http_server("t", 8080, b"hello from behind envoy\n")
    await mesh.http_server("w", 8080, b"must not be reached\n")
    right = mesh.ca.issue_workload(f"spiffe://{TD}/ns/app/sa/t")
    wrong = mesh.ca.issue_workload(f"spiffe://{TD}/ns/app/sa/intruder")
    _start_envoy(mesh, t, tmp_path, "t", TERMINATOR, right, bind=t.ip, listen=15008, backend=8080)
    _start_envoy(mesh, w, tmp_path, "w", TERMINATOR, wrong, bind=w.ip, listen=15008, backend=8080)
    await asyncio.to_thread(t.pod.wait_for_tcp, t.ip, 15008, 20)
    await asyncio.to_thread(w.pod.wait_for_tcp, w.ip, 15008, 20)

    r = await mesh.run("a", ["curl", "-sS", "--max-time", "10", f"http://{t.ip}:8080/"])
    assert r.returncode == 0, r.stderr + _envoy_log(tmp_path, "t")
    assert r.stdout == "hello from behind envoy\n"
    n1 = mesh.proxies["node1"]
    assert (
        n1.metric(
            OPENED,
            reporter="source",
            source_principal=f"spiffe://{TD}/ns/app/sa/a",
            destination_principal=f"spiffe://{TD}/ns/app/sa/t",
            connection_security_policy="mutual_tls",
        )
        == 1
    )

    # w's Envoy presents sa/intruder where the state says sa/t: our SAN check refuses
    r = await mesh.run("a", ["curl", "-sS", "--max-time", "5", f"http://{w.ip}:8080/"])
    assert r.returncode != 0
    assert "must not" not in r.stdout
    failed = [a for a in n1.access if a.dst_workload == "w"]
    assert failed
    assert failed[-1].error
