"""HBONE microbenchmark on loopback: plain TCP relay vs an HBONE tunnel.

Topology (all on 127.0.0.1; backend and proxy each in their own process, the client is
blocking sockets in this process):

    direct:         client -> backend
    tcp-relay:      client -> [relay] -> backend
    tcp-relay x2:   client -> [relay -> relay] -> backend     (same hop count as HBONE)
    hbone:          client -> [outbound relay -> HBONE mTLS h2 -> inbound relay] -> backend
    hbone-streams:  the same, relaying with two coroutines per tunnel instead of the
                    callback splice (`relay()`'s fallback), to show what the splice buys

Measures 1-byte request/response latency (mean, p50, p99) and bulk upload throughput.
A second part measures the framing layer alone (sans-IO, no sockets): this package's
`HboneConnection` against the `h2` library moving the same DATA.

    uv run python bench/hbone_micro.py [--uvloop] [--rr 3000] [--mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import socket
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from ketch.identity.ca import CertificateAuthority
from ketch.identity.spiffe import SpiffeId
from ketch.ztunnel.hbone import proto, tls
from ketch.ztunnel.hbone.pool import HboneClientPool, PoolKey
from ketch.ztunnel.hbone.server import HboneServer, IncomingConnect
from ketch.ztunnel.hbone.sysalloc import tune_malloc
from ketch.ztunnel.hbone.tcp_relay import _relay_streams, relay
from ketch.ztunnel.hbone.tunnel import Tunnel

TD = "cluster.local"


def _listen() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def _run(main: Callable[[], Any], use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# --------------------------------------------------------------------------- backend


class _Echo(asyncio.Protocol):
    """Echoes small requests; for bulk, counts bytes and answers the count at EOF."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.t = cast(asyncio.Transport, transport)
        self.n = 0
        self.echo = False

    def data_received(self, data: bytes) -> None:
        if self.n == 0:
            self.echo = data[:1] == b"x"  # round-trip connections send "x", bulk sends 0xab
        self.n += len(data)
        if self.echo:
            self.t.write(data)

    def eof_received(self) -> bool:
        self.t.write(b"%d\n" % self.n)
        self.t.close()
        return True


def backend_main(conn: Connection, use_uvloop: bool) -> None:

    async def main() -> None:
        sock = _listen()
        srv = await asyncio.get_running_loop().create_server(_Echo, sock=sock)
        conn.send(sock.getsockname())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        srv.close()

    _run(main, use_uvloop)


# --------------------------------------------------------------------------- proxies


async def _tcp_relay(listen: socket.socket, target: tuple[str, int]) -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(256 * 1024):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof() and not dst.transport.is_closing():
                with contextlib.suppress(OSError):
                    dst.write_eof()

        await asyncio.gather(copy(r, uw), copy(ur, w))
        w.close()
        uw.close()

    return await asyncio.start_server(handle, sock=listen)


