"""What one gateway run measured, and the result rows it becomes."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.cpu import CpuPlan
from bench.gateway_config import BACKENDS, BENCHMARK, BODY, MAX_CONNECTIONS, PACED_CONNECTIONS
from bench.options import Options
from bench.rows import Row, make_row, median
from bench.wrk import WrkResult


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
