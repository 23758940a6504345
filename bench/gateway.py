"""yardarm's gateway against HAProxy 2.6, in front of the same nginx backends.

One run, one machine: nginx serves a fixed 128-byte body on three loopback ports; the
gateway and HAProxy each balance round-robin across them with the same CPU budget and
the same core placement; wrk drives each target, and the same load straight at one
nginx port gives the ceiling. Max throughput is a closed loop; latency is then compared
at a fixed rate, half the gateway's max, where neither proxy should be saturated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench.cpu import CpuMeter, CpuPlan, plan_cpus
from bench.gateway_config import (
    BACKENDS,
    BODY,
    MAX_CONNECTIONS,
    PACED_CONNECTIONS,
    VARIANTS,
    Scaling,
    gateway_env,
    gateway_scaling,
    haproxy_config,
    nginx_config,
)
from bench.gateway_rows import Measured, Outcome, Pair, build_rows
from bench.loopback import LOOPBACK, free_port, http_get
from bench.options import BenchError, Options
from bench.processes import (
    ManagedProcess,
    require_tools,
    start_process,
    tool_version,
    wait_http_ok,
    wait_listening,
)
from bench.profiling import profile_report, py_spy_command
from bench.rows import Row
from bench.wrk import WrkResult, run_wrk

MAX_ERROR_SHARE = 0.01
MIN_ACHIEVED_SHARE = 0.95
PROFILE_FILE = "gateway-profile.txt"


@dataclass
class Target:
    """Something to load: a URL and the server processes behind it (none when direct)."""

    name: str
    url: str
    processes: list[ManagedProcess] = field(default_factory=list)
    setup: str = ""


class GatewayBench:
    """Starts the backends and each target in turn, and measures them all the same way."""

    def __init__(
        self, options: Options, tmp: Path, console: Console, advance: Callable[[str], None]
    ) -> None:
        self.options = options
        self.tmp = tmp
        self.console = console
        self.advance = advance
        self.backend_ports = [free_port() for _ in range(BACKENDS)]
        self.base_plan = plan_cpus(1)

    # -- targets

    def start_backends(self, stack: ExitStack) -> Target:
        prefix = self.tmp / "nginx"
        (prefix / "temp").mkdir(parents=True)
        (prefix / "nginx.conf").write_text(nginx_config(self.backend_ports), encoding="utf-8")
        nginx = start_process(
            "nginx",
            ["nginx", "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"],
            log_dir=self.tmp,
            cpus=self.base_plan.backends,
        )
        stack.callback(nginx.stop)
        for port in self.backend_ports:
            url = f"http://{LOOPBACK}:{port}/"
            wait_http_ok(url, nginx, timeout_s=20)
            self._check_body(url, "nginx")
        # The backend's CPU is not a proxy's: direct runs report no server CPU.
        return Target("direct nginx", f"http://{LOOPBACK}:{self.backend_ports[0]}/")

    @contextmanager
    def haproxy(self, plan: CpuPlan) -> Iterator[Target]:
        port = free_port()
        cfg = self.tmp / f"haproxy-{plan.proxy_cores}.cfg"
        cfg.write_text(haproxy_config(port, self.backend_ports, plan.proxy_cores), "utf-8")
        proc = start_process(
            f"haproxy-{plan.proxy_cores}",
            ["haproxy", "-f", str(cfg), "-db"],
            log_dir=self.tmp,
            cpus=plan.proxy,
        )
        try:
            url = f"http://{LOOPBACK}:{port}/"
            wait_http_ok(url, proc, timeout_s=20)
            self._check_body(url, "haproxy")
            yield Target(f"haproxy ({plan.proxy_cores} thread)", url, [proc])
        finally:
            proc.stop()

    @contextmanager
    def gateway(
        self,
        plan: CpuPlan,
        scaling: Scaling | None,
        raw_env: dict[str, str] | None = None,
        variant: str = "",
    ) -> Iterator[Target]:
        cores = plan.proxy_cores
        port = free_port()
        if cores == 1 or scaling is None:
            count, extra, setup = 1, {}, "1 process"
        elif scaling == "workers":
            count, extra, setup = 1, {"WORKERS": str(cores)}, f"workers={cores}"
        else:
            count, extra = cores, {"REUSE_PORT": "true"}
            setup = f"{cores} processes sharing the port (SO_REUSEPORT)"
        processes: list[ManagedProcess] = []
        try:
            for index in range(count):
                state = self.tmp / f"gateway-{cores}-state"
                env = gateway_env(
                    port, self.backend_ports, state, f"gateway-bench-{index}", **extra
                )
                env.update(raw_env or {})
                processes.append(
                    start_process(
                        f"gateway-{cores}-{index}",
                        [sys.executable, "-m", "yardarm_gateway"],
                        log_dir=self.tmp,
                        cpus=plan.proxy,
                        env=env,
                    )
                )
            for proc in processes:
                wait_listening(proc, port)
            wait_http_ok(f"http://{LOOPBACK}:{port}/readyz", processes[0], timeout_s=60)
            url = f"http://{LOOPBACK}:{port}/"
            self._check_body(url, "the gateway")
            label = f"gateway ({cores} core{', ' + variant if variant else ''})"
            yield Target(label, url, processes, setup + (f", {variant}" if variant else ""))
        finally:
            for proc in processes:
                proc.stop()

    def _check_body(self, url: str, who: str) -> None:
        status, body = http_get(url)
        if status != 200 or body != BODY:
            raise BenchError(f"{who} answered {status} with {body[:80]!r} on {url}, not the body")

    # -- load

    def measure(self, target: Target, plan: CpuPlan, rate: float | None) -> Measured:
        """A warm-up, then `runs` measured runs; fails if the target answered with errors."""
        kind = "max throughput" if rate is None else f"{rate:,.0f} req/s"
        connections = MAX_CONNECTIONS if rate is None else PACED_CONNECTIONS
        self.advance(f"{target.name}: warm-up ({kind})")
        self._wrk(target, connections, self.options.warmup_s, plan, rate)
        measured = Measured()
        for run in range(1, self.options.runs + 1):
            self.advance(f"{target.name}: {kind}, run {run}/{self.options.runs}")
            with CpuMeter([proc.pid for proc in target.processes]) as meter:
                result = self._wrk(target, connections, self.options.duration_s, plan, rate)
            measured.samples.append(result)
            measured.core_busy_pct.append(meter.core_busy_pct)
            measured.process_cpu_pct.append(meter.process_pct)
            cpu = "-" if meter.process_pct is None else f"{meter.process_pct}%"
            self.console.log(
                f"{target.name} ({kind}) run {run}: {result.rps:,.0f} req/s, "
                f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms, "
                f"server CPU {cpu}, cores busy {meter.core_busy_pct}"
            )
        if rate is not None and measured.rps < rate * MIN_ACHIEVED_SHARE:
            self.console.log(
                f"[yellow]{target.name} reached {measured.rps:,.0f} of the {rate:,.0f} req/s "
                "asked: its fixed-rate latency comes from a saturated target[/yellow]"
            )
        return measured

    def _wrk(
        self, target: Target, connections: int, duration_s: int, plan: CpuPlan, rate: float | None
    ) -> WrkResult:
        try:
            result = run_wrk(
                target.url,
                connections=connections,
                duration_s=duration_s,
                script_dir=self.tmp,
                cpus=plan.load,
                rate_rps=rate,
            )
        finally:
            for proc in target.processes:
                if not proc.alive():
                    raise BenchError(
                        f"{proc.name} exited with code {proc.popen.returncode} under load; "
                        f"its log ends with:\n{proc.log_tail()}"
                    )
        if result.error_count > max(1, result.requests) * MAX_ERROR_SHARE:
            logs = "\n".join(f"--- {p.name}:\n{p.log_tail(5)}" for p in target.processes)
            raise BenchError(
                f"{target.name} failed {result.error_count} of {result.requests} requests "
                f"({result.errors})\n{logs}"
            )
        return result

    # -- profile

    def profile(self, target: Target, plan: CpuPlan) -> str:
        """py-spy on the gateway during one more max-throughput run; writes the report.

        A run of its own, so sampling never slows the measured runs.
        """
        self.advance(f"{target.name}: profiling with py-spy")
        command = py_spy_command()
        if command is None:
            return self._keep_profile(
                "gateway profile: not recorded: py-spy is not installed and uvx is not on PATH"
            )
        raw = self.tmp / "gateway-profile.folded"
        duration = self.options.duration_s
        spy = start_process(
            "py-spy",
            [*command, "record", "--pid", str(target.processes[0].pid),
             "--duration", str(duration), "--rate", "200", "--gil", "--function",
             "--full-filenames", "--format", "raw", "--output", str(raw)],
            log_dir=self.tmp,
            cpus=plan.load,
        )  # fmt: skip
        try:
            time.sleep(0.5)  # let it attach before the load starts
            result = self._wrk(target, MAX_CONNECTIONS, duration + 1, plan, None)
            spy.popen.wait(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            return self._keep_profile("gateway profile: not recorded: py-spy did not finish")
        finally:
            spy.stop()
        if spy.popen.returncode != 0 or not raw.exists():
            said = spy.log_tail(40).splitlines()
            errors = [line for line in said if line.startswith("Error")] or said[-3:]
            return self._keep_profile(
                f"gateway profile: not recorded: py-spy failed (exit {spy.popen.returncode}): "
                f"{' / '.join(errors)} "
                "(if permission was denied: attaching needs root or CAP_SYS_PTRACE, and "
                "kernel.yama.ptrace_scope <= 1)"
            )
        title = (
            f"gateway profile: py-spy --gil (samples of the thread holding the GIL) during "
            f"{duration}s at {result.rps:,.0f} req/s (wrk -c{MAX_CONNECTIONS}, max throughput)"
        )
        return self._keep_profile(profile_report(raw.read_text(encoding="utf-8"), title))

    def _keep_profile(self, report: str) -> str:
        """Write the report (or why there is none) beside the results, if they are kept."""
        if self.options.artifacts_dir is not None:
            path = self.options.artifacts_dir / PROFILE_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report.rstrip("\n") + "\n", encoding="utf-8")
            self.console.log(f"profile written to {path}")
        return report


def _versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "haproxy": tool_version(["haproxy", "-v"], r"HAProxy version (\d+\.\d+\.\d+)"),
        "nginx": tool_version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": tool_version(["wrk", "-v"], r"wrk \S*?(\d+\.\d+\.\d+)"),
        "python": sys.version.split()[0],
        "yardarm-gateway": dist("yardarm-gateway"),
        "aiohttp": dist("aiohttp"),
        "uvloop": dist("uvloop"),
    }


def run(options: Options, console: Console) -> list[Row]:
    """Measure the gateway, HAProxy and the direct ceiling; return the result rows."""
    require_tools(["nginx", "haproxy", "wrk", "taskset"])
    versions = _versions()
    scaling = gateway_scaling()
    budgets = [1, 2] if scaling is not None else [1]
    load_before = [round(x, 2) for x in os.getloadavg()]
    console.log(
        f"gateway vs haproxy-{versions['haproxy']}: proxy budgets {budgets} core(s), "
        f"{options.runs} run(s) of {options.duration_s}s after a {options.warmup_s}s warm-up; "
        f"load average now {load_before}"
    )
    if load_before[0] > 1.0:
        console.log("[yellow]the machine is busy: expect noisy numbers[/yellow]")
    steps = (len(budgets) * 2 + 1) * 2 * (options.runs + 1) + int(options.profile)
    steps += len(VARIANTS) * (options.runs + 1)
    with (
        tempfile.TemporaryDirectory(prefix="yardarm-bench-gateway-") as tmp_name,
        ExitStack() as stack,
        Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=console,
        ) as progress,
    ):  # fmt: skip
        task = progress.add_task("starting backends", total=steps)
        begun = False

        def advance(description: str) -> None:
            nonlocal begun
            if begun:
                progress.advance(task)
            begun = True
            progress.update(task, description=description)

        bench = GatewayBench(options, Path(tmp_name), console, advance)
        direct = bench.start_backends(stack)
        pairs: list[Pair] = []
        rate = 0.0
        for budget in budgets:
            plan = plan_cpus(budget)
            with bench.gateway(plan, scaling) as gateway:
                gateway_at_max = bench.measure(gateway, plan, None)
                if budget == 1:
                    rate = gateway_at_max.rps / 2
                    if options.profile:
                        report = bench.profile(gateway, plan)
                        # The whole report is in the file; the screen gets its head.
                        console.print("\n".join(report.splitlines()[:40]))
                gateway_at_rate = bench.measure(gateway, plan, rate)
            with bench.haproxy(plan) as haproxy:
                haproxy_at_max = bench.measure(haproxy, plan, None)
                haproxy_at_rate = bench.measure(haproxy, plan, rate)
            pairs.append(
                Pair(
                    plan,
                    gateway.setup,
                    gateway_at_max,
                    gateway_at_rate,
                    haproxy_at_max,
                    haproxy_at_rate,
                )
            )
        variants: list[tuple[str, dict[str, str], Measured]] = []
        for variant, env in VARIANTS:
            with bench.gateway(plan_cpus(1), scaling, env, variant) as gateway:
                variants.append((variant, env, bench.measure(gateway, plan_cpus(1), None)))
        direct_at_max = bench.measure(direct, bench.base_plan, None)
        direct_at_rate = bench.measure(direct, bench.base_plan, rate)
        progress.advance(task)
    load_avg = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    outcome = Outcome(versions, rate, direct_at_max, direct_at_rate, pairs, load_avg, variants)
    return build_rows(outcome, options, datetime.now(UTC).isoformat(timespec="seconds"))
