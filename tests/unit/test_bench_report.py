"""The benchmark's arithmetic (bench/ambient_bench/report.py): per-round pairing, ratios,
added latency, spreads and peaks. The measuring itself runs only in `scripts/bench.sh`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from ambient_bench.procstat import CpuTimes
from ambient_bench.report import LegRound, Results, _spread


def _round(
    leg: str,
    n: int,
    p50: float,
    gbps: float,
    *,
    cpu: float | None = None,
    rss: dict[str, int] | None = None,
) -> LegRound:
    return LegRound(
        leg=leg,
        round=n,
        p50_us=p50,
        p90_us=p50 * 2,
        p99_us=p50 * 3,
        rr_tps=1e6 / p50,
        gbps_1=gbps,
        gbps_many=gbps / 2,
        bytes_1=2_000_000_000,
        cpu_1=CpuTimes(cpu * 0.25, cpu * 0.75) if cpu is not None else None,
        rss_bytes=rss or {},
    )


@pytest.fixture
def results() -> Results:
    res = Results(["direct", "ketch"], streams=64)
    for n, (d50, k50) in enumerate([(50, 130), (20, 120), (70, 140)], start=1):
        res.add(_round("direct", n, d50, 14.0))
        res.add(_round("ketch", n, k50, 7.0, cpu=4.0, rss={"client": n << 20, "server": 9 << 20}))
    res.add(_round("ketch", 4, 500, 1.0))  # a round without its direct: never paired
    return res


def test_ratios_and_added_are_per_round(results: Results) -> None:
    p50 = lambda r: r.p50_us  # noqa: E731
    assert results.added("ketch", p50) == [80, 100, 70]
    assert results.ratios("ketch", "direct", p50) == pytest.approx([2.6, 6.0, 2.0])
    assert results.ratios("ketch", "direct", lambda r: r.gbps_1) == [0.5, 0.5, 0.5]


def test_cpu_per_gb_and_peak_rss(results: Results) -> None:
    k = results.of("ketch")[0]
    assert k.cpu_s_per_gb == pytest.approx(2.0)  # 4 CPU-seconds over 2 GB
    assert k.user_s_per_gb == pytest.approx(0.5)
    assert results.of("direct")[0].cpu_s_per_gb is None
    assert results.peak_rss("ketch") == {"client": 3 << 20, "server": 9 << 20}


def test_spread_is_median_min_max() -> None:
    assert _spread([3.0, 1.0, 2.0], "{:.0f}") == "2 (1..3)"
    assert _spread([5.0], "{:.1f}") == "5.0"
    assert _spread([], "{:.0f}") == "-"
