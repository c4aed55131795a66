"""Figures of one run and their markdown tables.

Every figure is reported as the median over rounds with the spread (min..max). Ratios to
`direct` are taken within each round (leg / direct of the same round), then the median of
those ratios is reported, so slow drifts of the machine cancel out.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ambient_bench.procstat import CpuTimes

MIB = 1024 * 1024


@dataclass(frozen=True)
class LegRound:
    """What one leg measured in one round."""

    leg: str
    round: int
    p50_us: float
    p90_us: float
    p99_us: float
    rr_tps: float
    gbps_1: float
    gbps_many: float
    bytes_1: int  # received during the single-stream run
    cpu_1: CpuTimes | None  # proxy CPU during the single-stream run (None: no proxy)
    rss_bytes: dict[str, int] = field(default_factory=dict)  # side -> VmHWM after this leg
    crr_p50_us: float | None = None  # TCP_CRR: a new connection per transaction
    crr_tps: float | None = None

    def _per_gb(self, seconds: float | None) -> float | None:
        if seconds is None or self.bytes_1 <= 0:
            return None
        return seconds / (self.bytes_1 / 1e9)

    @property
    def cpu_s_per_gb(self) -> float | None:
        return self._per_gb(self.cpu_1.total if self.cpu_1 else None)

    @property
    def user_s_per_gb(self) -> float | None:
        return self._per_gb(self.cpu_1.user if self.cpu_1 else None)

    @property
    def sys_s_per_gb(self) -> float | None:
        return self._per_gb(self.cpu_1.system if self.cpu_1 else None)


Getter = Callable[[LegRound], float | None]

METRICS: list[tuple[str, Getter, str]] = [
    ("p50 µs", lambda r: r.p50_us, "{:.0f}"),
    ("p90 µs", lambda r: r.p90_us, "{:.0f}"),
    ("p99 µs", lambda r: r.p99_us, "{:.0f}"),
    ("RR trans/s", lambda r: r.rr_tps, "{:.0f}"),
    ("CRR p50 µs", lambda r: r.crr_p50_us, "{:.0f}"),
    ("CRR conn/s", lambda r: r.crr_tps, "{:.0f}"),
    ("1 stream Gbit/s", lambda r: r.gbps_1, "{:.2f}"),
    ("{streams} streams Gbit/s", lambda r: r.gbps_many, "{:.2f}"),
    ("proxy CPU s/GB", lambda r: r.cpu_s_per_gb, "{:.2f}"),
]

#: the proxy CPU split, shown in the per-round table
CPU_SPLIT: list[tuple[str, Getter, str]] = [
    ("user s/GB", lambda r: r.user_s_per_gb, "{:.2f}"),
    ("sys s/GB", lambda r: r.sys_s_per_gb, "{:.2f}"),
]

#: figures compared with `direct` as leg / direct (latency: > 1 is slower; rates: < 1 is slower)
RATIO_METRICS: list[tuple[str, Getter]] = [
    ("p50 x", lambda r: r.p50_us),
    ("p90 x", lambda r: r.p90_us),
    ("p99 x", lambda r: r.p99_us),
    ("RR trans/s x", lambda r: r.rr_tps),
    ("CRR conn/s x", lambda r: r.crr_tps),
    ("1 stream x", lambda r: r.gbps_1),
    ("{streams} streams x", lambda r: r.gbps_many),
]


def rss_cell(rss: Mapping[str, int]) -> str:
    """`client / server` in MiB (sides that have a proxy), or `-`."""
    return " / ".join(f"{rss[s] / MIB:.0f}" for s in ("client", "server") if s in rss) or "-"


def _spread(values: Sequence[float], fmt: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def _values(rounds: Sequence[LegRound], get: Getter) -> list[float]:
    return [v for r in rounds if (v := get(r)) is not None]


class Results:
    def __init__(self, legs: Sequence[str], streams: int) -> None:
        self.legs = list(legs)
        self.streams = streams  # parallel connections of the multi-stream test
        self.rounds: list[LegRound] = []

    def _heads(self, names: Iterable[str]) -> list[str]:
        return [n.format(streams=self.streams) for n in names]

    def add(self, r: LegRound) -> None:
        self.rounds.append(r)

    def of(self, leg: str) -> list[LegRound]:
        return [r for r in self.rounds if r.leg == leg]

    def _paired(self, leg: str, base: str) -> list[tuple[LegRound, LegRound]]:
        by_round = {r.round: r for r in self.of(base)}
        return [(r, by_round[r.round]) for r in self.of(leg) if r.round in by_round]

    def ratios(self, leg: str, base: str, get: Getter) -> list[float]:
        out = []
        for r, b in self._paired(leg, base):
            v, bv = get(r), get(b)
            if v is not None and bv:
                out.append(v / bv)
        return out

    def added(self, leg: str, get: Getter, base: str = "direct") -> list[float]:
        out = []
        for r, b in self._paired(leg, base):
            v, bv = get(r), get(b)
            if v is not None and bv is not None:
                out.append(v - bv)
        return out

    def peak_rss(self, leg: str) -> dict[str, int]:
        """Per side, the largest VmHWM seen over the run (VmHWM is itself a peak)."""
        peak: dict[str, int] = {}
        for r in self.of(leg):
            for side, v in r.rss_bytes.items():
                peak[side] = max(peak.get(side, 0), v)
        return peak

    # ---- tables

    def absolute_table(self) -> str:
        head = [
            "leg",
            *self._heads(m[0] for m in METRICS),
            "of which user / sys",
            "peak RSS MiB client / server",
        ]
        rows = []
        for leg in self.legs:
            rs = self.of(leg)
            cells = [leg, *(_spread(_values(rs, get), fmt) for _, get, fmt in METRICS)]
            split = [_values(rs, get) for _, get, _ in CPU_SPLIT]
            cells.append(
                " / ".join(f"{statistics.median(v):.2f}" for v in split) if all(split) else "-"
            )
            cells.append(rss_cell(self.peak_rss(leg)))
            rows.append(cells)
        return _table(head, rows)

    def relative_table(self) -> str:
        head = ["leg", "added p50 µs", "added p99 µs", *self._heads(m[0] for m in RATIO_METRICS)]
        rows = []
        for leg in self.legs:
            if leg == "direct":
                continue
            cells = [
                leg,
                _spread(self.added(leg, lambda r: r.p50_us), "{:.0f}"),
                _spread(self.added(leg, lambda r: r.p99_us), "{:.0f}"),
            ]
            cells += [
                _spread(self.ratios(leg, "direct", get), "{:.2f}") for _, get in RATIO_METRICS
            ]
            rows.append(cells)
        return _table(head, rows)

    def versus_table(self, leg: str, others: Sequence[str]) -> str:
        """`leg` against each of `others`: ratios per round, then their median."""
        head = ["ratio", *(f"{leg} / {o}" for o in others)]

        def added_ratio(o: str) -> list[float]:
            a = self.added(leg, lambda r: r.p50_us)
            b = self.added(o, lambda r: r.p50_us)
            return [x / y for x, y in zip(a, b, strict=True) if y > 0]

        def rss_ratio(o: str) -> list[float]:
            mine, theirs = sum(self.peak_rss(leg).values()), sum(self.peak_rss(o).values())
            return [mine / theirs] if theirs else []

        lines: list[tuple[str, Callable[[str], list[float]]]] = [
            ("added p50 latency over direct", added_ratio),
            ("p50 latency", lambda o: self.ratios(leg, o, lambda r: r.p50_us)),
            ("RR trans/s", lambda o: self.ratios(leg, o, lambda r: r.rr_tps)),
            ("new connections/s (CRR)", lambda o: self.ratios(leg, o, lambda r: r.crr_tps)),
            ("1 stream throughput", lambda o: self.ratios(leg, o, lambda r: r.gbps_1)),
            (
                f"{self.streams} streams throughput",
                lambda o: self.ratios(leg, o, lambda r: r.gbps_many),
            ),
            ("proxy CPU per GB", lambda o: self.ratios(leg, o, lambda r: r.cpu_s_per_gb)),
            ("peak RSS (sum of both proxies)", rss_ratio),
        ]
        rows = [[name, *(_spread(fn(o), "{:.2f}") for o in others)] for name, fn in lines]
        return _table(head, rows)

    def raw_table(self) -> str:
        metrics = [*METRICS, *CPU_SPLIT]
        head = [
            "round",
            "leg",
            *self._heads(m[0] for m in metrics),
            "bytes (1 stream)",
            "RSS MiB c / s",
        ]
        rows = []
        for r in sorted(self.rounds, key=lambda r: r.round):
            cells = [str(r.round), r.leg]
            for _, get, fmt in metrics:
                v = get(r)
                cells.append("-" if v is None else fmt.format(v))
            cells.append(str(r.bytes_1))
            cells.append(rss_cell(r.rss_bytes))
            rows.append(cells)
        return _table(head, rows)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
