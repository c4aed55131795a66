"""A delta ADS server for tests (grpc.aio, in-process) whose per-stream protocol is the real
`ketch.xds.session.ServerStream`, serving real `istio.workload.Address` /
`istio.security.Authorization` resources (`ketch.xds.convert`): wildcard subscriptions, a
first response per type computed from `initial_resource_versions`, pushes of the full
snapshot (the stream sends only what the client lacks and removes what it no longer has),
resends after a NACK, and a record of every request (ACKs/NACKs) and response."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import any_pb2

from ketch.mesh import Authorization, Service, Workload
from ketch.util.tasks import spawn
from ketch.xds import (
    ADDRESS_TYPE,
    AUTHORIZATION_TYPE,
    NODE_PROXY_TYPES,
    ServerStream,
    authorization_to_proto,
    resource_name,
    to_address,
    to_any,
)

Obj = Workload | Service | Authorization
Resources = dict[str, tuple[str, any_pb2.Any]]


def encode(o: Obj) -> any_pb2.Any:
    """A mesh object as the istio proto in an `Any`, as the control plane sends it."""
    if isinstance(o, Authorization):
        return to_any(authorization_to_proto(o))
    return to_any(to_address(o))


def type_of(o: Obj) -> str:
    return AUTHORIZATION_TYPE if isinstance(o, Authorization) else ADDRESS_TYPE


def v(objs: Mapping[Obj, str]) -> Resources:
    """{object: version} -> what `FakeAds.push` takes."""
    return {resource_name(o): (ver, encode(o)) for o, ver in objs.items()}


class _Stream:
    def __init__(self, nonces: Iterable[int]) -> None:
        counter = iter(nonces)
        self.session = ServerStream(NODE_PROXY_TYPES, nonces=lambda: f"n{next(counter)}")
        self.out: asyncio.Queue[Any] = asyncio.Queue()


class FakeAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """A delta ADS server: resources by type -> name -> (version, Any)."""

    def __init__(self, objs: Mapping[Obj, str]) -> None:
        self.resources: dict[str, Resources] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}
        for o, ver in objs.items():
            self.resources[type_of(o)][resource_name(o)] = (ver, encode(o))
        self.requests: list[Any] = []
        self.sent: list[Any] = []
        self._streams: list[_Stream] = []
        self._nonces = itertools.count(1)

    def _answer(self, stream: _Stream, type_url: str) -> str:
        resp = stream.session.respond(type_url, self.resources[type_url], full=True)
        if resp is None:
            return ""
        stream.out.put_nowait(resp)
        return str(resp.nonce)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        stream = _Stream(self._nonces)
        self._streams.append(stream)

        async def read() -> None:
            async for req in request_iterator:
                self.requests.append(req)
                for t in stream.session.on_request(req):
                    self._answer(stream, t)

        reader = spawn(read(), name="fake-ads-reader")
        try:
            while (resp := await stream.out.get()) is not None:
                self.sent.append(resp)
                yield resp
        finally:
            reader.cancel()
            self._streams.remove(stream)

    def push(self, type_url: str, upserts: Resources, removed: Iterable[str] = ()) -> str:
        """Change resources and push the new snapshot on every stream; returns the nonce of
        the (last) response sent, "" if no client needed one."""
        mine = self.resources[type_url]
        for n in removed:
            mine.pop(n, None)
        mine.update(upserts)
        nonce = ""
        for stream in self._streams:
            nonce = self._answer(stream, type_url) or nonce
        return nonce

    def end_streams(self) -> None:
        for stream in self._streams:
            stream.out.put_nowait(None)

    def answer_to(self, nonce: str) -> Any | None:
        return next((r for r in self.requests if r.response_nonce == nonce), None)


async def serve(fake: FakeAds, sock: Path, creds: grpc.ServerCredentials | None = None) -> Any:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(fake, server)
    if creds is None:
        server.add_insecure_port(f"unix:{sock}")
    else:
        server.add_secure_port(f"unix:{sock}", creds)
    await server.start()
    return server
