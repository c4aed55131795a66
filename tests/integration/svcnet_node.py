"""The svcnet half of a node process, for tests: ServiceProxy + ClusterDns against a store.

Run inside a node netns: `python svcnet_node.py STATE_DIR CLUSTER NODE [DNS_ADDRESS]`.
Stops (removing its nftables table) on SIGTERM. The real node process (`ketch cluster node`)
composes the same two objects with the kubelet and the heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from ketch.cluster.dns import ClusterDns
from ketch.cluster.layout import DNS_IP, ClusterLayout
from ketch.cluster.services import ServiceProxy
from ketch.store import SqliteStore


async def main(state_dir: Path, cluster: str, node: str, dns_address: str) -> None:
    layout = ClusterLayout(state_dir, cluster)
    store = SqliteStore(layout.store_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await asyncio.gather(
            ServiceProxy(store, layout, node).run(stop),
            ClusterDns(store, layout, node, address=dns_address).run(stop),
        )
    finally:
        store.close()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    address = sys.argv[4] if len(sys.argv) > 4 else str(DNS_IP)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], address))
