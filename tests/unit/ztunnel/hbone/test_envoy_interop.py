"""Interop with real Envoy, an independent and strict HTTP/2 implementation, both ways:

- Envoy as HBONE client (tcp_proxy tunneling over mTLS HTTP/2) -> our HboneServer;
- our HboneClientPool -> Envoy as HBONE server (HTTP/2 CONNECT terminated to a TCP backend).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.ztunnel.hbone.pool import HboneClientPool, PoolKey
from ketch.ztunnel.hbone.server import IncomingConnect
from ketch.ztunnel.hbone.tls import WorkloadCert
from tests.prereq import needs_tool
from tests.unit.ztunnel.hbone.conftest import Mesh, ServerFactory, eventually

ENVOY = shutil.which("envoy") or str(Path(sys.prefix) / "bin" / "envoy")

pytestmark = [
    pytest.mark.timeout(60),
    needs_tool("envoy", ENVOY),
]


def envoy_argv(config: Path) -> list[str]:
    """One worker, no hot restart (parallel Envoys must not share its shared memory)."""
    return [
        ENVOY,
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "-l",
        "warning",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BOOTSTRAP = """
static_resources:
  listeners:
  - name: khb_out
    address: {{socket_address: {{address: {bind}, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: khb
          cluster: hbone
          tunneling_config: {{hostname: "{authority}"}}
  clusters:
  - name: hbone
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: hbone
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {hbone_ip}, port_value: {hbone}}}}}}}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            initial_stream_window_size: 4194304
            initial_connection_window_size: 16777216
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: [h2]
          tls_params:
            tls_minimum_protocol_version: TLSv1_3
            tls_maximum_protocol_version: TLSv1_3
          tls_certificates:
          - certificate_chain: {{filename: {chain}}}
            private_key: {{filename: {key}}}
          validation_context:
            trusted_ca: {{filename: {roots}}}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{exact: "{server_id}"}}
"""


TERMINATOR = """
static_resources:
  listeners:
  - name: khb_in
    address: {{socket_address: {{address: {bind}, port_value: {listen}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            tls_params:
              tls_minimum_protocol_version: TLSv1_3
              tls_maximum_protocol_version: TLSv1_3
            tls_certificates:
            - certificate_chain: {{filename: {chain}}}
              private_key: {{filename: {key}}}
            validation_context:
              trusted_ca: {{filename: {roots}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: khb_in
          codec_type: HTTP2
          http2_protocol_options: {{allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route:
                  cluster: backend
                  upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}
"""


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Callable[..., int]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(template: str, cert: WorkloadCert, mesh: Mesh, **fmt: object) -> int:
        fmt.setdefault("bind", "127.0.0.1")
        fmt.setdefault("hbone_ip", "127.0.0.1")
        (tmp_path / "chain.pem").write_bytes(b"".join(cert.chain_pem))
        (tmp_path / "key.pem").write_bytes(cert.key_pem)
        (tmp_path / "roots.pem").write_bytes(b"".join(mesh.ca.trust_bundle))
        listen = _free_port()
        cfg = template.format(
            listen=listen,
            chain=tmp_path / "chain.pem",
            key=tmp_path / "key.pem",
            roots=tmp_path / "roots.pem",
            **fmt,
        )
        (tmp_path / "envoy.yaml").write_text(cfg)
        log = open(tmp_path / "envoy.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                envoy_argv(tmp_path / "envoy.yaml"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        log.close()
        return listen

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


async def _wait_listening(port: int) -> None:
    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    await eventually(up, within=20)


async def test_envoy_client_to_our_server(
    mesh: Mesh, make_server: ServerFactory, envoy_factory: Callable[..., int], tmp_path: Path
) -> None:
    seen = []

    async def handler(inc: IncomingConnect) -> None:
        seen.append(inc.info)
        t = inc.accept()
        while chunk := await t.read():
            await t.write(chunk)
        t.write_eof()

    srv = await make_server(handler)
    start = envoy_factory
    port = start(
        BOOTSTRAP,
        mesh.client_cert,
        mesh,
        authority="10.1.2.3:8080",
        hbone=srv.address[1],
        server_id=mesh.server_id.uri,
    )
    await _wait_listening(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = os.urandom(6 * 1024 * 1024)  # beyond one stream window
    writer.write(payload)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    assert len(got) == len(payload), (tmp_path / "envoy.log").read_text()[-2000:]
    assert got == payload
    # Every connection to Envoy (including the readiness probe) became one CONNECT.
    assert seen
    for info in seen:
        assert info.authority == "10.1.2.3:8080"
        assert info.peer_identity == mesh.client_id


async def test_our_client_to_envoy_server(
    mesh: Mesh, envoy_factory: Callable[..., int], pool: HboneClientPool
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(-1)
        writer.write(b"%d:" % len(data) + data[-100:])
        writer.write_eof()
        await writer.drain()
        writer.close()

    be = await asyncio.start_server(backend, "127.0.0.1", 0)
    try:
        be_port = be.sockets[0].getsockname()[1]
        port = envoy_factory(TERMINATOR, mesh.server_cert, mesh, backend=be_port)
        await _wait_listening(port)
        key = PoolKey(mesh.client_id, (mesh.server_id,), ("127.0.0.1", port))
        payload = os.urandom(6 * 1024 * 1024)
        tunnels = [await pool.open(key, f"127.0.0.1:{be_port}") for _ in range(3)]
        assert pool.connections(key) == 1
        for t in tunnels:
            await t.write(payload)
            t.write_eof()
            got = bytearray()
            while chunk := await t.read():
                got += chunk
            assert bytes(got) == b"%d:" % len(payload) + payload[-100:]
    finally:
        be.close()
