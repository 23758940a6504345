"""yardarm's gateway against HAProxy 2.6, in front of the same nginx backends.

One run, one machine: nginx serves a fixed 128-byte body on three loopback ports; the
gateway and HAProxy each balance round-robin across them with the same CPU budget and
the same core placement; wrk drives each target, and the same load straight at one
nginx port gives the ceiling. Max throughput is a closed loop; latency is then compared
at a fixed rate, half the gateway's max, where neither proxy should be saturated.
"""

from __future__ import annotations

import json
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
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench.common import (
    LOOPBACK,
    BenchError,
    CpuMeter,
    CpuPlan,
    ManagedProcess,
    Options,
    Row,
    WrkResult,
    free_port,
    http_get,
    make_row,
    median,
    plan_cpus,
    profile_report,
    py_spy_command,
    require_tools,
    run_wrk,
    start_process,
    tool_version,
    wait_http_ok,
    wait_listening,
)

BENCHMARK = "gateway"
BODY = b"yardarm-bench:" + b"x" * 113 + b"\n"  # 128 bytes
MAX_CONNECTIONS = 64
PACED_CONNECTIONS = 32
BACKENDS = 3
MAX_ERROR_SHARE = 0.01
MIN_ACHIEVED_SHARE = 0.95
PROFILE_FILE = "gateway-profile.txt"

Scaling = Literal["workers", "reuse_port"]

# Other configurations of the gateway on one core, each against HAProxy on one core:
# the HTTP client of the hot path the gateway did not choose, and the trace sampling a
# production deployment would set (the default traces every request).
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("aiohttp upstream client", {"YARDARM_GATEWAY_UPSTREAM_HTTP": "aiohttp"}),
    (
        "1% trace sampling",
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
    ),
]


# -- configuration of the targets -----------------------------------------------------


def nginx_config(ports: list[int]) -> str:
    text = BODY.decode().removesuffix("\n")
    servers = "\n".join(
        f"    server {{ listen {LOOPBACK}:{port} backlog=4096; "
        f'location / {{ return 200 "{text}\\n"; }} }}'
        for port in ports
    )
    return f"""worker_processes 1;
pid nginx.pid;
error_log error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_body_temp_path temp/body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
{servers}
}}
"""


def haproxy_config(port: int, backend_ports: list[int], nbthread: int) -> str:
    servers = "\n".join(
        f"    server b{i} {LOOPBACK}:{p}" for i, p in enumerate(backend_ports, start=1)
    )
    return f"""global
    nbthread {nbthread}
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    http-reuse always

frontend bench
    bind {LOOPBACK}:{port}
    default_backend nginx

backend nginx
    balance roundrobin
{servers}
"""


def gateway_scaling() -> Scaling | None:
    """How this gateway spreads over several cores, read from its settings model.

    A `workers` setting runs several processes itself; without it, `reuse_port` lets
    the benchmark start several processes on one port (SO_REUSEPORT).
    """
    from yardarm_gateway.settings import GatewaySettings

    fields = GatewaySettings.model_fields
    if "workers" in fields:
        return "workers"
    if "reuse_port" in fields:
        return "reuse_port"
    return None


