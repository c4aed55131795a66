"""The node proxy as a delta-xDS client of the control plane (ztunnel's `src/xds/client.rs`).

One `DeltaAggregatedResources` stream (envoy ADS) carries the two types the node proxy
needs, both wildcard: `istio.workload.Address` (workloads and services) and
`istio.security.Authorization` (XDS.md §2).

- Target: `unix:/path/to.sock` (or a bare path) or `host:port`; TLS with the node
  certificate the identity client got when the node joined (`node_credentials`), or
  insecure for tests (`credentials=None`).
- Every stream begins with the session's initial requests, one per type, carrying
  `initial_resource_versions` (what this proxy holds) after a reconnect, so the control plane
  sends only what changed and names the ones gone.
- Every response is handed to the session (`on_response(resp, apply)`), which calls `apply`
  (`ketch.ztunnel.xds_state.StateApplier`) and returns the ACK or NACK to send. The proxy
  keeps its last good state while the control plane is away; nothing is cleared on a
  disconnect.
- Reconnect: a new channel per attempt after a backoff of 10 ms doubling up to 15 s, reset
  by a response; "normal" terminations (the server ended the stream, UNKNOWN, CANCELLED,
  DEADLINE_EXCEEDED, "transport is closing", GOAWAY) reconnect after 10 ms, as ztunnel.
- `synced`: a response of every type was ACKed (`ClientStream.ready()`: ztunnel's
  readiness `types_to_expect`; a response with a rejected resource does not count); it
  stays true across reconnects.

The per-stream protocol state (versions held, nonces, the ACK/NACK message
`"<name>: <reason>; ..."`) is `ketch.xds.session.ClientStream`, the `Node` is
`ketch.xds.node.ztunnel_node`; this module adds only the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc

from ketch.util.tasks import spawn
from ketch.xds import Apply, ClientStream, ztunnel_node

log = logging.getLogger("ketch.ztunnel.xds")

BACKOFF_INITIAL = 0.01
BACKOFF_MAX = 15.0
MAX_MESSAGE_BYTES = 200 * 1024 * 1024  # ztunnel's limit
SERVER_NAME = "ketch-control-plane"  # the control plane certificate's name (identity.client)

NORMAL_CODES = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
NORMAL_DETAILS = ("transport is closing", "GOAWAY")
_END_OF_REQUESTS = object()  # ends a stream's request iterator


class Backoff:
    """10 ms doubling to 15 s; `reset()` on progress; normal terminations wait the minimum."""

    def __init__(self, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def reset(self) -> None:
        self._next = self.initial

    def next(self, *, normal: bool = False) -> float:
        if normal:
            self.reset()
            return self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


def is_normal(err: grpc.aio.AioRpcError) -> bool:
    details = err.details() or ""
    return err.code() in NORMAL_CODES or any(d in details for d in NORMAL_DETAILS)


def node_credentials(
    trust_bundle_pem: bytes, node_key_pem: bytes, node_chain_pem: bytes
) -> grpc.ChannelCredentials:
    """mTLS with the node certificate (`identity.client.NodeCredentials`)."""
    return grpc.ssl_channel_credentials(trust_bundle_pem, node_key_pem, node_chain_pem)


def make_node(
    node_name: str, *, ip: str = "", namespace: str = "ketch-system", cluster_id: str = "Kubernetes"
) -> Node:
    """ztunnel's `Node` (`ketch.xds.ztunnel_node`): id
    `ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local` (Ketch's node proxy is not a pod: the
    node name stands in for the pod name) and metadata with `CLUSTER_ID` as ztunnel sends it."""
    return ztunnel_node(
        instance_ip=ip,
        pod_name=node_name,
        pod_namespace=namespace,
        node_name=node_name,
        meta={"CLUSTER_ID": cluster_id},
    )


def grpc_target(target: str) -> str:
    """`unix:/p`, `/p` (a unix socket) or `host:port` -> a gRPC target."""
    return f"unix:{target}" if target.startswith("/") else target


@dataclass
class XdsStats:
    connects: int = 0  # streams that got at least one response
    attempts: int = 0
    responses: int = 0
    nacks: int = 0
    last_error: str | None = None
    last_nack: str | None = None
    delays: list[float] = field(default_factory=list)  # the last few reconnect delays


class XdsClient:
    """See the module docstring. `start()` runs the stream in the background until
    `stop()`."""

    def __init__(
        self,
        target: str,
        session: ClientStream,
        apply: Apply,
        node: Node,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = SERVER_NAME,
        backoff: Backoff | None = None,
    ) -> None:
        self.target = grpc_target(target)
        self.session = session
        self.apply = apply
        self.node = node
        self.types = session.types
        self.stats = XdsStats()
        self.credentials = credentials  # may be replaced (node certificate renewed): next channel
        self._server_name = server_name
        self._backoff = backoff or Backoff()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._synced = asyncio.Event()

    # ------------------------------------------------------------------ status

    @property
    def synced(self) -> bool:
        """A response of every type has been ACKed (stays true afterwards)."""
        if not self._synced.is_set() and self.session.ready():
            self._synced.set()
        return self._synced.is_set()

    @property
    def connected(self) -> bool:
        """A stream is open and has had a response."""
        return self._connected

    def pending(self) -> list[str]:
        """ztunnel's readiness task name while not synced."""
        return [] if self.synced else ["state manager"]

    async def wait_synced(self) -> None:
        if not self.synced:
            await self._synced.wait()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._task is None:
            self._task = spawn(self._run(), name="ztunnel-xds")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            normal = await self._stream_once()
            delay = self._backoff.next(normal=normal)
            self.stats.delays = [*self.stats.delays[-9:], delay]
            await asyncio.sleep(delay)

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # our loop reconnects (a new channel per attempt); no retry inside grpc
            ("grpc.enable_retries", 0),
        ]
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=options)
        options += [
            ("grpc.ssl_target_name_override", self._server_name),
            ("grpc.default_authority", self._server_name),
        ]
        return grpc.aio.secure_channel(self.target, self.credentials, options=options)

    async def _stream_once(self) -> bool:
        """One stream, until it ends. True if it ended normally (reconnect at once)."""
        self.stats.attempts += 1
        outgoing: asyncio.Queue[Any] = asyncio.Queue()
        for req in self.session.initial_requests(self.node):
            outgoing.put_nowait(req)

        async def requests() -> AsyncIterator[Any]:
            while (req := await outgoing.get()) is not _END_OF_REQUESTS:
                yield req

        channel = self._channel()
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources(requests())
            async for response in call:
                if not self._connected:
                    self._connected = True
                    self.stats.connects += 1
                    log.info("xds: connected to %s", self.target)
                self._backoff.reset()
                self.stats.responses += 1
                was_synced = self._synced.is_set()
                ack = self.session.on_response(response, self.apply)
                if ack.HasField("error_detail"):
                    self.stats.nacks += 1
                    self.stats.last_nack = ack.error_detail.message
                outgoing.put_nowait(ack)
                if not was_synced and self.synced:
                    log.info("xds: synced (%s)", ", ".join(self.types))
            log.info("xds: %s ended the stream; reconnecting", self.target)
            self.stats.last_error = "stream ended by the server"
            return True
        except grpc.aio.AioRpcError as e:
            normal = is_normal(e)
            self.stats.last_error = f"{e.code().name}: {e.details()}"
            (log.info if normal else log.warning)(
                "xds: stream to %s failed (%s); keeping the last state, reconnecting",
                self.target,
                self.stats.last_error,
            )
            return normal
        except Exception as e:  # the session or apply failed: a protocol error, start over
            self.stats.last_error = f"{type(e).__name__}: {e}"
            log.exception("xds: stream to %s: %s; reconnecting", self.target, e)
            return False
        finally:
            self._connected = False
            # grpc stops reading the requests of a finished call without closing the
            # iterator: end it, or its reader task is left pending at every attempt
            outgoing.put_nowait(_END_OF_REQUESTS)
            await channel.close(None)
