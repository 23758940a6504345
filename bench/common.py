"""What every benchmark shares: result rows, tools, processes, CPU placement, wrk.

Benchmarks compare yardarm with an established peer on the same machine in one run, so
the pieces that make two measurements comparable live here once: the same load tool and
parsing, the same pinning rules, the same row format.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypedDict
from urllib.parse import urlsplit

import psutil
from rich.table import Table

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "apt-get install -y haproxy nginx wrk"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
INVERTED = " (ratio inverted: peer/yardarm)"


class BenchError(Exception):
    """A benchmark cannot run, or its numbers cannot be trusted; the message says why."""


# -- result rows ----------------------------------------------------------------------


class Row(TypedDict):
    """One comparison: yardarm's value, the peer's, and yardarm/peer (higher is better)."""

    benchmark: str
    metric: str
    yardarm: float | None
    peer: str | None
    peer_value: float | None
    ratio: float | None
    params: dict[str, object]
    date: str


def make_row(
    benchmark: str,
    metric: str,
    value: float | None,
    *,
    params: Mapping[str, object],
    date: str,
    peer: str | None = None,
    peer_value: float | None = None,
    lower_is_better: bool = False,
    with_ratio: bool = True,
) -> Row:
    """A row whose ratio always reads "higher is better" for yardarm.

    For lower-is-better metrics the ratio is peer/yardarm and the metric name says so,
    so a reader never has to know which way a metric points.
    """
    ratio: float | None = None
    if with_ratio and peer is not None and value and peer_value:
        ratio = peer_value / value if lower_is_better else value / peer_value
    return Row(
        benchmark=benchmark,
        metric=metric + (INVERTED if lower_is_better and ratio is not None else ""),
        yardarm=_rounded(value),
        peer=peer,
        peer_value=_rounded(peer_value),
        ratio=None if ratio is None else round(ratio, 4),
        params=dict(params),
        date=date,
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def write_results(path: Path, rows: Sequence[Row]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=2) + "\n", encoding="utf-8")
    return path


def results_table(title: str, rows: Sequence[Row]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("setup")
    table.add_column("yardarm", justify="right")
    table.add_column("peer")
    table.add_column("peer value", justify="right")
    table.add_column("ratio (>1: yardarm better)", justify="right")
    for row in rows:
        table.add_row(
            row["metric"],
            str(row["params"].get("setup", "")),
            _cell(row["yardarm"]),
            row["peer"] or "-",
            _cell(row["peer_value"]),
            "-" if row["ratio"] is None else f"{row['ratio']:.3f}",
        )
    return table


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}"


# -- run options ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How long and how often to measure; `quick` trades trust for a short smoke run."""

    duration_s: int = 10
    warmup_s: int = 3
    runs: int = 3
    quick: bool = False
    profile: bool = False
    artifacts_dir: Path | None = None  # where extra files (profiles) go; None: keep none


# -- tools ----------------------------------------------------------------------------


def require_tools(names: Sequence[str], hint: str = INSTALL_HINT) -> dict[str, str]:
    """Absolute paths of the tools, or a BenchError naming the missing ones and the fix."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise BenchError(f"missing tool(s): {', '.join(missing)}. Install them with: {hint}")
    return {name: path for name, path in found.items() if path is not None}


def tool_version(argv: Sequence[str], pattern: str) -> str:
    """The first group of `pattern` in the tool's combined output (or "unknown")."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


# -- CPU placement --------------------------------------------------------------------


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


# -- processes ------------------------------------------------------------------------


@dataclass
class ManagedProcess:
    """A server the benchmark started in its own session, logging to a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group we created, then SIGKILL after `grace_s`."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(timeout=grace_s)
        self._log.close()

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cpus: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ManagedProcess:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        pinned(argv, cpus),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    return ManagedProcess(name, popen, log_path, log)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def check_loopback(url: str) -> None:
    """Refuse any target but 127.0.0.1: benchmarks never load another host."""
    if urlsplit(url).hostname != LOOPBACK:
        raise BenchError(f"refusing to send load to {url}: only {LOOPBACK} is allowed")


# Never through an HTTP proxy from the environment: traffic stays on loopback.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    check_loopback(url)
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http_ok(url: str, process: ManagedProcess, timeout_s: float = 60.0) -> None:
    """Wait for `url` to answer 200, failing fast (with the log) if the process died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchError(
                f"{process.name} exited with code {process.popen.returncode} before it was "
                f"ready; its log ({process.log_path}) ends with:\n{process.log_tail()}"
            )
        try:
            status, _ = http_get(url, timeout_s=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{process.name} did not answer 200 on {url} within {timeout_s:.0f}s (last: {last}); "
        f"its log ends with:\n{process.log_tail()}"
    )