def gateway_env(
    port: int, backend_ports: list[int], state_dir: Path, instance: str, **extra: str
) -> dict[str, str]:
    """The environment the local runtime gives a gateway, routing "/" to the backends."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("YARDARM_", "OTEL_"))  # no stray config, no span export
    }
    settings = {
        "HOST": LOOPBACK,
        "PORT": str(port),
        "INSTANCE": instance,
        "STATE_DIR": str(state_dir),
        "LOG_LEVEL": "INFO",
        "ROUTES": json.dumps([{"prefix": "/", "upstream": "bench"}]),
        "UPSTREAMS": json.dumps({"bench": [f"http://{LOOPBACK}:{p}" for p in backend_ports]}),
        "STRIP_PREFIX": "",
        **extra,
    }
    env.update({f"YARDARM_GATEWAY_{key}": value for key, value in settings.items()})
    return env


# -- measurements ---------------------------------------------------------------------


@dataclass
class Target:
    """Something to load: a URL and the server processes behind it (none when direct)."""

    name: str
    url: str
    processes: list[ManagedProcess] = field(default_factory=list)
    setup: str = ""


@dataclass
class Measured:
    """Repeated runs of one load against one target; rows report the medians."""

    samples: list[WrkResult] = field(default_factory=list)
    process_cpu_pct: list[float | None] = field(default_factory=list)  # one per sample
    core_busy_pct: list[list[float]] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return median([s.rps for s in self.samples])

    @property
    def p50_ms(self) -> float:
        return median([s.p50_ms for s in self.samples])

    @property
    def p99_ms(self) -> float:
        return median([s.p99_ms for s in self.samples])

    @property
    def rps_per_cpu_s(self) -> float | None:
        """Requests per CPU-second of the server: robust to cores stolen by other work."""
        pairs = zip(self.samples, self.process_cpu_pct, strict=True)
        runs = [s.rps / (cpu / 100) for s, cpu in pairs if cpu]
        return median(runs) if runs else None

    def details(self) -> dict[str, object]:
        cores = list(zip(*self.core_busy_pct, strict=True))
        cpu = [pct for pct in self.process_cpu_pct if pct is not None]
        return {
            "runs_rps": [round(s.rps, 1) for s in self.samples],
            "runs_p50_ms": [round(s.p50_ms, 3) for s in self.samples],
            "runs_p99_ms": [round(s.p99_ms, 3) for s in self.samples],
            "errors": sum(s.error_count for s in self.samples),
            "server_cpu_pct": median(cpu) if cpu else None,
            "core_busy_pct": [round(median(core), 1) for core in cores],
        }


@dataclass
class Pair:
    """The gateway and HAProxy measured with the same CPU plan."""

    plan: CpuPlan
    gateway_setup: str
    gateway_at_max: Measured
    gateway_at_rate: Measured
    haproxy_at_max: Measured
    haproxy_at_rate: Measured


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


# -- rows -----------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything one run measured, ready to become rows."""

    versions: dict[str, str]
    rate: float
    direct_at_max: Measured
    direct_at_rate: Measured
    pairs: list[Pair]
    load_avg: dict[str, list[float]]
    variants: list[tuple[str, dict[str, str], Measured]]


