"""One enrolled pod as the node proxy holds it (`PodRuntime`), and what the listeners need
from the proxy (`ProxyContext`).

The listeners (`outbound`, `inbound`, `inbound_passthrough`) import this module, never
`proxy.py`; `proxy.py` composes them. That keeps the imports one-way: proxy -> listeners ->
pod.
"""

from __future__ import annotations

import asyncio
import enum
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

from ketch.identity.spiffe import SpiffeId
from ketch.mesh import IpAddr, Workload
from ketch.netns import pod_connect
from ketch.ztunnel.connections import ConnectionTracker
from ketch.ztunnel.hbone import HboneClientPool, HboneServer
from ketch.ztunnel.identity import IdentityContexts
from ketch.ztunnel.metrics import ZtunnelMetrics
from ketch.ztunnel.state import ProxyState
from ketch.ztunnel.telemetry import AccessLogRecord

READY_WAIT = 15.0  # how long a connection waits for its pod's certificate/config


class ProxyContext(Protocol):
    """The node proxy as its listeners see it."""

    @property
    def state(self) -> ProxyState: ...

    metrics: ZtunnelMetrics
    tracker: ConnectionTracker
    identities: IdentityContexts
    spoof_source: bool
    connect_timeout: float

    def log_access(self, rec: AccessLogRecord) -> None: ...


@dataclass(frozen=True)
class PodHandle:
    """A pod the node agent enrolled: identity fields and an open fd of its network
    namespace (the proxy owns the fd from `add_pod` on)."""

    uid: str
    name: str
    namespace: str
    service_account: str
    netns_fd: int


class PodPhase(enum.Enum):
    WAITING_CONFIG = "waiting_for_workload"  # no Workload in state matches the pod yet
    WAITING_CERT = "waiting_for_certificate"
    READY = "ready"
    REMOVED = "removed"


@dataclass(eq=False)
class PodRuntime:
    """Everything the proxy holds for one pod. Listeners read `workload` and `identity`."""

    handle: PodHandle
    listeners: dict[int, socket.socket] = field(default_factory=dict)
    workload: Workload | None = None
    identity: SpiffeId | None = None
    phase: PodPhase = PodPhase.WAITING_CONFIG
    error: str = ""
    servers: list[asyncio.Server] = field(default_factory=list)
    hbone: HboneServer | None = None
    pool: HboneClientPool | None = None
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    config_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return self.handle.uid

    @property
    def netns(self) -> int:
        return self.handle.netns_fd

    @property
    def ready(self) -> bool:
        return self.phase is PodPhase.READY

    def ip_for(self, family: int = 4) -> IpAddr | None:
        return self.workload.address_for(family) if self.workload else None

    async def wait_ready(self, within: float = READY_WAIT) -> bool:
        if self.phase is PodPhase.READY:
            return True
        try:
            async with asyncio.timeout(within):
                await self.ready_event.wait()
        except TimeoutError:
            return False
        return self.ready

    def describe(self) -> dict[str, Any]:
        h = self.handle
        return {
            "uid": h.uid,
            "name": h.name,
            "namespace": h.namespace,
            "service_account": h.service_account,
            "workload": self.workload.key if self.workload else None,
            "addresses": [str(a) for a in self.workload.addresses] if self.workload else [],
            "identity": self.identity.uri if self.identity else None,
            "state": self.phase.value,
            "error": self.error or None,
            "listeners": sorted(self.listeners),
        }


async def connect_app(
    zt: ProxyContext, pod: PodRuntime, dst: tuple[IpAddr, int], client_ip: IpAddr
) -> socket.socket:
    """Connect to the app inside the pod netns, spoofing `client_ip` when enabled (the app
    then sees the real client address; the pod's mangle/table-100 rules route its replies
    back over lo to the proxy)."""
    addr = (str(dst[0]), dst[1])
    if zt.spoof_source and client_ip.version == dst[0].version and client_ip != dst[0]:
        return await pod_connect(
            pod.netns,
            addr,
            connect_timeout=zt.connect_timeout,
            transparent=True,
            source=(str(client_ip), 0),
        )
    return await pod_connect(pod.netns, addr, connect_timeout=zt.connect_timeout)
