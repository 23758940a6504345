"""The order saga end to end: orders accepted per second and saga latency, rising load.

One whole local stack (`yardarm up --detach` on a free base port, in a temporary home:
gateway, two orders replicas, fulfillment, three datastore replicas, NATS, Postgres) is
started for the run and stopped after it, also on errors. Orders go through the gateway
(`POST /api/orders`, a fresh Idempotency-Key each, a card that is always approved),
one unit of one SKU each, spread over SKUS bench SKUs seeded with stock no run can use up,
so the numbers measure the saga and not the compare-and-set contention of one record.

Each phase is a closed loop of `concurrency` workers for `--duration` seconds; then the
benchmark waits (bounded) for the phase's orders to finish before the next one starts, so
a phase's backlog never weighs on the next. Saga latency is read from the orders database:
`updated_at - created_at` of each CONFIRMED or CANCELLED order the phase created, i.e. from
the insert to the terminal transition, both stamped by Postgres. The phase with the
highest accepted rate is the saturation row. There is no peer to compare with.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import aiohttp
import asyncpg
from rich.console import Console

from bench.kvload import open_session, percentile
from bench.loopback import LOOPBACK, check_loopback
from bench.options import BenchError, Options
from bench.rows import Row, make_row
from yardarm.catalog import seed_catalog
from yardarm.credentials import admin_token
from yardarm.local.infra import postgres_dsn
from yardarm.local.plan import port_plan
from yardarm.model import Topology

BENCHMARK = "orders"
CONCURRENCY = (4, 16, 64)
QUICK_CONCURRENCY = (4, 16)
CARD_OK = "4242424242424242"
SKUS = 64
STOCK_PER_SKU = 100_000_000
TERMINAL = ("CONFIRMED", "CANCELLED")
REQUEST_TIMEOUT_S = 20.0
MAX_ORDERS_PER_WORKER = 100_000  # the count bound of a phase; its duration comes first
DRAIN_S = 60.0
QUICK_DRAIN_S = 20.0
POLL_S = 0.5
STACK_UP_TIMEOUT_S = 300.0
STACK_DOWN_TIMEOUT_S = 120.0
FIRST_BASE_PORT = 26000  # below the ephemeral range; the e2e tests' stacks use 21000, 33000


# -- the stack


@dataclass(frozen=True)
class LocalStack:
    """A stack started by `yardarm up` in its own home; every port derives from base_port."""

    home: Path
    topology: Topology

    @property
    def gateway(self) -> str:
        return f"http://{LOOPBACK}:{self.topology.gateway_port}"

    @property
    def datastore(self) -> str:
        return f"http://{LOOPBACK}:{self.topology.datastore_port(0)}"

    @property
    def orders_dsn(self) -> str:
        return postgres_dsn(self.topology.postgres_port, "orders")


def _ports_free(topology: Topology) -> bool:
    for port in port_plan(topology).values():
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


def free_topology(start: int = FIRST_BASE_PORT) -> Topology:
    """The default topology on the first base port whose whole port plan is free."""
    for base in range(start, start + 6000, 100):
        topology = Topology(base_port=base)
        if _ports_free(topology):
            return topology
    raise BenchError(f"no free range of ports for a stack from base port {start} upward")


def _yardarm(home: Path, args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    # No stray configuration from the caller's shell; the stack lives in `home`.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YARDARM_", "OTEL_"))}
    env["YARDARM_HOME"] = str(home)
    try:
        return subprocess.run(
            [sys.executable, "-m", "yardarm", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`yardarm {' '.join(args)}` did not finish in {timeout_s:.0f}s") from exc


@contextmanager
def local_stack(root: Path) -> Iterator[LocalStack]:
    """`yardarm up --detach` in `root/home`; `yardarm down` on the way out, whatever happens."""
    topology = free_topology()
    stack = LocalStack(root / "home", topology)
    try:
        started = _yardarm(
            stack.home,
            ["up", "--detach", "--base-port", str(topology.base_port)],
            STACK_UP_TIMEOUT_S,
        )
        if started.returncode != 0:
            tail = "\n".join((started.stdout + started.stderr).splitlines()[-20:])
            raise BenchError(f"`yardarm up` failed (exit {started.returncode}):\n{tail}")
        yield stack
    finally:
        _yardarm(stack.home, ["down"], STACK_DOWN_TIMEOUT_S)


def seed_skus(stack: LocalStack, count: int = SKUS) -> list[str]:
    """`count` bench SKUs with stock to spare (kept if already there)."""
    catalog = tuple(
        {
            "sku": f"bench-{index:03d}",
            "name": f"Bench item {index}",
            "price_cents": 1000 + index,
            "available": STOCK_PER_SKU,
        }
        for index in range(count)
    )
    seed_catalog(stack.datastore, admin_token(stack.home), catalog)  # the bench runs plain HTTP

    return [str(item["sku"]) for item in catalog]


# -- one phase


@dataclass
class PhaseResult:
    """What one phase measured: the load side, then the sagas it started."""

    concurrency: int
    elapsed_s: float
    order_ids: list[str]
    errors: dict[str, int]
    accept_ms: list[float]  # POST latency of accepted orders, sorted
    saga_ms: list[float] = field(default_factory=list)  # terminal orders, sorted
    statuses: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    drain_s: float = 0.0
    completions_per_s: float | None = None

    @property
    def accepted(self) -> int:
        return len(self.order_ids)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def place_orders(
    session: aiohttp.ClientSession,
    gateway: str,
    skus: Sequence[str],
    concurrency: int,
    duration_s: float,
    max_per_worker: int = MAX_ORDERS_PER_WORKER,
) -> PhaseResult:
    """A closed loop of `concurrency` workers placing one-item orders until the deadline."""
    url = f"{gateway}/api/orders"
    check_loopback(url)
    ids: list[str] = []
    accept_s: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s

    async def worker(index: int) -> None:
        for sent in range(max_per_worker):
            if time.monotonic() >= deadline:
                return
            body = {
                "customer_id": f"bench-{index}",
                "items": [{"sku": skus[(index + sent * concurrency) % len(skus)], "quantity": 1}],
                "payment": {"card": CARD_OK},
            }
            begun = time.perf_counter()
            try:
                headers = {"Idempotency-Key": str(uuid.uuid4())}
                async with session.post(url, json=body, headers=headers) as resp:
                    payload = await resp.read()
                    if resp.status == 202:
                        ids.append(str(json.loads(payload)["id"]))
                        accept_s.append(time.perf_counter() - begun)
                    else:
                        errors[f"HTTP {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                errors[type(exc).__name__] += 1

    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(worker(index) for index in range(concurrency))),
        timeout=duration_s + REQUEST_TIMEOUT_S + 10.0,
    )
    elapsed = time.monotonic() - started
    return PhaseResult(
        concurrency=concurrency,
        elapsed_s=elapsed,
        order_ids=ids,
        errors=dict(errors),
        accept_ms=sorted(s * 1000 for s in accept_s),
    )


async def settle(conn: asyncpg.Connection, phase: PhaseResult, drain_s: float) -> None:
    """Wait (at most `drain_s`) for the phase's orders to finish; read their saga latency."""
    ids = [uuid.UUID(order_id) for order_id in phase.order_ids]
    started = time.monotonic()
    while True:
        pending = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND status <> ALL($2)",
            ids,
            list(TERMINAL),
        )
        if pending == 0 or time.monotonic() - started >= drain_s:
            break
        await asyncio.sleep(POLL_S)
    phase.drain_s = time.monotonic() - started
    phase.pending = int(pending)
    rows = await conn.fetch(
        """
        SELECT status, EXTRACT(EPOCH FROM updated_at - created_at) * 1000 AS saga_ms,
               EXTRACT(EPOCH FROM updated_at) AS done, EXTRACT(EPOCH FROM created_at) AS made
          FROM orders WHERE id = ANY($1::uuid[])
        """,
        ids,
    )
    phase.statuses = dict(Counter(str(row["status"]) for row in rows))
    finished = [row for row in rows if row["status"] in TERMINAL]
    phase.saga_ms = sorted(float(row["saga_ms"]) for row in finished)
    if finished:
        span = max(float(r["done"]) for r in finished) - min(float(r["made"]) for r in rows)
        phase.completions_per_s = len(finished) / span if span > 0 else None


