"""A delta ADS server for tests (grpc.aio, in-process), speaking delta xDS as istiod does for
ztunnel (XDS.md §2-3): wildcard subscriptions, a first response per type computed from
`initial_resource_versions` (only changed resources, removed names for the ones it no longer
has), pushes, and a record of every request (ACKs/NACKs)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from ketch.mesh import Authorization, Service, Workload
from ketch.util.tasks import spawn
from ketch.ztunnel.xds_state import ADDRESS_TYPE, AUTHORIZATION_TYPE
from tests.unit.ztunnel.xds_standin import encode

Obj = Workload | Service | Authorization


def name_of(o: Obj) -> str:
    return o.uid if isinstance(o, Workload) else o.key


def v(objs: dict[Obj, str]) -> dict[str, tuple[str, Any]]:
    """{object: version} -> what `FakeAds.push` takes."""
    return {name_of(o): (ver, encode(o)) for o, ver in objs.items()}


class FakeAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """A delta ADS server: resources by type -> name -> (version, Any)."""

    def __init__(self, objs: dict[Obj, str]) -> None:
        self.resources: dict[str, dict[str, tuple[str, Any]]] = {
            ADDRESS_TYPE: {},
            AUTHORIZATION_TYPE: {},
        }
        for o, v in objs.items():
            a = encode(o)
            self.resources[a.type_url][name_of(o)] = (v, a)
        self.requests: list[Any] = []
        self.sent: list[Any] = []
        self._streams: list[asyncio.Queue[Any]] = []
        self._nonces = itertools.count(1)

    def _response(self, type_url: str, names: list[str], removed: list[str]) -> Any:
        mine = self.resources[type_url]
        return discovery_pb2.DeltaDiscoveryResponse(
            type_url=type_url,
            nonce=f"n{next(self._nonces)}",
            resources=[
                discovery_pb2.Resource(name=n, version=mine[n][0], resource=mine[n][1])
                for n in names
            ],
            removed_resources=removed,
        )

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        out: asyncio.Queue[Any] = asyncio.Queue()
        self._streams.append(out)

        async def read() -> None:
            async for req in request_iterator:
                self.requests.append(req)
                if not req.response_nonce:  # a first request: answer from what it holds
                    held = dict(req.initial_resource_versions)
                    mine = self.resources[req.type_url]
                    changed = [n for n, (v, _) in mine.items() if held.get(n) != v]
                    gone = [n for n in held if n not in mine]
                    out.put_nowait(self._response(req.type_url, changed, gone))

        reader = spawn(read(), name="fake-ads-reader")
        try:
            while (resp := await out.get()) is not None:
                self.sent.append(resp)
                yield resp
        finally:
            reader.cancel()
            self._streams.remove(out)

    def push(
        self, type_url: str, upserts: dict[str, tuple[str, Any]], removed: list[str] = ()
    ) -> str:
        """Change resources and send the delta on every stream; returns the nonce."""
        mine = self.resources[type_url]
        for n in removed:
            mine.pop(n, None)
        mine.update(upserts)
        resp = self._response(type_url, list(upserts), list(removed))
        for q in self._streams:
            q.put_nowait(resp)
        return str(resp.nonce)

    def end_streams(self) -> None:
        for q in self._streams:
            q.put_nowait(None)

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
