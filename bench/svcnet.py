"""Service VIPs and cluster DNS at scale: how long rendering and loading the nftables
ruleset take, how long building the DNS view takes, and how many queries `answer` serves.

    sudo uv run --frozen python bench/svcnet.py [--services 1000 --endpoints 10]

Loading runs the real `nft -f` inside a throwaway network namespace (root needed; without
root only the pure parts are measured). A ServiceProxy's reaction to an endpoint change is
about: store watch poll (25 ms) + coalescing (50 ms) + render + nft load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import dns.message

from ketch.api.core import Service
from ketch.api.discovery import EndpointSlice
from ketch.cluster.dns import DnsView, answer
from ketch.cluster.services import delete_script, render


def objects(n_svc: int, n_ep: int) -> tuple[list[Service], list[EndpointSlice]]:
    services, slices = [], []
    for i in range(n_svc):
        ip = f"10.96.{(i + 100) // 250}.{(i + 100) % 250 + 1}"
        services.append(
            Service.model_validate(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": f"svc{i}", "namespace": f"ns{i % 20}"},
                    "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
                }
            )
        )
        slices.append(
            EndpointSlice.model_validate(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"svc{i}-x",
                        "namespace": f"ns{i % 20}",
                        "labels": {"kubernetes.io/service-name": f"svc{i}"},
                    },
                    "addressType": "IPv4",
                    "endpoints": [
                        {
                            "addresses": [
                                f"10.244.{(i * n_ep + k) // 250 % 250 + 1}.{(i * n_ep + k) % 250 + 2}"
                            ]
                        }
                        for k in range(n_ep)
                    ],
                    "ports": [{"name": "http", "port": 8080}],
                }
            )
        )
    return services, slices


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
    return out


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.1f} ms, max {max(xs) * 1000:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    services, slices = objects(args.services, args.endpoints)
    print(f"{args.services} services x {args.endpoints} endpoints")

    text = render(services, slices, node_pod_cidr="10.244.1.0/24")
    print(
        f"render: {ms(timed(lambda: render(services, slices), args.repeat))}; "
        f"{len(text.splitlines())} lines, {len(text) // 1024} KiB"
    )

    if os.geteuid() == 0:
        from ketch.netns.fabric import Fabric, free_prefix

        with Fabric(free_prefix("kbs")) as fab:
            node = fab.add_node("node1")
            load = timed(lambda: node.run(["nft", "-f", "-"], input=text, timeout=120), args.repeat)
            print(f"nft -f (replace the whole table): {ms(load)}")
            node.run(["nft", "-f", "-"], input=delete_script())
    else:
        print("nft -f: skipped (needs root for a network namespace)")

    view = DnsView.build(services, slices)
    print(f"DnsView.build: {ms(timed(lambda: DnsView.build(services, slices), args.repeat))}")
    queries = [
        dns.message.make_query(
            f"svc{i % args.services}.ns{i % args.services % 20}.svc.cluster.local", "A"
        )
        for i in range(5000)
    ]
    t = time.perf_counter()
    for q in queries:
        answer(q, view)
    dt = time.perf_counter() - t
    print(f"answer(): {len(queries) / dt:,.0f} queries/s (pure, one core, no sockets)")


if __name__ == "__main__":
    main()