# -- rows


def _ms(values: Sequence[float], pct: float) -> float | None:
    found = percentile(values, pct)
    return None if found is None else round(found, 2)


def phase_params(phase: PhaseResult) -> dict[str, object]:
    return {
        "setup": f"c={phase.concurrency}",
        "concurrency": phase.concurrency,
        "elapsed_s": round(phase.elapsed_s, 2),
        "accepted": phase.accepted,
        "errors": phase.errors,
        "accept_p50_ms": _ms(phase.accept_ms, 50),
        "accept_p99_ms": _ms(phase.accept_ms, 99),
        "statuses": phase.statuses,
        "terminal": len(phase.saga_ms),
        "pending_after_drain": phase.pending,
        "drain_wait_s": round(phase.drain_s, 2),
        "saga_completions_per_s": None
        if phase.completions_per_s is None
        else round(phase.completions_per_s, 2),
    }


def build_rows(phases: Sequence[PhaseResult], base: dict[str, object], date: str) -> list[Row]:
    """Five rows per phase, then the saturation row (the phase with the most orders/s)."""
    rows: list[Row] = []
    for phase in phases:
        params = {**base, **phase_params(phase)}
        for metric, value in (
            ("orders_accepted_per_s", phase.accepted_per_s),
            ("saga_p50_latency_ms", percentile(phase.saga_ms, 50)),
            ("saga_p99_latency_ms", percentile(phase.saga_ms, 99)),
            ("saga_completions_per_s", phase.completions_per_s),
            ("orders_pending_after_drain", float(phase.pending)),
        ):
            rows.append(make_row(BENCHMARK, metric, value, params=params, date=date))
    if phases:
        best = max(phases, key=lambda phase: phase.accepted_per_s)
        params = {
            **base,
            **phase_params(best),
            "setup": f"saturation: c={best.concurrency} (highest accepted rate of "
            f"c={', '.join(str(p.concurrency) for p in phases)})",
            "saga_p50_latency_ms": _ms(best.saga_ms, 50),
            "saga_p99_latency_ms": _ms(best.saga_ms, 99),
        }
        rows.append(
            make_row(
                BENCHMARK,
                "saturation_orders_accepted_per_s",
                best.accepted_per_s,
                params=params,
                date=date,
            )
        )
    return rows


