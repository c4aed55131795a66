"""Shared harness for the ztunnel runtime integration tests (no tests in this module).

`MeshBuilder` builds a small cluster on a netns fabric (prefix `kz...`): pods with the
in-pod redirection rules installed, one `Ztunnel` per node running in the test's event loop,
a real CA (`CertificateAuthority.create`) behind a real `CertificateManager` with an
in-process CA client, and a prometheus registry plus an access-log list per node.
Everything is torn down by the `mesh` fixture, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ketch.control.translate.policy import translate_policies
from ketch.identity.ca import CertificateAuthority
from ketch.identity.client import InProcessCaClient
from ketch.identity.manager import CertificateManager
from ketch.mesh import (
    Authorization,
    PeerAuthentication,
    Service,
    ServicePort,
    TunnelProtocol,
    Workload,
)
from ketch.netns import canonical_ip, install_rules, run_in_netns
from ketch.netns.fabric import Fabric, Node, Pod, free_prefix
from ketch.ztunnel.metrics import ZtunnelMetrics
from ketch.ztunnel.pod import PodHandle
from ketch.ztunnel.proxy import Ztunnel
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.telemetry import AccessLogRecord

TD = "cluster.local"
NS = "app"


@dataclass
class MeshPod:
    pod: Pod
    workload: Workload
    mesh: bool

    @property
    def ip(self) -> str:
        return self.pod.ip


@dataclass
class NodeProxy:
    node: Node
    zt: Ztunnel
    registry: CollectorRegistry
    access: list[AccessLogRecord] = field(default_factory=list)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of samples of `name` whose labels include `labels`."""
        total = 0.0
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


