"""A closed-loop key-value load harness, the same for every store it compares.

`concurrency` workers each send one request at a time until the phase's deadline or
their share of its request cap, whichever comes first, and time every request with
`perf_counter`. Only the wire format differs between stores (a `KvDialect`), so the
numbers of two stores come from exactly the same client. Requests rotate over the
endpoints given, as an etcd client rotates over its cluster's members.

Every answer that is not 2xx, and every failed request, is counted by kind; only
successful requests count towards throughput and latency.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp

from bench.loopback import check_loopback
from bench.options import BenchError

KEY_COUNT = 1000
VALUE_BYTES = 100
REQUEST_TIMEOUT_S = 10.0
# The harness's own safety margin past deadline + request timeout before it gives up.
PHASE_GRACE_S = 5.0

Op = Literal["write", "read"]


class KvDialect(Protocol):
    """How one store spells a put and a linearizable get; answers the HTTP status."""

    name: str

    async def put(
        self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str
    ) -> int: ...

    async def get(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> int: ...

    async def value(
        self, session: aiohttp.ClientSession, endpoint: str, key: str
    ) -> str | None: ...


def bench_keys(count: int = KEY_COUNT) -> list[str]:
    return [f"bench-{index:04d}" for index in range(count)]


def bench_value(size: int = VALUE_BYTES) -> str:
    """An ASCII value of `size` bytes: the same payload in JSON and in base64 bodies."""
    return ("yardarm-bench-value-" * (size // 20 + 1))[:size]


@dataclass(frozen=True)
class Load:
    """One measured phase: what to send, how many at once, and its two bounds."""

    op: Op
    concurrency: int
    duration_s: float
    max_requests: int
    seed: int = 0


@dataclass(frozen=True)
class LoadResult:
    """What one phase measured: successes with their latencies, and failures by kind."""

    ok: int
    errors: dict[str, int]
    elapsed_s: float
    latencies_ms: tuple[float, ...]  # successful requests only, sorted
    client_cpu_pct: float
    capped: bool  # some worker stopped at its request cap before the deadline

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def requests(self) -> int:
        return self.ok + self.error_count

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 99)


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of sorted values: always one of the measured values."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def open_session(concurrency: int) -> aiohttp.ClientSession:
    """A session that never queues a worker behind the connection limit."""
    connector = aiohttp.TCPConnector(limit=max(concurrency, 1), limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        trust_env=False,  # never through a proxy from the environment
    )


@dataclass
class _Tally:
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    capped: bool = False


async def run_load(
    dialect: KvDialect,
    endpoints: Sequence[str],
    load: Load,
    session: aiohttp.ClientSession,
    keys: Sequence[str] | None = None,
    value: str | None = None,
) -> LoadResult:
    """One closed-loop phase of random keys; bounded by its duration and request cap."""
    keys = bench_keys() if keys is None else keys
    value = bench_value() if value is None else value
    rngs = [random.Random(load.seed * 100_003 + worker) for worker in range(load.concurrency)]

    def next_key(worker: int) -> str | None:
        return rngs[worker].choice(keys)

    return await _drive(
        dialect,
        endpoints,
        load.op,
        load.concurrency,
        load.duration_s,
        load.max_requests,
        next_key,
        value,
        session,
    )


async def fill(
    dialect: KvDialect,
    endpoints: Sequence[str],
    session: aiohttp.ClientSession,
    keys: Sequence[str],
    value: str,
    concurrency: int = 16,
    timeout_s: float = 120.0,
) -> LoadResult:
    """Write every key exactly once, so reads find a value for each of them."""
    pending = iter(keys)

    def next_key(worker: int) -> str | None:
        return next(pending, None)

    return await _drive(
        dialect, endpoints, "write", concurrency, timeout_s, len(keys), next_key, value, session
    )


async def _drive(
    dialect: KvDialect,
    endpoints: Sequence[str],
    op: Op,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    next_key: Callable[[int], str | None],
    value: str,
    session: aiohttp.ClientSession,
) -> LoadResult:
    if not endpoints or concurrency < 1 or max_requests < 1:
        raise BenchError("a load needs an endpoint, concurrency >= 1 and max_requests >= 1")
    for endpoint in endpoints:
        check_loopback(endpoint)
    rotation = itertools.cycle(endpoints)
    per_worker = math.ceil(max_requests / concurrency)
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker(index: int) -> None:
        for _ in range(per_worker):
            if time.perf_counter() >= deadline:
                return
            key = next_key(index)
            if key is None:
                return
            endpoint = next(rotation)
            begun = time.perf_counter()
            try:
                if op == "write":
                    status = await dialect.put(session, endpoint, key, value)
                else:
                    status = await dialect.get(session, endpoint, key)
            except TimeoutError:
                tally.errors["timeout"] += 1
                continue
            except aiohttp.ClientError as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            if 200 <= status < 300:
                tally.latencies_s.append(time.perf_counter() - begun)
            else:
                tally.errors[f"HTTP {status}"] += 1
        tally.capped = tally.capped or time.perf_counter() < deadline

    cpu_before = time.process_time()
    try:
        async with asyncio.timeout(duration_s + REQUEST_TIMEOUT_S + PHASE_GRACE_S):
            await asyncio.gather(*(worker(index) for index in range(concurrency)))
    except TimeoutError:
        raise BenchError(
            f"{dialect.name}: a {op} phase did not end within its deadline and the request "
            f"timeout ({duration_s + REQUEST_TIMEOUT_S:.0f}s); the target may be stuck"
        ) from None
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    return LoadResult(
        ok=len(tally.latencies_s),
        errors=dict(tally.errors),
        elapsed_s=elapsed,
        latencies_ms=tuple(sorted(s * 1000 for s in tally.latencies_s)),
        client_cpu_pct=round(cpu / elapsed * 100, 1) if elapsed > 0 else 0.0,
        capped=tally.capped,
    )


@dataclass
class Measured:
    """Repeated runs of one phase against one target; rows report the medians."""

    results: list[LoadResult] = field(default_factory=list)
    server_cpu_pct: list[float | None] = field(default_factory=list)  # one per result

    @property
    def rps(self) -> float:
        return statistics.median([r.rps for r in self.results])

    @property
    def p50_ms(self) -> float:
        return statistics.median([r.p50_ms or 0.0 for r in self.results])

    @property
    def p99_ms(self) -> float:
        return statistics.median([r.p99_ms or 0.0 for r in self.results])

    def details(self) -> dict[str, object]:
        cpu = [pct for pct in self.server_cpu_pct if pct is not None]
        return {
            "runs_rps": [round(r.rps, 1) for r in self.results],
            "runs_p50_ms": [round(r.p50_ms or 0.0, 3) for r in self.results],
            "runs_p99_ms": [round(r.p99_ms or 0.0, 3) for r in self.results],
            "requests": sum(r.requests for r in self.results),
            "errors": sum(r.error_count for r in self.results),
            "error_kinds": dict(sum((Counter(r.errors) for r in self.results), Counter())),
            "server_cpu_pct_all_members": statistics.median(cpu) if cpu else None,
            "client_cpu_pct": statistics.median([r.client_cpu_pct for r in self.results]),
            "stopped_at_request_cap": any(r.capped for r in self.results),
        }


PROBE_KEY = "bench-probe"


async def check_one_cluster(
    dialect: KvDialect, endpoints: Sequence[str], timeout_s: float = 60.0
) -> None:
    """A write through each endpoint reads back through every endpoint, or BenchError.

    Endpoints that are not one linearizable cluster (replicas ignoring their peers, say)
    would otherwise be measured as if they were. The first write through each endpoint
    is retried until `timeout_s`, so a cluster still electing its leader gets time.
    """
    async with open_session(4) as session:
        for writer in endpoints:
            token = f"probe-{uuid.uuid4().hex}"
            await _put_until_ok(dialect, session, writer, token, timeout_s)
            for reader in endpoints:
                seen = await dialect.value(session, reader, PROBE_KEY)
                if seen != token:
                    raise BenchError(
                        f"{dialect.name}: a write through {writer} reads back as {seen!r} "
                        f"through {reader}, not as written: the members are not one "
                        "linearizable cluster"
                    )


async def _put_until_ok(
    dialect: KvDialect,
    session: aiohttp.ClientSession,
    endpoint: str,
    token: str,
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = await dialect.put(session, endpoint, PROBE_KEY, token)
            if 200 <= status < 300:
                return
            last = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise BenchError(
        f"{dialect.name} at {endpoint} accepted no write within {timeout_s:.0f}s (last: {last})"
    )
