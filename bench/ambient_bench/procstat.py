"""CPU time and peak memory of proxy processes, from /proc.

CPU: utime + stime (fields 14 and 15 of /proc/PID/stat, in clock ticks) of the process;
these include every thread, also threads that already exited. Child processes a proxy may
start are included while they live (found through /proc/PID/task/*/children).
Memory: VmHWM of /proc/PID/status, the peak resident set size since the process started.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TICK = float(os.sysconf("SC_CLK_TCK"))  # clock ticks per second


class ProcessGone(RuntimeError):
    """A measured proxy process exited during the benchmark."""


def _descendants(pid: int) -> list[int]:
    out = [pid]
    i = 0
    while i < len(out):
        for task in Path(f"/proc/{out[i]}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the task exited meanwhile
                out.extend(int(c) for c in task.read_text().split())
        i += 1
    return out


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (index 0 is field 3, the state)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat[stat.rindex(")") + 2 :].split()


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds in user and in kernel mode (the kernel part includes the network work,
    softirqs included, done while the process was on the CPU)."""

    user: float = 0.0
    system: float = 0.0

    @property
    def total(self) -> float:
        return self.user + self.system

    def __add__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user + other.user, self.system + other.system)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user - other.user, self.system - other.system)


def _cpu_of(pid: int) -> CpuTimes:
    fields = _stat_fields(pid)
    return CpuTimes(int(fields[11]) / TICK, int(fields[12]) / TICK)  # utime, stime (14, 15)


def cpu_times(pid: int) -> CpuTimes:
    """utime and stime of `pid` and its live descendants."""
    total = CpuTimes()
    for i, p in enumerate(_descendants(pid)):
        try:
            total += _cpu_of(p)
        except (OSError, ValueError) as exc:
            if i == 0:
                raise ProcessGone(f"process {pid} is gone") from exc
    return total


def total_cpu_times(pids: Iterable[int]) -> CpuTimes:
    return sum((cpu_times(p) for p in pids), CpuTimes())


_PF_KTHREAD = 0x00200000


def others_cpu(exclude_tree: int) -> dict[int, float]:
    """CPU seconds so far (utime+stime+cutime+cstime: reaped children included) of every
    user-space process outside the process tree rooted at `exclude_tree`. Two snapshots
    tell how much of the machine something else used meanwhile (`others_cpu_between`)."""
    ours = set(_descendants(exclude_tree))
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            fields = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(fields[6]) & _PF_KTHREAD:  # flags (field 9): kernel threads do our work too
            continue
        out[int(entry.name)] = sum(int(f) for f in fields[11:15]) / TICK
    return out


def others_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def _status_bytes(pid: int, key: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise ProcessGone(f"process {pid} is gone") from exc
    for line in status.splitlines():
        if line.startswith(f"{key}:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    raise ProcessGone(f"process {pid} has no {key} (a zombie?)")


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of `pid`: its own peak RSS since it started (children are not added)."""
    return _status_bytes(pid, "VmHWM")


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid`: its resident set size now."""
    return _status_bytes(pid, "VmRSS")
