"""The node process (`ketch cluster node --node NAME`): every node-side role of one node.

`ketch up` starts it inside the node's network namespace. It runs, side by side on one
event loop, until SIGTERM:

    heartbeat      Node Ready=True every 10 s (ketch.cluster.nodes.Heartbeat)
    kubelet        pods bound to this node as processes   (ketch.cluster.kubelet.Kubelet)
    service-proxy  Service VIPs as nftables rules          (ketch.cluster.services.ServiceProxy)
    dns            cluster DNS on 10.96.0.10:53            (ketch.cluster.dns.ClusterDns)

Each role is built by a factory and has `async run(stop)`. A role that raises or returns
early is logged and started again (a fresh instance) after a back-off of 1 s doubling to 30 s:
one role's bug never takes the node down. On SIGTERM `stop` is set and every role cleans up
what it owns before the process exits. With the mesh, the kubelet posts each new pod to the
node agent's CNI-event socket before starting its containers (`cni_socket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ketch.cluster.dns import ClusterDns
from ketch.cluster.kubelet import Kubelet
from ketch.cluster.layout import ClusterLayout
from ketch.cluster.nodes import Heartbeat
from ketch.cluster.services import ServiceProxy
from ketch.netns.enter import NETNS_RUN_DIR, current_netns_id
from ketch.store import Store
from ketch.util.tasks import spawn

log = logging.getLogger("ketch.cluster.node")

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


class Runner(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


Factory = Callable[[], Runner]


class NodeProcessError(Exception):
    """The node process cannot start; the message says why."""


def check_netns(layout: ClusterLayout, node_name: str) -> None:
    """Refuse to run outside the node's netns: the kubelet would make pod veths and the
    service proxy rules in whatever netns it runs in."""
    want = layout.node_netns(node_name)
    try:
        st = os.stat(f"{NETNS_RUN_DIR}/{want}")
    except FileNotFoundError:
        raise NodeProcessError(
            f"network namespace {want} does not exist: start nodes with `ketch up`"
        ) from None
    if current_netns_id() != (st.st_dev, st.st_ino):
        raise NodeProcessError(
            f"ketch cluster node --node {node_name} must run inside netns {want} "
            f"(`ketch up` starts it there; by hand: ip netns exec {want} ...)"
        )


async def supervise(
    name: str,
    factory: Factory,
    stop: asyncio.Event,
    *,
    backoff_start: float = BACKOFF_START,
    backoff_max: float = BACKOFF_MAX,
) -> None:
    """Run `factory().run(stop)` until `stop`; restart it (with back-off) when it raises
    or returns early."""
    delay = backoff_start
    while not stop.is_set():
        try:
            await factory().run(stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "role %s failed: %s: %s; restarting in %.0fs",
                name,
                type(exc).__name__,
                exc,
                delay,
                exc_info=exc,
            )
        else:
            if stop.is_set():
                return
            log.error("role %s returned before the node stopped; restarting in %.0fs", name, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, backoff_max)


def default_roles(
    store: Store, layout: ClusterLayout, node_name: str, *, cni_socket: Path | None = None
) -> dict[str, Factory]:
    """The node's roles besides the heartbeat: kubelet, service VIPs, cluster DNS."""
    return {
        "kubelet": functools.partial(
            Kubelet, store, layout, node_name, cni_event_socket=cni_socket
        ),
        "service-proxy": functools.partial(ServiceProxy, store, layout, node_name),
        "dns": functools.partial(ClusterDns, store, layout, node_name),
    }


async def run_node(
    store: Store,
    layout: ClusterLayout,
    node_name: str,
    stop: asyncio.Event,
    *,
    cni_socket: Path | None = None,
    roles: dict[str, Factory] | None = None,
) -> list[str]:
    """Run the heartbeat and the roles (default: `default_roles`) until `stop`; returns
    the role names that ran."""
    if roles is None:
        roles = default_roles(store, layout, node_name, cni_socket=cni_socket)
    factories: dict[str, Factory] = {"heartbeat": lambda: Heartbeat(store, node_name)}
    factories.update(roles)
    log.info("node %s: running %s", node_name, ", ".join(factories))
    tasks = [
        spawn(supervise(name, f, stop), f"node-{node_name}-{name}") for name, f in factories.items()
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    log.info("node %s stopped", node_name)
    return list(factories)