# -- the run


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


async def measure(
    stack: LocalStack,
    skus: Sequence[str],
    concurrencies: Sequence[int],
    duration_s: float,
    drain_s: float,
    warmup_s: float,
    console: Console,
) -> list[PhaseResult]:
    """A warm-up (not reported), then each phase: load, then wait for its sagas."""
    conn = await asyncpg.connect(stack.orders_dsn)
    try:
        results: list[PhaseResult] = []
        plan = [(0, concurrencies[0], warmup_s)] if warmup_s > 0 else []
        plan += [(1, c, duration_s) for c in concurrencies]
        for reported, concurrency, seconds in plan:
            async with open_session(concurrency) as session:
                phase = await place_orders(session, stack.gateway, skus, concurrency, seconds)
            if phase.accepted == 0:
                raise BenchError(
                    f"no order was accepted at concurrency {concurrency} ({phase.errors}); "
                    f"see the logs in {stack.home / 'logs'}"
                )
            await settle(conn, phase, drain_s)
            name = f"c={concurrency}" if reported else f"warm-up c={concurrency}"
            console.log(
                f"{name}: {phase.accepted_per_s:,.1f} orders/s accepted ({phase.accepted} in "
                f"{phase.elapsed_s:.1f}s, errors {phase.errors or 0}); saga p50 "
                f"{_ms(phase.saga_ms, 50)} ms, p99 {_ms(phase.saga_ms, 99)} ms; "
                f"{phase.pending} pending after {phase.drain_s:.1f}s"
            )
            if reported:
                results.append(phase)
        return results
    finally:
        await conn.close()


def bench_orders(
    options: Options,
    console: Console,
    concurrencies: Sequence[int],
    drain_s: float,
) -> list[Row]:
    """Start a stack, run the phases, stop it; the rows."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    console.log(
        f"orders: phases at concurrency {', '.join(map(str, concurrencies))}, "
        f"{options.duration_s}s each after a {options.warmup_s}s warm-up; "
        f"load average now {load_before}"
    )
    with tempfile.TemporaryDirectory(
        prefix="yardarm-bench-orders-", ignore_cleanup_errors=True
    ) as tmp:
        console.log("starting a local stack (`yardarm up --detach`)")
        with local_stack(Path(tmp)) as stack:
            skus = seed_skus(stack)
            console.log(f"stack up on base port {stack.topology.base_port}; {len(skus)} SKUs")
            phases = asyncio.run(
                measure(
                    stack,
                    skus,
                    concurrencies,
                    options.duration_s,
                    drain_s,
                    options.warmup_s,
                    console,
                )
            )
            console.log("stopping the stack")
    services = stack.topology.services
    base: dict[str, object] = {
        "stack": (
            f"yardarm up defaults: gateway x{services.gateway.replicas}, orders "
            f"x{services.orders.replicas}, fulfillment x{services.fulfillment.replicas}, "
            f"datastore x{services.datastore.replicas}, NATS, Postgres; all on one machine"
        ),
        "load": (
            "closed loop of `concurrency` aiohttp workers in the bench process; POST "
            f"/api/orders through the gateway, one unit of one of {SKUS} SKUs round robin, "
            f"card {CARD_OK}, new Idempotency-Key each; request timeout {REQUEST_TIMEOUT_S:.0f}s"
        ),
        "saga_latency": (
            "orders.updated_at - orders.created_at of the phase's CONFIRMED/CANCELLED orders "
            "(insert to terminal transition, Postgres clock)"
        ),
        "drain": f"after each phase, up to {drain_s:.0f}s for its orders to finish",
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "versions": {
            "python": sys.version.split()[0],
            "yardarm": _dist("yardarm"),
            "aiohttp": _dist("aiohttp"),
        },
        "cpu_count": len(os.sched_getaffinity(0)),
        "machine_load_avg_1_5_15m": {
            "before": load_before,
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": options.quick,
    }
    return build_rows(phases, base, datetime.now(UTC).isoformat(timespec="seconds"))


def run(options: Options, console: Console) -> list[Row]:
    """Orders per second and saga latency at concurrency 4, 16, 64 (4, 16 when quick)."""
    if options.quick:
        return bench_orders(options, console, QUICK_CONCURRENCY, QUICK_DRAIN_S)
    return bench_orders(options, console, CONCURRENCY, DRAIN_S)
