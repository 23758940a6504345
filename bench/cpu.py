"""CPU placement and accounting: where each process runs, and how busy it kept the cores.

Every proxy compared in a run gets the same placement, and each run records the CPU the
servers used, so a reader can tell a saturated proxy from a saturated load tool.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuPlan:
    """Which cores the load tool, the backends and the proxy under test run on.

    None means unpinned. The proxy is kept off the load tool's core whenever the machine
    has a core to spare, so the proxy's budget is exactly `proxy_cores` cores.
    """

    load: str | None
    backends: str | None
    proxy: str | None
    proxy_cores: int

    def describe(self) -> dict[str, object]:
        return {
            "load_tool_cpus": self.load or "unpinned",
            "backend_cpus": self.backends or "unpinned",
            "proxy_cpus": self.proxy or "unpinned",
            "proxy_cpu_budget": self.proxy_cores,
            "cpu_count": len(os.sched_getaffinity(0)),
        }


def plan_cpus(proxy_cores: int) -> CpuPlan:
    """Load tool and backends together on the first core, the proxy on the next ones.

    Every proxy compared in a run gets the plan for the same budget, so the placement
    never favours one of them; with 4+ cores the backends get a core of their own.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cpus) < 2:
        return CpuPlan(None, None, None, proxy_cores)

    def cpu_list(items: Sequence[int]) -> str:
        return ",".join(str(cpu) for cpu in items)

    if len(cpus) >= proxy_cores + 2:
        return CpuPlan(str(cpus[0]), str(cpus[1]), cpu_list(cpus[2 : 2 + proxy_cores]), proxy_cores)
    if proxy_cores < len(cpus):
        return CpuPlan(str(cpus[0]), str(cpus[0]), cpu_list(cpus[1 : 1 + proxy_cores]), proxy_cores)
    # The proxy's budget is the whole machine: it shares cores with the load side.
    return CpuPlan(str(cpus[0]), str(cpus[0]), cpu_list(cpus[:proxy_cores]), proxy_cores)


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


class CpuMeter:
    """CPU use over one load run: each core's busy %, and the servers' CPU %.

    A proxy far below 100% of its budget while the load core is saturated means the
    run measured the load side, not the proxy; the numbers go into params to show it.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._started = 0.0
        self._cpu_start = 0.0
        self.core_busy_pct: list[float] = []
        self.process_pct: float | None = None

    def __enter__(self) -> CpuMeter:
        psutil.cpu_percent(percpu=True)
        self._started = time.monotonic()
        self._cpu_start = self._cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.core_busy_pct = [round(p, 1) for p in psutil.cpu_percent(percpu=True)]
        elapsed = time.monotonic() - self._started
        if self._pids and elapsed > 0:
            self.process_pct = round((self._cpu_s() - self._cpu_start) / elapsed * 100, 1)

    def _cpu_s(self) -> float:
        total = 0.0
        for pid in self._pids:
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    times = proc.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                continue
        return total
