"""CPU time and memory of benchmark processes, read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStats:
    cpu_seconds: float  # user + system
    rss_kb: int  # now
    peak_rss_kb: int  # high-water mark (VmHWM)


def read(pid: int) -> ProcStats:
    """The process's CPU time so far and its current and peak resident memory."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    rss = peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return ProcStats(cpu, rss, peak)


def reset_peak(pid: int) -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so a peak covers one phase."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def raise_open_file_limit(wanted: int = 20_000) -> int:
    """Raises this process's soft open-file limit towards ``wanted`` (capped by the
    hard limit); children inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft
