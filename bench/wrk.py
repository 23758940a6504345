"""Load with wrk: one bounded run, closed loop or paced, reported as one parsed line.

A Lua `done()` prints the numbers as JSON, so nothing depends on wrk's human output.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import pinned
from bench.loopback import check_loopback
from bench.options import BenchError

_REPORT_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "max_us": %.0f, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# wrk waits `delay()` ms before each request. Every call claims the next slot of one
# evenly spaced timeline (monotonic clock via LuaJIT's ffi), so arrivals follow the
# fixed rate whatever the response times, as long as a connection is free for each slot.
_PACED_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval_ms = %(interval_ms).9f
local next_slot = nil
delay = function()
  local now = now_ms()
  if next_slot == nil then next_slot = now end
  next_slot = next_slot + interval_ms
  local wait = next_slot - now
  if wait <= 0 then return 0 end
  return math.floor(wait + 0.5)
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: completed requests, latency percentiles (ms) and errors by kind."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def parse_wrk_report(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("BENCH "):
            doc = json.loads(line.removeprefix("BENCH "))
            return WrkResult(
                requests=int(doc["requests"]),
                duration_s=doc["duration_us"] / 1e6,
                p50_ms=doc["p50_us"] / 1000,
                p90_ms=doc["p90_us"] / 1000,
                p99_ms=doc["p99_us"] / 1000,
                max_ms=doc["max_us"] / 1000,
                errors={k: int(doc[k]) for k in ("connect", "read", "write", "status", "timeout")},
            )
    raise BenchError(f"wrk printed no report line; its output was:\n{output[-2000:]}")


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: int,
    script_dir: Path,
    cpus: str | None,
    rate_rps: float | None = None,
) -> WrkResult:
    """One bounded wrk run (1 thread, keep-alive); paced at `rate_rps` if given."""
    check_loopback(url)
    if rate_rps is None:
        script = script_dir / "wrk-report.lua"
        script.write_text(_REPORT_LUA, encoding="utf-8")
    else:
        script = script_dir / "wrk-paced.lua"
        script.write_text(
            _PACED_LUA % {"interval_ms": 1000.0 / rate_rps} + _REPORT_LUA, encoding="utf-8"
        )
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s"]
    argv += ["-s", str(script), url]
    try:
        done = subprocess.run(
            pinned(argv, cpus), capture_output=True, text=True, timeout=duration_s + 30
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration_s + 30}s against {url}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}) against {url}:\n{done.stderr}")
    return parse_wrk_report(done.stdout)