def proxy_main(
    conn: Connection, mode: str, backend: tuple[str, int], use_uvloop: bool, malloc: bool = True
) -> None:
    if malloc:
        tune_malloc()

    async def main() -> None:
        front = _listen()
        if mode == "tcp-relay":
            await _tcp_relay(front, backend)
        elif mode == "tcp-relay-x2":
            mid = _listen()
            await _tcp_relay(mid, backend)
            await _tcp_relay(front, mid.getsockname())
        else:
            ca = CertificateAuthority.create(TD)
            cid, sid = SpiffeId(TD, "a", "client"), SpiffeId(TD, "b", "server")
            ccert = tls.WorkloadCert.of(ca.issue_workload(cid))
            scert = tls.WorkloadCert.of(ca.issue_workload(sid))

            streams = mode == "hbone-streams"  # coroutine-per-direction copy, for comparison

            async def copy(t: Tunnel, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if streams:
                    await _relay_streams(t, r, w, chunk_size=256 * 1024)
                else:
                    await relay(t, r, w)

            async def inbound(inc: IncomingConnect) -> None:
                r, w = await asyncio.open_connection(*backend)
                await copy(inc.accept(), r, w)

            hsock = _listen()
            hserver = HboneServer(hsock, tls.server_context(scert, ca.trust_bundle), TD, inbound)
            await hserver.start()
            cctx = tls.client_context(ccert, ca.trust_bundle)
            pool = HboneClientPool(lambda _i: cctx)
            key = PoolKey(cid, (sid,), hserver.address)
            authority = f"{backend[0]}:{backend[1]}"

            async def outbound(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                t = await pool.open(key, authority)
                await copy(t, r, w)

            await asyncio.start_server(outbound, sock=front)
        conn.send(front.getsockname())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    _run(main, use_uvloop)


# --------------------------------------------------------------------------- client


def measure(addr: tuple[str, int], rr: int, mib: int) -> dict[str, float]:
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(200):  # warm-up
        s.sendall(b"x")
        s.recv(16)
    lat = []
    for _ in range(rr):
        t0 = time.perf_counter()
        s.sendall(b"x")
        if not s.recv(16):
            raise RuntimeError("closed")
        lat.append(time.perf_counter() - t0)
    s.close()
    lat.sort()

    bulk = socket.create_connection(addr)
    chunk = b"\xab" * (1024 * 1024)
    t0 = time.perf_counter()
    for _ in range(mib):
        bulk.sendall(chunk)
    bulk.shutdown(socket.SHUT_WR)
    reply = b""
    while data := bulk.recv(64):
        reply += data
    elapsed = time.perf_counter() - t0
    bulk.close()
    if int(reply) != mib * 1024 * 1024:
        raise RuntimeError(f"backend counted {reply!r}")
    return {
        "mean_us": statistics.fmean(lat) * 1e6,
        "p50_us": lat[len(lat) // 2] * 1e6,
        "p99_us": lat[int(len(lat) * 0.99)] * 1e6,
        "mib_s": mib / elapsed,
    }


def run_mode(mode: str, backend: tuple[str, int], args: argparse.Namespace) -> dict[str, float]:
    if mode == "direct":
        return measure(backend, args.rr, args.mib)
    parent, child = mp.Pipe()
    p = mp.Process(
        target=proxy_main, args=(child, mode, backend, args.uvloop, not args.no_tune_malloc)
    )
    p.start()
    try:
        addr = parent.recv()
        return measure(addr, args.rr, args.mib)
    finally:
        parent.send("stop")
        p.join(10)
        if p.is_alive():
            p.kill()


# --------------------------------------------------------------------------- framing only


def framing(mib: int, small: int) -> dict[str, dict[str, float]]:
    """CPU cost of the framing layer: client sends, server receives and acks, in memory."""
    import h2.config
    import h2.connection
    import h2.events

    payload = b"\xcd" * (256 * 1024)
    out: dict[str, dict[str, float]] = {}

    # ours
    c, s = proto.HboneConnection(proto.Role.CLIENT), proto.HboneConnection(proto.Role.SERVER)
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    sid = c.connect("10.0.0.1:80")
    s.receive_data(c.data_to_send())
    s.respond(sid, 200)
    c.receive_data(s.data_to_send())
    t0 = time.perf_counter()
    for _ in range(mib * 4):
        c.send_data(sid, payload)
        for e in s.receive_data(c.data_to_send()):
            if isinstance(e, proto.Data):
                s.ack_data(e.stream_id, len(e.data))
        c.receive_data(s.data_to_send())
    bulk = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(small):
        c.send_data(sid, b"x")
        for e in s.receive_data(c.data_to_send()):
            if isinstance(e, proto.Data):
                s.ack_data(e.stream_id, len(e.data))
        c.receive_data(s.data_to_send())
    out["ketch hbone.proto"] = {
        "mib_s": mib / bulk,
        "us_per_msg": (time.perf_counter() - t0) / small * 1e6,
    }

    # h2
    hc = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    hs = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
    )
    hc.initiate_connection()
    hs.initiate_connection()
    hc.update_settings(
        {
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 1024 * 1024,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024,
        }
    )
    hs.update_settings(
        {
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 1024 * 1024,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 * 1024 * 1024,
        }
    )
    hs.increment_flow_control_window(16 * 1024 * 1024 - 65535)
    hs.receive_data(hc.data_to_send())
    hc.receive_data(hs.data_to_send())
    hs.receive_data(hc.data_to_send())
    hc.send_headers(1, [(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    hs.receive_data(hc.data_to_send())
    hs.send_headers(1, [(":status", "200")])
    hc.receive_data(hs.data_to_send())

    def h2_send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), hc.local_flow_control_window(1), hc.max_outbound_frame_size)
            hc.send_data(1, view[:n].tobytes())
            view = view[n:]
            for e in hs.receive_data(hc.data_to_send()):
                if isinstance(e, h2.events.DataReceived):
                    hs.acknowledge_received_data(e.flow_controlled_length, 1)
            hc.receive_data(hs.data_to_send())

    t0 = time.perf_counter()
    for _ in range(mib * 4):
        h2_send(payload)
    bulk = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(small):
        h2_send(b"x")
    out["h2 4.x (default config)"] = {
        "mib_s": mib / bulk,
        "us_per_msg": (time.perf_counter() - t0) / small * 1e6,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--rr", type=int, default=3000, help="request/response round trips")
    ap.add_argument("--mib", type=int, default=256, help="MiB uploaded for throughput")
    ap.add_argument("--modes", default="direct,tcp-relay,tcp-relay-x2,hbone-streams,hbone")
    ap.add_argument("--no-tune-malloc", action="store_true", help="leave glibc malloc defaults")
    ap.add_argument("--no-framing", action="store_true", help="skip the sans-IO framing part")
    args = ap.parse_args()

    parent, child = mp.Pipe()
    bp = mp.Process(target=backend_main, args=(child, args.uvloop))
    bp.start()
    backend = parent.recv()
    try:
        loop_name = "uvloop" if args.uvloop else "asyncio"
        malloc = "default malloc" if args.no_tune_malloc else "tune_malloc()"
        print(f"\nloopback, {loop_name}, {malloc}, {args.rr} round trips, {args.mib} MiB upload\n")
        print("| path | RR mean µs | RR p50 µs | RR p99 µs | bulk MiB/s |")
        print("|---|---:|---:|---:|---:|")
        for mode in args.modes.split(","):
            r = run_mode(mode, backend, args)
            print(
                f"| {mode} | {r['mean_us']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} "
                f"| {r['mib_s']:.0f} |"
            )
            sys.stdout.flush()
    finally:
        parent.send("stop")
        bp.join(10)
        if bp.is_alive():
            bp.kill()

    if args.no_framing:
        return
    print("\nframing layer only (sans-IO, in memory, one stream)\n")
    print("| implementation | bulk MiB/s | 1-byte DATA µs/msg |")
    print("|---|---:|---:|")
    for name, r in framing(min(args.mib, 256), 20000).items():
        print(f"| {name} | {r['mib_s']:.0f} | {r['us_per_msg']:.1f} |")


if __name__ == "__main__":
    main()