def build_rows(outcome: Outcome, options: Options, date: str) -> list[Row]:
    versions = outcome.versions
    peer = f"haproxy-{versions['haproxy']}"
    rows: list[Row] = []

    def add(
        metric: str,
        value: float | None,
        params: dict[str, object],
        peer_value: float | None = None,
        *,
        lower_is_better: bool = False,
        with_ratio: bool = True,
    ) -> None:
        rows.append(
            make_row(
                BENCHMARK,
                metric,
                value,
                params=params,
                date=date,
                peer=None if peer_value is None else peer,
                peer_value=peer_value,
                lower_is_better=lower_is_better,
                with_ratio=with_ratio,
            )
        )

    base: dict[str, object] = {
        "tool": f"wrk {versions['wrk']} (1 thread, keep-alive, lua report)",
        "versions": versions,
        "backends": (
            f"nginx {versions['nginx']}: worker_processes 1, {BACKENDS} loopback listeners, "
            f"fixed {len(BODY)}-byte body, keep-alive, access_log off"
        ),
        "body_bytes": len(BODY),
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "runs": options.runs,
        "statistic": f"median of {options.runs} run(s)",
        "machine_load_avg_1_5_15m": outcome.load_avg,
        "quick": options.quick,
    }
    at_max_load = {"load": "closed loop, max throughput", "concurrency": MAX_CONNECTIONS}
    at_rate_load = {
        "load": "fixed rate: wrk delay() paces requests onto one evenly spaced timeline",
        "concurrency": PACED_CONNECTIONS,
        "target_rps": round(outcome.rate, 1),
        "rate_is": "half the gateway's max throughput on 1 core",
    }
    direct_p50 = outcome.direct_at_rate.p50_ms
    for pair in outcome.pairs:
        common = {
            **base,
            "setup": f"{pair.plan.proxy_cores} proxy core(s)",
            "pinning": pair.plan.describe(),
            "gateway": pair.gateway_setup,
            "haproxy_nbthread": pair.plan.proxy_cores,
            "haproxy_config": "mode http, balance roundrobin, http-reuse always, no logging",
        }
        at_max = {
            **common,
            **at_max_load,
            "yardarm_runs": pair.gateway_at_max.details(),
            "peer_runs": pair.haproxy_at_max.details(),
        }
        at_rate = {
            **common,
            **at_rate_load,
            "achieved_rps": {
                "yardarm": round(pair.gateway_at_rate.rps, 1),
                "peer": round(pair.haproxy_at_rate.rps, 1),
                "direct": round(outcome.direct_at_rate.rps, 1),
            },
            "yardarm_runs": pair.gateway_at_rate.details(),
            "peer_runs": pair.haproxy_at_rate.details(),
        }
        gw_max, hp_max = pair.gateway_at_max, pair.haproxy_at_max
        gw_rate, hp_rate = pair.gateway_at_rate, pair.haproxy_at_rate
        add("throughput_rps", gw_max.rps, at_max, hp_max.rps)
        add(
            "requests_per_cpu_second (max-throughput req/s / server CPU share)",
            gw_max.rps_per_cpu_s,
            at_max,
            hp_max.rps_per_cpu_s,
        )
        for metric, ours, theirs, params in (
            ("p50_latency_ms_at_max_throughput", gw_max.p50_ms, hp_max.p50_ms, at_max),
            ("p99_latency_ms_at_max_throughput", gw_max.p99_ms, hp_max.p99_ms, at_max),
            ("p50_latency_ms_at_fixed_rate", gw_rate.p50_ms, hp_rate.p50_ms, at_rate),
            ("p99_latency_ms_at_fixed_rate", gw_rate.p99_ms, hp_rate.p99_ms, at_rate),
        ):
            add(metric, ours, params, theirs, lower_is_better=True)
        add(
            "added_p50_latency_ms_at_fixed_rate (proxy p50 minus direct p50, no ratio)",
            gw_rate.p50_ms - direct_p50,
            {**at_rate, "direct_p50_ms": round(direct_p50, 4)},
            hp_rate.p50_ms - direct_p50,
            with_ratio=False,
        )

    one_core = outcome.pairs[0]
    for variant, env, measured in outcome.variants:
        params = {
            **base,
            **at_max_load,
            "setup": "1 proxy core",
            "pinning": one_core.plan.describe(),
            "gateway": f"1 process, {variant}",
            "gateway_env": env,
            "default_gateway_rps": round(one_core.gateway_at_max.rps, 1),
            "yardarm_runs": measured.details(),
            "peer_runs": one_core.haproxy_at_max.details(),
        }
        add(f"throughput_rps ({variant})", measured.rps, params, one_core.haproxy_at_max.rps)
        add(
            f"p50_latency_ms_at_max_throughput ({variant})",
            measured.p50_ms,
            params,
            one_core.haproxy_at_max.p50_ms,
            lower_is_better=True,
        )

    direct = {
        **base,
        "setup": "no proxy",
        "pinning": outcome.pairs[0].plan.describe() | {"proxy_cpus": "none"},
        "target": f"nginx {versions['nginx']}, one of the {BACKENDS} backend ports",
    }
    at_max = {**direct, **at_max_load, "runs_detail": outcome.direct_at_max.details()}
    at_rate = {
        **direct,
        **at_rate_load,
        "achieved_rps": round(outcome.direct_at_rate.rps, 1),
        "runs_detail": outcome.direct_at_rate.details(),
    }
    dmax, drate = outcome.direct_at_max, outcome.direct_at_rate
    add("direct_backend_throughput_rps (no proxy: the ceiling)", dmax.rps, at_max)
    add("direct_backend_p50_latency_ms_at_max_throughput", dmax.p50_ms, at_max)
    add("direct_backend_p99_latency_ms_at_max_throughput", dmax.p99_ms, at_max)
    add("direct_backend_p50_latency_ms_at_fixed_rate", drate.p50_ms, at_rate)
    add("direct_backend_p99_latency_ms_at_fixed_rate", drate.p99_ms, at_rate)
    return rows


# -- the run --------------------------------------------------------------------------


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
