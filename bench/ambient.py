"""Data-path benchmark: Ketch's ambient path against plain TCP and two Envoy set-ups.

Four legs on one two-node netns fabric, each with its own client pod (node1) and server pod
(node2); see `ambient_bench/testbed.py` for the topology and docs/benchmark.md for the
method and results:

    direct       plain TCP, pod to pod, no redirection rules, no proxy
    ketch        Ketch ambient: in-pod redirection, `ketch ztunnel run` per node, HBONE
    envoy-hbone  a pair of Envoys tunnelling TCP in HTTP/2 CONNECT over mTLS (port 15008)
    envoy-mtls   a pair of Envoys doing plain mTLS TCP proxying (the sidecar path)

Rounds are interleaved (A B C D A B C D ...). Per leg and round: netperf TCP_RR (1-byte
request/response: p50/p90/p99 latency, transactions/s), netperf TCP_CRR (the same with a new
connection per transaction: p50, connections/s), iperf3 with one stream and with 64
parallel streams (Gbit/s), the leg's proxy CPU seconds per GB over the single-stream run
(utime+stime from /proc) and the proxies' peak RSS (VmHWM).

    scripts/bench.sh                      # full run (~15 minutes on 2 cores)
    scripts/bench.sh --quick              # smoke run (~1.5 minutes)
    uv run --frozen python bench/ambient.py --rounds 9 --seconds 15

Needs root (network namespaces). Prints a markdown report and writes it to
bench/results/<timestamp>.md. Everything it creates (namespaces, processes, a temporary
directory with the CA) is removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from ambient_bench import procstat, tools
from ambient_bench.report import LegRound, Results, rss_cell
from ambient_bench.testbed import ENVOY, KETCH, LEGS, Leg, SetupError, Testbed

from ketch.netns.fabric import Fabric, free_prefix

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Ketch ambient data-path benchmark (see docs/benchmark.md)."
    )
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument(
        "--seconds", type=int, default=8, help="duration of each netperf/iperf3 test (default 8)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds of 3-second tests (~2 minutes)"
    )
    ap.add_argument("--streams", type=int, default=64, help="parallel iperf3 streams (default 64)")
    ap.add_argument(
        "--envoy-concurrency",
        type=int,
        default=1,
        help="Envoy worker threads (default 1: one event loop, like a ketch process)",
    )
    ap.add_argument(
        "--ketch-ciphersuites",
        default="TLS_AES_128_GCM_SHA256",
        help="TLS 1.3 suites for the ketch processes (OpenSSL config), default "
        "TLS_AES_128_GCM_SHA256, what the Envoys negotiate; 'default' keeps OpenSSL's list",
    )
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where the report goes")
    ap.add_argument(
        "--keep-workdir", action="store_true", help="keep configs and proxy logs (temp dir)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 2, 3
    if args.rounds < 1 or args.seconds < 1 or args.streams < 1:
        ap.error("--rounds, --seconds and --streams must be at least 1")
    if args.ketch_ciphersuites == "default":
        args.ketch_ciphersuites = None
    return args


def _preflight() -> None:
    if os.geteuid() != 0:
        sys.exit("bench/ambient.py needs root (it creates network namespaces)")
    missing = [t for t in ("netperf", "netserver", "iperf3", "nsenter") if not shutil.which(t)]
    missing += [p for p in (ENVOY, KETCH) if not Path(p).exists()]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (run: KETCH_WITH_BENCH=1 bash scripts/install.sh)")
    probe = subprocess.run([KETCH, "ztunnel", "run", "--help"], capture_output=True, check=False)
    if probe.returncode != 0:
        sys.exit(f"`ketch ztunnel run` is not available: {probe.stderr.decode().strip()[-300:]}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def warm_up(leg: Leg, within: float = 60.0) -> None:
    """One short RR and stream test through the leg (pooled HBONE connections, certificates,
    ARP, Envoy's first upstream connections), retried until it works."""
    deadline = time.monotonic() + within
    while True:
        leg.check_alive()
        try:
            tools.netperf_rr(leg.client, leg.target, 1)
            tools.iperf3(leg.client, leg.target, 1)
            return
        except tools.ToolError as exc:
            if time.monotonic() > deadline:
                raise SetupError(
                    f"{leg.name} does not carry traffic: {exc}\n{leg.log_tails()}"
                ) from exc
            time.sleep(0.5)


def measure(leg: Leg, rnd: int, seconds: int, streams: int) -> LegRound:
    leg.check_alive()
    rr = tools.netperf_rr(leg.client, leg.target, seconds)
    crr = tools.netperf_rr(leg.client, leg.target, seconds, test="TCP_CRR")
    pids = [p.pid for p in leg.proxies]
    cpu_before = procstat.total_cpu_times(pids)
    one = tools.iperf3(leg.client, leg.target, seconds)
    cpu = procstat.total_cpu_times(pids) - cpu_before
    many = tools.iperf3(leg.client, leg.target, seconds, streams=streams)
    leg.check_alive()
    return LegRound(
        leg=leg.name,
        round=rnd,
        p50_us=rr.p50_us,
        p90_us=rr.p90_us,
        p99_us=rr.p99_us,
        rr_tps=rr.transactions_per_s,
        crr_p50_us=crr.p50_us,
        crr_tps=crr.transactions_per_s,
        gbps_1=one.gbit_per_s,
        gbps_many=many.gbit_per_s,
        bytes_1=one.bytes,
        cpu_1=cpu if pids else None,
        rss_bytes={p.side: procstat.peak_rss_bytes(p.pid) for p in leg.proxies},
    )


def _first_line(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return ((proc.stdout or proc.stderr).strip().splitlines() or ["?"])[0]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _ketch_revision() -> str:
    """The commit, plus a digest of uncommitted changes under src/ when there are any."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, check=False
        ).stdout

    rev = git("rev-parse", "--short", "HEAD").strip() or "?"
    changed = git("status", "--porcelain", "--untracked-files=all", "--", "src").splitlines()
    if not changed:
        return rev
    digest = hashlib.sha256(git("diff", "HEAD", "--", "src").encode())
    for line in changed:
        if line.startswith("??"):
            digest.update((ROOT / line[3:]).read_bytes())
    return f"{rev} + uncommitted changes in {len(changed)} src/ files (digest {digest.hexdigest()[:12]})"


def render(
    args: argparse.Namespace,
    results: Results,
    notes: list[str],
    started: datetime,
    wall: float,
    revision: str,
) -> str:
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    envoy_version = _first_line([ENVOY, "--version"]).rsplit("version: ", 1)[-1]
    setup = [
        f"- date: {started:%Y-%m-%d %H:%M} UTC; wall time {wall / 60:.1f} min",
        f"- machine: {os.cpu_count()} x {_cpu_model()}, {mem_kb / 1024 / 1024:.1f} GiB, "
        f"Linux {platform.release()}",
        f"- ketch {revision}, Python {platform.python_version()}; "
        f"Envoy {envoy_version}; {_first_line(['netperf', '-V'])}; "
        f"{_first_line(['iperf3', '--version'])}",
        f"- {args.rounds} rounds x {len(LEGS)} legs, interleaved; each test {args.seconds} s; "
        f"iperf3 -P {args.streams}; Envoy --concurrency {args.envoy_concurrency}; ketch "
        f"TLS 1.3 suites: {args.ketch_ciphersuites or 'OpenSSL default'}",
        *(f"- {n}" for n in notes),
    ]
    return "\n".join(
        [
            f"# Ketch ambient data-path benchmark, {started:%Y-%m-%d %H:%M} UTC",
            "",
            *setup,
            "",
            f"## Results: median (min..max) over {args.rounds} rounds",
            "",
            results.absolute_table(),
            "",
            "Proxy CPU: utime+stime of the leg's two proxy processes during the single-stream "
            "iperf3 run, per GB received (user / sys: medians of the two parts; sys includes "
            "the kernel's network work done while the proxy ran). Peak RSS: VmHWM of each "
            "proxy process, highest over the run.",
            "",
            "## Relative to direct: per-round difference / ratio, median (min..max)",
            "",
            results.relative_table(),
            "",
            "## ketch against the Envoy legs: per-round ratios, median (min..max)",
            "",
            results.versus_table("ketch", ["envoy-hbone", "envoy-mtls"]),
            "",
            "## Every round",
            "",
            results.raw_table(),
            "",
        ]
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _steal_seconds() -> float:
    """CPU time the hypervisor gave to others (all CPUs), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / procstat.TICK if len(fields) > 8 else 0.0


def run(args: argparse.Namespace) -> tuple[str, datetime]:
    started = datetime.now(UTC)
    load_before = _loadavg()
    revision = _ketch_revision()  # now: the proxies run the code of the start
    t0 = time.monotonic()
    prefix = free_prefix("kb")
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    fabric = Fabric(prefix)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        _say(f"ambient bench: fabric {prefix}, work dir {workdir}")
        bed = Testbed(
            fabric,
            workdir,
            envoy_concurrency=args.envoy_concurrency,
            ketch_ciphersuites=args.ketch_ciphersuites,
        )
        legs = bed.build()
        for leg in legs:
            warm_up(leg)
        if bed.ketch_mtls_connections() <= 0:
            raise SetupError("the ketch leg's connections did not arrive over HBONE (mTLS)")
        baseline = [
            f"{leg.name} proxies' VmRSS after warm-up, client / server MiB: "
            + rss_cell({p.side: procstat.rss_bytes(p.pid) for p in leg.proxies})
            for leg in legs
            if leg.proxies
        ]
        steal_before = _steal_seconds()
        others_before = procstat.others_cpu(os.getpid())
        rounds_started = time.monotonic()
        per_round = len(legs) * (3 * args.seconds + 3)
        _say(f"ready; {args.rounds} rounds of ~{per_round} s")
        results = Results(list(LEGS), args.streams)
        for rnd in range(1, args.rounds + 1):
            for leg in legs:
                r = measure(leg, rnd, args.seconds, args.streams)
                results.add(r)
                cpu = f"{r.cpu_s_per_gb:.2f} CPU s/GB" if r.cpu_s_per_gb is not None else ""
                _say(
                    f"[{rnd}/{args.rounds}] {leg.name:12} p50 {r.p50_us:5.0f} µs  "
                    f"p99 {r.p99_us:5.0f} µs  {r.rr_tps:6.0f} RR/s  1x {r.gbps_1:5.2f}  "
                    f"{args.streams}x {r.gbps_many:5.2f} Gbit/s  {cpu}"
                )
        steal = _steal_seconds() - steal_before
        others = procstat.others_cpu_between(others_before, procstat.others_cpu(os.getpid()))
        capacity = (time.monotonic() - rounds_started) * (os.cpu_count() or 1)
        notes = [
            f"during the rounds, processes outside the benchmark used {others:.1f} CPU s "
            f"({100 * others / capacity:.1f}% of the machine); hypervisor steal {steal:.1f} s; "
            f"load average at start {load_before}",
            *baseline,
            f"ketch: {bed.ketch_mtls_connections():.0f} connections arrived over HBONE "
            "(server-side node proxy's istio_tcp_connections_opened_total, mutual_tls)",
            *(
                f"{name} TLS: {bed.envoy_tls_summary(bed.legs[name])}"
                for name in ("envoy-hbone", "envoy-mtls")
            ),
        ]
        wall = time.monotonic() - t0
        return render(args, results, notes, started, wall, revision), started
    finally:
        _say("cleaning up")
        for sig in SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        try:
            fabric.close()
        finally:
            if args.keep_workdir:
                _say(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _preflight()
    try:
        report, started = run(args)
    except KeyboardInterrupt:
        _say("interrupted; cleaned up")
        return 130
    except (SetupError, tools.ToolError, procstat.ProcessGone) as exc:
        _say(f"ambient bench failed: {exc}")
        return 1
    print(report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{started:%Y%m%dT%H%M%SZ}.md"
    out.write_text(report)
    _say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