def wait_listening(process: ManagedProcess, port: int, timeout_s: float = 60.0) -> None:
    """Wait until this very process listens on `port` (several may share it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise BenchError(
                f"{process.name} exited with code {process.popen.returncode} before it "
                f"listened on {port}; its log ends with:\n{process.log_tail()}"
            )
        try:
            sockets = psutil.Process(process.pid).net_connections(kind="tcp")
        except psutil.Error:
            sockets = []
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            return
        time.sleep(0.2)
    raise BenchError(f"{process.name} did not listen on {port} within {timeout_s:.0f}s")


# -- CPU accounting -------------------------------------------------------------------


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


# -- wrk ------------------------------------------------------------------------------

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


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- profiles -------------------------------------------------------------------------


def py_spy_command() -> list[str] | None:
    """How to run py-spy here: installed, or through uvx (fetched once, before sampling)."""
    if shutil.which("py-spy"):
        return ["py-spy"]
    if shutil.which("uvx"):
        subprocess.run(["uvx", "py-spy", "--version"], capture_output=True, timeout=180)
        return ["uvx", "py-spy"]
    return None


def profile_report(folded: str, title: str, top: int = 25) -> str:
    """Self time per package and per function, and inclusive time, from folded stacks.

    Reads `py-spy record --format raw --full-filenames` output: one `frame;frame;... N`
    line per distinct stack.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short_frame(frame) for frame in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        by_package[_package_of(stack.split(";")[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return f"{title}\n\npy-spy recorded no samples\n"

    def table(counter: Counter[str]) -> list[str]:
        return [f"{n / total * 100:6.1f}%  {n:6d}  {name}" for name, n in counter.most_common(top)]

    return "\n".join(
        [
            title,
            f"{total} samples",
            "",
            "self time by package:",
            *table(by_package),
            "",
            f"top {top} functions by self time:",
            *table(self_time),
            "",
            f"top {top} functions by inclusive time:",
            *table(inclusive),
            "",
        ]
    )


_PATH_MARKERS = ("site-packages/", "/src/", "/lib/python3.11/")
_NAMESPACE_PACKAGES = frozenset({"opentelemetry", "google"})


def _location(frame: str) -> str:
    start, end = frame.rfind(" ("), frame.rfind(")")
    return frame[start + 2 : end] if 0 <= start < end else ""


def _short_frame(frame: str) -> str:
    """`fn (/venv/lib/.../site-packages/aiohttp/x.py:12)` -> `fn (aiohttp/x.py:12)`."""
    location = _location(frame)
    short = location
    for marker in _PATH_MARKERS:
        if marker in short:
            short = short.rsplit(marker, 1)[1]
            break
    return frame.replace(location, short) if location else frame


def _package_of(frame: str) -> str:
    """The distribution a frame's code belongs to, or "stdlib (module)" for the stdlib."""
    path = _location(frame).rsplit(":", 1)[0]
    if "site-packages/" in path or "/src/" in path:
        marker = "site-packages/" if "site-packages/" in path else "/src/"
        parts = path.rsplit(marker, 1)[1].split("/")
        depth = 2 if parts[0] in _NAMESPACE_PACKAGES and len(parts) > 2 else 1
        return ".".join(parts[:depth]).removesuffix(".py")
    if "/lib/python3" in path or path.startswith("<frozen"):
        module = path.rsplit("/lib/python3.11/", 1)[-1].split("/")[0].removesuffix(".py")
        return f"stdlib ({module.removeprefix('<frozen ').removesuffix('>')})"
    return path or "unknown"