class Mesh:
    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.ca = CertificateAuthority.create(TD)
        self.manager = CertificateManager(InProcessCaClient(self.ca))
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, MeshPod] = {}
        self.services: list[Service] = []
        self.policies: list[Authorization] = []
        self.peer_authns: list[PeerAuthentication] = []
        self.proxies: dict[str, NodeProxy] = {}

    # ---- building

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            self.nodes[name] = self.fabric.add_node(name)
        return self.nodes[name]

    def pod(
        self,
        node: str,
        name: str,
        *,
        mesh: bool = True,
        sa: str | None = None,
        labels: Mapping[str, str] | None = None,
        services: Mapping[str, Mapping[int, int]] | None = None,
    ) -> MeshPod:
        n = self.node(node)
        p = self.fabric.add_pod(n, name)
        from ipaddress import ip_address

        w = Workload(
            uid=f"uid-{name}",
            name=name,
            namespace=NS,
            addresses=(ip_address(p.ip),),
            service_account=sa or name,
            trust_domain=TD,
            node=node,
            protocol=TunnelProtocol.HBONE if mesh else TunnelProtocol.NONE,
            labels=dict(labels or {"app": name}),
            services=dict(services or {}),
        )
        mp = MeshPod(p, w, mesh)
        self.pods[name] = mp
        return mp

    def service(self, name: str, vip: str, port: int, target: int) -> Service:
        from ipaddress import ip_address

        s = Service(
            name=name,
            namespace=NS,
            hostname=f"{name}.{NS}.svc.cluster.local",
            vips=(ip_address(vip),),
            ports=(ServicePort(port, target),),
        )
        self.services.append(s)
        return s

    def set_policies(self, docs: Iterable[Mapping[str, Any]]) -> None:
        conv = translate_policies(list(docs))
        self.policies = list(conv.authorizations)
        self.peer_authns = list(conv.peer_authentications)

    def state(self) -> ProxyState:
        return ProxyState.build(
            [p.workload for p in self.pods.values()],
            self.services,
            self.policies,
            self.peer_authns,
        )

    # ---- running

    async def start(self, trust_bundle_extra: Iterable[bytes] = (), **zt_kwargs: Any) -> None:
        await self.manager.start()
        state = self.state()
        for name, node in self.nodes.items():
            reg = CollectorRegistry()
            np = NodeProxy(node, None, reg)  # type: ignore[arg-type]
            np.zt = Ztunnel(
                name,
                state,
                self.manager,
                [*self.ca.trust_bundle, *trust_bundle_extra],
                metrics=ZtunnelMetrics(reg),
                access_log=np.access.append,
                **zt_kwargs,
            )
            await np.zt.start()
            self.proxies[name] = np
        for mp in self.pods.values():
            if mp.mesh:
                await self.enroll(mp)
        await self.wait_ready()

    async def enroll(self, mp: MeshPod) -> None:
        await asyncio.to_thread(install_rules, mp.pod.netns)
        zt = self.proxies[mp.pod.node].zt
        fd = mp.pod.open_netns()
        await zt.add_pod(
            PodHandle(mp.workload.uid, mp.workload.name, NS, mp.workload.service_account, fd)
        )

    async def wait_ready(self, within: float = 15.0) -> None:
        """Every node proxy ready and every pod served (workload and certificate in hand:
        the node's readiness alone does not wait for them, as in ztunnel)."""
        await eventually(
            lambda: all(np.zt.ready and np.zt.pods_ready for np in self.proxies.values()),
            within,
        )

    def update(self) -> None:
        st = self.state()
        for np in self.proxies.values():
            np.zt.update_state(st)

    async def close(self) -> None:
        for np in self.proxies.values():
            await np.zt.stop()
        await self.manager.stop()

    # ---- workloads

    async def run(
        self, name: str, argv: list[str], within: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        pod = self.pods[name].pod
        return await asyncio.to_thread(pod.run, argv, within, check=False)

    async def http_server(self, name: str, port: int = 8080, body: bytes = b"hello mesh\n") -> str:
        """`python3 -m http.server` in the pod serving a directory with index.html=body."""
        d = f"/tmp/{self.fabric.prefix}-{name}-www"
        os.makedirs(d, exist_ok=True)
        await asyncio.to_thread(Path(d, "index.html").write_bytes, body)
        pod = self.pods[name].pod
        pod.exec(
            ["python3", "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", d],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.to_thread(pod.wait_for_tcp, "127.0.0.1", port)
        return d


@contextlib.asynccontextmanager
async def mesh_on_fabric(*, ipv6: bool = False) -> AsyncIterator[Mesh]:
    """A `Mesh` on a fresh fabric (dual-stack with `ipv6`), torn down afterwards: proxies
    stopped, namespaces deleted, pods' web roots removed."""
    fab = Fabric(free_prefix("kz"), ipv6=ipv6)
    m = Mesh(fab)
    try:
        yield m
    finally:
        try:
            await m.close()
        finally:
            await asyncio.to_thread(fab.close)
            for name in m.pods:
                shutil.rmtree(f"/tmp/{fab.prefix}-{name}-www", ignore_errors=True)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async with mesh_on_fabric() as m:
        yield m


# ---------------------------------------------------------------------------- raw TCP helpers


async def pod_socket_connect(
    pod: Pod, addr: tuple[str, int], within: float = 10.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An app-side TCP connection from inside `pod` (no mark: redirected like an app's);
    IPv6 when `addr` is."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET

    def mk() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setblocking(False)
        return s

    sock = await run_in_netns(pod.netns, mk)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def pod_server(
    pod: Pod, port: int, handler: Any, *, dual_stack: bool = False
) -> asyncio.Server:
    """An asyncio TCP server whose listening socket lives in `pod` (an app in the pod); on
    `[::]` for both families with `dual_stack`, else on 0.0.0.0."""

    def mk() -> socket.socket:
        s = socket.socket(socket.AF_INET6 if dual_stack else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::" if dual_stack else "0.0.0.0", port))
        s.listen(2048)
        s.setblocking(False)
        return s

    sock = await run_in_netns(pod.netns, mk)
    return await asyncio.start_server(handler, sock=sock, backlog=2048)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def eventually(pred: Callable[[], bool], within: float = 10.0, step: float = 0.02) -> None:
    """Poll `pred` until true; TimeoutError after `within` seconds."""
    for _ in range(max(1, int(within / step))):
        if pred():
            return
        await asyncio.sleep(step)
    if not pred():
        raise TimeoutError(f"condition not met within {within}s")


async def echo_server(
    pod: Pod, port: int, seen: list[str] | None = None, *, dual_stack: bool = False
) -> asyncio.Server:
    """Echo every chunk back; records each client's address (as the app sees it, IPv4 not
    v4-mapped) in `seen`."""

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if seen is not None:
            seen.append(str(canonical_ip(w.get_extra_info("peername")[0])))
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    return await pod_server(pod, port, echo, dual_stack=dual_stack)


async def roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, msg: bytes) -> bytes:
    w.write(msg)
    await w.drain()
    async with asyncio.timeout(10):
        return await r.readexactly(len(msg))


async def connection_ends(r: asyncio.StreamReader, within: float = 10.0) -> bool:
    """True once the peer closed or reset the connection."""
    try:
        async with asyncio.timeout(within):
            while await r.read(65536):
                pass
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False
    return True


async def refused(pod: Pod, addr: tuple[str, int]) -> bool:
    """Does a connection from `pod` to addr fail (refused/reset, or closed before any byte
    of an echo round trip)?"""
    try:
        r, w = await pod_socket_connect(pod, addr, within=5)
    except (ConnectionError, OSError, TimeoutError):
        return True
    try:
        w.write(b"ping")
        await w.drain()
        async with asyncio.timeout(5):
            data = await r.read(4)
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False
    finally:
        w.close()
    return data == b""
