"""The load generators: netperf TCP_RR and iperf3, run inside a client pod, and their output.

Ports are fixed so the Envoy legs (which have no transparent capture) can have one listener
per port: netperf's control port 12865 and data port 40000 (netperf's test-specific `-P`),
iperf3's 5201 (control and data on the same port).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ketch.netns.fabric import Endpoint

NETPERF_CONTROL_PORT = 12865
NETPERF_DATA_PORT = 40000
IPERF_PORT = 5201
PORTS = (NETPERF_CONTROL_PORT, NETPERF_DATA_PORT, IPERF_PORT)

NETPERF_OUTPUT = "P50_LATENCY,P90_LATENCY,P99_LATENCY,THROUGHPUT"


class ToolError(RuntimeError):
    """A load generator failed or printed something unexpected."""


@dataclass(frozen=True)
class RequestResponse:
    p50_us: float
    p90_us: float
    p99_us: float
    transactions_per_s: float


@dataclass(frozen=True)
class Stream:
    bytes: int
    seconds: float
    gbit_per_s: float


def server_commands() -> list[list[str]]:
    """The server app of every leg: netserver (serially, no forking) and iperf3."""
    return [
        ["netserver", "-D", "-f", "-p", str(NETPERF_CONTROL_PORT)],
        ["iperf3", "-s", "-p", str(IPERF_PORT)],
    ]


def netperf_rr(
    client: Endpoint, target: str, seconds: float, test: str = "TCP_RR"
) -> RequestResponse:
    """1-byte request / 1-byte response for `seconds`: over one TCP connection (TCP_RR), or
    over a new connection per transaction (TCP_CRR: connection set-up included)."""
    argv = [
        "netperf",
        *("-P", "0", "-H", target, "-p", str(NETPERF_CONTROL_PORT)),
        *("-t", test, "-l", str(int(seconds))),
        "--",
        *("-r", "1,1", "-P", f",{NETPERF_DATA_PORT}", "-o", NETPERF_OUTPUT),
    ]
    proc = client.run(argv, timeout=seconds + 30, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise ToolError(
            f"netperf to {target} from {client.name} exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    try:
        p50, p90, p99, tps = (float(x) for x in lines[-1].split(","))
    except ValueError:
        raise ToolError(f"unexpected netperf output: {proc.stdout!r}") from None
    if tps <= 0:
        raise ToolError(f"netperf to {target} made no transactions: {proc.stdout!r}")
    return RequestResponse(p50, p90, p99, tps)


def iperf3(
    client: Endpoint, target: str, seconds: float, streams: int = 1, attempts: int = 5
) -> Stream:
    """Bulk TCP from client to server (`streams` parallel connections), as the receiver
    counted it. Retries while the server is still busy with the previous test."""
    argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(int(seconds)), "-J"]
    if streams > 1:
        argv += ["-P", str(streams)]
    last = ""
    for _ in range(attempts):
        proc = client.run(argv, timeout=seconds + 30, check=False)
        try:
            doc: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            doc = {"error": (proc.stderr or proc.stdout).strip()[-500:]}
        if "error" not in doc and proc.returncode == 0:
            received = doc["end"]["sum_received"]
            return Stream(
                int(received["bytes"]),
                float(received["seconds"]),
                float(received["bits_per_second"]) / 1e9,
            )
        last = str(doc.get("error"))
        if "busy" not in last:
            break
        time.sleep(1.0)
    raise ToolError(f"iperf3 -P {streams} to {target} from {client.name} failed: {last}")
