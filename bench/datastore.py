"""yardarm's datastore against etcd 3.4: replicated, fsynced key-value writes and reads.

One run, one machine, one filesystem: an etcd cluster and a yardarm datastore cluster of
the same size run side by side, their data directories in one temporary directory, and
the same client harness (`bench.kvload`) loads each in turn. Writes are measured at
concurrency 1, 16 and 64 (one commit's latency, then group commit under load), then
linearizable reads at 64 over keys written beforehand. The disk's own fsync latency in
the same directory is measured first: the floor under every durable write.

Requests rotate over every member, as an etcd client does, unless
`YARDARM_BENCH_DATASTORE_TARGET=leader` sends them all to the leader.
`YARDARM_BENCH_DATASTORE_REPLICAS` sets the cluster size (default 3; 1 for one node).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import aiohttp
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from bench.cpu import CpuMeter
from bench.etcd import EtcdGateway, etcd_cluster, etcd_version, find_etcd
from bench.kvload import (
    KEY_COUNT,
    REQUEST_TIMEOUT_S,
    VALUE_BYTES,
    KvDialect,
    Load,
    LoadResult,
    Measured,
    bench_keys,
    bench_value,
    check_one_cluster,
    fill,
    open_session,
    percentile,
    run_load,
)
from bench.loopback import LOOPBACK, free_port, http_get
from bench.options import BenchError, Options
from bench.processes import ManagedProcess, start_process, wait_http_ok
from bench.rows import Row, make_row

BENCHMARK = "datastore"
REPLICAS_ENV = "YARDARM_BENCH_DATASTORE_REPLICAS"
TARGET_ENV = "YARDARM_BENCH_DATASTORE_TARGET"
DEFAULT_REPLICAS = 3
WRITE_CONCURRENCY = (1, 16, 64)
READ_CONCURRENCY = 64
GOAL_CONCURRENCY = 64
GOAL_RATIO = 0.5  # writes at c64: >= 50% of etcd's throughput, p99 within 2x of etcd's
MAX_ERROR_SHARE = 0.01
MAX_RPS = 100_000  # the count bound of a phase: its duration at a rate no target reaches
FSYNC_SECONDS = 2.0
FSYNC_MAX_OPS = 20_000
FSYNC_BLOCK = 4096
SERVE_TIMEOUT_S = 60.0

Targeting = Literal["spread", "leader"]


# -- yardarm's datastore


class YardarmKv:
    """yardarm's KV API: `PUT /kv/{key}` with `{"value": ...}`, `GET /kv/{key}`."""

    name = "yardarm"

    async def put(self, session: aiohttp.ClientSession, endpoint: str, key: str, value: str) -> int:
        async with session.put(f"{endpoint}/kv/{quote(key)}", json={"value": value}) as resp:
            await resp.read()
            return resp.status

    async def get(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> int:
        async with session.get(f"{endpoint}/kv/{quote(key)}") as resp:
            await resp.read()
            return resp.status

    async def value(self, session: aiohttp.ClientSession, endpoint: str, key: str) -> str | None:
        async with session.get(f"{endpoint}/kv/{quote(key)}") as resp:
            if resp.status != 200:
                return None
            found = (await resp.json()).get("value")
            return found if isinstance(found, str) else json.dumps(found)


def datastore_env(
    index: int, http_ports: Sequence[int], raft_ports: Sequence[int], root: Path
) -> dict[str, str]:
    """The environment of replica `index`: its ports, its data and its peers."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("YARDARM_", "OTEL_"))  # no stray config, no span export
    }
    peers = {
        str(other + 1): {
            "raft": f"{LOOPBACK}:{raft_ports[other]}",
            "http": f"http://{LOOPBACK}:{http_ports[other]}",
        }
        for other in range(len(http_ports))
        if other != index
    }
    settings = {
        "PORT": str(http_ports[index]),
        "HOST": LOOPBACK,
        "DATA_DIR": str(root / f"datastore-{index}"),
        "INSTANCE": f"datastore-{index}",
        "STATE_DIR": str(root),
        "REPLICA_ID": str(index + 1),
        "RAFT_PORT": str(raft_ports[index]),
        "PEERS": json.dumps(peers),
    }
    env.update({f"YARDARM_DATASTORE_{key}": value for key, value in settings.items()})
    return env


@dataclass
class YardarmCluster:
    """Running replicas and their HTTP URLs; replica i+1 is `urls[i]`."""

    processes: list[ManagedProcess]
    urls: list[str]

    def leader_url(self, timeout_s: float = SERVE_TIMEOUT_S) -> str | None:
        """The leader's URL from `GET /raft/status`; None if the datastore has no Raft."""
        if len(self.urls) == 1:
            return self.urls[0]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for url in self.urls:
                try:
                    status, body = http_get(f"{url}/raft/status")
                except OSError:
                    continue
                if status == 404:
                    return None
                leader = json.loads(body).get("leader") if status == 200 else None
                if leader and 1 <= int(leader) <= len(self.urls):
                    return self.urls[int(leader) - 1]
            time.sleep(0.2)
        raise BenchError(f"no datastore replica named a leader within {timeout_s:.0f}s")


@contextmanager
def yardarm_cluster(root: Path, replicas: int, log_dir: Path) -> Iterator[YardarmCluster]:
    """Start `replicas` datastore processes with data under `root`; stop them on exit."""
    http_ports = [free_port() for _ in range(replicas)]
    raft_ports = [free_port() for _ in range(replicas)]
    with ExitStack() as stack:
        processes: list[ManagedProcess] = []
        for index in range(replicas):
            proc = start_process(
                f"datastore-{index}",
                [sys.executable, "-m", "yardarm_datastore"],
                log_dir=log_dir,
                env=datastore_env(index, http_ports, raft_ports, root),
            )
            stack.callback(proc.stop)
            processes.append(proc)
        urls = [f"http://{LOOPBACK}:{port}" for port in http_ports]
        for proc, url in zip(processes, urls, strict=True):
            wait_http_ok(f"{url}/readyz", proc, timeout_s=SERVE_TIMEOUT_S)
        yield YardarmCluster(processes, urls)


# -- the disk


@dataclass(frozen=True)
class FsyncResult:
    ops: int
    p50_ms: float
    p99_ms: float


def measure_fsync(
    directory: Path, seconds: float = FSYNC_SECONDS, max_ops: int = FSYNC_MAX_OPS
) -> FsyncResult:
    """Append 4 KiB and fsync, again and again: what one durable commit costs this disk."""
    path = directory / f"fsync-probe-{uuid.uuid4().hex}"
    block = b"\xa5" * FSYNC_BLOCK
    samples: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        deadline = time.perf_counter() + seconds
        while len(samples) < max_ops and time.perf_counter() < deadline:
            begun = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            samples.append((time.perf_counter() - begun) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    ordered = sorted(samples)
    return FsyncResult(len(ordered), percentile(ordered, 50) or 0.0, percentile(ordered, 99) or 0.0)


def filesystem_of(path: Path) -> str:
    resolved = str(path.resolve())
    mounts = [p for p in psutil.disk_partitions(all=True) if resolved.startswith(p.mountpoint)]
    best = max(mounts, key=lambda p: len(p.mountpoint), default=None)
    return "unknown" if best is None else f"{best.fstype} on {best.device} ({best.mountpoint})"


# -- measuring


@dataclass
class Target:
    """A cluster under load: how to speak to it, where to send, which processes serve."""

    name: str
    dialect: KvDialect
    endpoints: list[str]
    processes: list[ManagedProcess]


Phase = tuple[Literal["write", "read"], int]
PHASES: list[Phase] = [*(("write", c) for c in WRITE_CONCURRENCY), ("read", READ_CONCURRENCY)]


class DatastoreBench:
    """Loads every target with each phase: warm-up, then runs in alternating order."""

    def __init__(self, options: Options, console: Console, step: Callable[[str], None]) -> None:
        self.options = options
        self.console = console
        self.step = step
        self.keys = bench_keys()
        self.value = bench_value()

    async def phase(self, phase: Phase, targets: Sequence[Target]) -> dict[str, Measured]:
        op, concurrency = phase
        duration = self.options.duration_s
        measured = {target.name: Measured() for target in targets}
        sessions = {target.name: open_session(concurrency) for target in targets}
        try:
            for target in targets:
                session = sessions[target.name]
                if op == "read":
                    self.step(f"{target.name}: writing all {KEY_COUNT} keys before reads")
                    done = await fill(
                        target.dialect, target.endpoints, session, self.keys, self.value
                    )
                    self._check(target, done, "the fill before reads", strict=True)
                self.step(f"{target.name}: warm-up, {op}s at concurrency {concurrency}")
                warm = Load(
                    op, concurrency, self.options.warmup_s, self._cap(self.options.warmup_s)
                )
                self._check(target, await self._load(target, session, warm), "warm-up")
            for run in range(self.options.runs):
                # Alternating the order spreads any drift of the machine over both.
                for target in targets if run % 2 == 0 else list(reversed(targets)):
                    self.step(f"{target.name}: {op}s at c{concurrency}, run {run + 1}")
                    load = Load(op, concurrency, duration, self._cap(duration), seed=run + 1)
                    with CpuMeter([p.pid for p in target.processes]) as meter:
                        result = await self._load(target, sessions[target.name], load)
                    self._check(target, result, f"{op}s at concurrency {concurrency}")
                    measured[target.name].results.append(result)
                    measured[target.name].server_cpu_pct.append(meter.process_pct)
                    self.console.log(
                        f"{target.name} {op} c{concurrency} run {run + 1}: "
                        f"{result.rps:,.0f} req/s, p50 {result.p50_ms or 0:.2f} ms, "
                        f"p99 {result.p99_ms or 0:.2f} ms, errors {result.error_count}, "
                        f"server CPU {meter.process_pct}%, client CPU {result.client_cpu_pct}%"
                    )
        finally:
            for session in sessions.values():
                await session.close()
        return measured

    def _cap(self, seconds: float) -> int:
        return int(MAX_RPS * seconds)

    async def _load(self, target: Target, session: aiohttp.ClientSession, load: Load) -> LoadResult:
        return await run_load(
            target.dialect, target.endpoints, load, session, self.keys, self.value
        )

    def _check(
        self, target: Target, result: LoadResult, what: str, *, strict: bool = False
    ) -> None:
        """Errors are reported; more than 1% of them (any, when strict) stop the run."""
        for proc in target.processes:
            if not proc.alive():
                code = proc.popen.returncode
                why = " (a clean shutdown: stopped by a signal from outside)" if code == 0 else ""
                raise BenchError(
                    f"{proc.name} exited with code {code}{why} during {what}; "
                    f"its log ends with:\n{proc.log_tail()}"
                )
        allowed = 0 if strict else result.requests * MAX_ERROR_SHARE
        if result.ok == 0 or result.error_count > allowed:
            logs = "\n".join(f"--- {p.name}:\n{p.log_tail(5)}" for p in target.processes)
            raise BenchError(
                f"{target.name} failed {result.error_count} of {result.requests} requests "
                f"during {what} ({result.errors}); the numbers cannot be trusted. "
                f"Logs:\n{logs}"
            )
        if result.error_count:
            self.console.log(f"[yellow]{target.name}: {result.errors} during {what}[/yellow]")


# -- rows


@dataclass
class Outcome:
    """Everything one run measured, ready to become rows."""

    replicas: int
    targeting: Targeting
    versions: dict[str, str]
    fsync: FsyncResult
    filesystem: str
    phases: dict[Phase, dict[str, Measured]]
    load_avg: dict[str, list[float]]


def build_rows(outcome: Outcome, options: Options, date: str) -> list[Row]:
    versions, replicas = outcome.versions, outcome.replicas
    peer = f"etcd-{versions['etcd']}"
    members = f"{replicas} member(s) on {LOOPBACK}"
    spread = (
        f"requests rotate over all {replicas} members' URLs, as an etcd client does "
        "(members forward writes to their leader)"
        if outcome.targeting == "spread"
        else "every request to the leader (found before the phases)"
    )
    base: dict[str, object] = {
        "versions": versions,
        "client": (
            f"aiohttp {versions['aiohttp']} ClientSession on {versions['event_loop']} in the "
            "bench process; closed loop of `concurrency` workers; connector limit = "
            f"concurrency; request timeout {REQUEST_TIMEOUT_S:.0f}s; same client for both"
        ),
        "targeting": f"{outcome.targeting}: {spread}",
        "replicas": replicas,
        "etcd": f"{members}, default fsync durability, JSON gateway /v3/kv/put and "
        "/v3/kv/range (linearizable)",
        "yardarm": f"{members}, python -m yardarm_datastore, PUT /kv/{{key}} and "
        "GET /kv/{key} (linearizable)",
        "keys": f"{KEY_COUNT} keys, uniform random per request; reads after writing each once",
        "value_bytes": VALUE_BYTES,
        "data_dirs": f"one temporary directory on {outcome.filesystem}",
        "duration_s": options.duration_s,
        "warmup_s": options.warmup_s,
        "runs": options.runs,
        "statistic": f"median of {options.runs} run(s); both clusters up, runs alternate order",
        "pinning": "none: client and members share the machine's cores",
        "cpu_count": len(os.sched_getaffinity(0)),
        "machine_load_avg_1_5_15m": outcome.load_avg,
        "quick": options.quick,
        "goal": f"writes at concurrency {GOAL_CONCURRENCY}: throughput >= {GOAL_RATIO:.0%} of "
        f"etcd's and p99 within {1 / GOAL_RATIO:.0f}x of etcd's (both ratios >= {GOAL_RATIO})",
    }
    rows: list[Row] = []
    for (op, concurrency), measured in outcome.phases.items():
        ours, theirs = measured["yardarm"], measured["etcd"]
        params = {
            **base,
            "setup": f"{op}s c={concurrency}, {replicas} replica(s), {outcome.targeting}",
            "op": op,
            "concurrency": concurrency,
            "yardarm_runs": ours.details(),
            "peer_runs": theirs.details(),
        }
        judged = op == "write" and concurrency == GOAL_CONCURRENCY
        for metric, value, peer_value, lower in (
            (f"{op}_throughput_rps", ours.rps, theirs.rps, False),
            (f"{op}_p50_latency_ms", ours.p50_ms, theirs.p50_ms, True),
            (f"{op}_p99_latency_ms", ours.p99_ms, theirs.p99_ms, True),
        ):
            row = make_row(
                BENCHMARK,
                metric,
                value,
                params=params,
                date=date,
                peer=peer,
                peer_value=peer_value,
                lower_is_better=lower,
            )
            if judged and metric != f"{op}_p50_latency_ms":
                met = row["ratio"] is not None and row["ratio"] >= GOAL_RATIO
                verdict = "met" if met else "NOT met"
                row["params"] = {
                    **row["params"],
                    "goal_met": met,
                    "setup": f"{params['setup']}; goal ratio >= {GOAL_RATIO}: {verdict}",
                }
            rows.append(row)
    disk = {
        "setup": "4 KiB append + os.fsync, one at a time",
        "directory": outcome.filesystem,
        "ops": outcome.fsync.ops,
        "duration_s": FSYNC_SECONDS,
        "why": "the hardware floor: no durable write commits faster than one fsync",
    }
    for name, value in (("p50", outcome.fsync.p50_ms), ("p99", outcome.fsync.p99_ms)):
        metric = f"disk_fsync_{name}_ms (the floor under a durable write; no peer)"
        rows.append(make_row(BENCHMARK, metric, value, params=disk, date=date))
    return rows


# -- the run


def bench_settings() -> tuple[int, Targeting]:
    """Cluster size and targeting from the environment, checked."""
    raw = os.environ.get(REPLICAS_ENV, str(DEFAULT_REPLICAS))
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 7:
        raise BenchError(f"{REPLICAS_ENV} must be a replica count from 1 to 7 (got {raw!r})")
    targeting = os.environ.get(TARGET_ENV, "spread")
    if targeting == "spread":
        return int(raw), "spread"
    if targeting == "leader":
        return int(raw), "leader"
    raise BenchError(f"{TARGET_ENV} must be spread or leader (got {targeting!r})")


def _runner() -> tuple[asyncio.Runner, str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner(), "asyncio"
    return asyncio.Runner(loop_factory=uvloop.new_event_loop), f"uvloop {_dist('uvloop')}"


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _versions(etcd_path: str) -> dict[str, str]:
    return {
        "etcd": etcd_version(etcd_path),
        "python": sys.version.split()[0],
        "yardarm-datastore": _dist("yardarm-datastore"),
        "aiohttp": _dist("aiohttp"),
    }


async def _check_cluster(target: Target, replicas: int) -> None:
    """One linearizable cluster behind all endpoints, or a BenchError with the logs."""
    try:
        await check_one_cluster(target.dialect, target.endpoints, SERVE_TIMEOUT_S)
    except BenchError as exc:
        hint = ""
        if target.name == "yardarm" and replicas > 1:
            hint = (
                "\nA datastore without Raft ignores YARDARM_DATASTORE_PEERS and runs "
                f"{replicas} independent nodes; if so, run with {REPLICAS_ENV}=1"
            )
        logs = "\n".join(f"--- {p.name}:\n{p.log_tail(5)}" for p in target.processes)
        raise BenchError(f"{exc}{hint}\nLogs:\n{logs}") from None


def _yardarm_leader(cluster: YardarmCluster) -> str:
    leader = cluster.leader_url()
    if leader is None:
        raise BenchError(
            f"yardarm's datastore has no GET /raft/status, so its leader is unknown; "
            f"unset {TARGET_ENV} to spread requests over all replicas"
        )
    return leader


def run(options: Options, console: Console) -> list[Row]:
    """Measure etcd and yardarm's datastore with the same client; return the rows."""
    etcd_path = find_etcd()
    replicas, targeting = bench_settings()
    versions = _versions(etcd_path)
    runner, loop_name = _runner()
    versions["event_loop"] = loop_name
    load_before = [round(x, 2) for x in os.getloadavg()]
    console.log(
        f"datastore vs etcd-{versions['etcd']}: {replicas} replica(s) each, {targeting}; "
        f"{options.runs} run(s) of {options.duration_s}s per phase after a "
        f"{options.warmup_s}s warm-up; load average now {load_before}"
    )
    steps = 4 + len(PHASES) * 2 * (options.runs + 1) + 2
    with (
        runner,
        tempfile.TemporaryDirectory(prefix="yardarm-bench-datastore-") as tmp_name,
        ExitStack() as stack,
        Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("measuring the disk's fsync", total=steps)

        def step(description: str) -> None:
            progress.advance(task)
            progress.update(task, description=description)

        root = Path(tmp_name)
        fsync = measure_fsync(root)
        console.log(f"disk fsync: p50 {fsync.p50_ms:.3f} ms, p99 {fsync.p99_ms:.3f} ms")
        step(f"starting etcd ({replicas} member(s))")
        etcd = stack.enter_context(etcd_cluster(etcd_path, root / "etcd", replicas, root))
        step(f"starting yardarm's datastore ({replicas} replica(s))")
        yardarm = stack.enter_context(yardarm_cluster(root / "yardarm", replicas, root))
        targets = [
            Target("etcd", EtcdGateway(), etcd.client_urls, etcd.members),
            Target("yardarm", YardarmKv(), yardarm.urls, yardarm.processes),
        ]
        step("checking that each cluster reads back its writes through every member")
        for target in targets:
            runner.run(_check_cluster(target, replicas))
        if targeting == "leader":
            targets[0].endpoints = [etcd.leader_url()]
            targets[1].endpoints = [_yardarm_leader(yardarm)]
        bench = DatastoreBench(options, console, step)
        phases = {phase: runner.run(bench.phase(phase, targets)) for phase in PHASES}
        filesystem = filesystem_of(root)
        step("stopping")
    load_avg = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    outcome = Outcome(replicas, targeting, versions, fsync, filesystem, phases, load_avg)
    return build_rows(outcome, options, datetime.now(UTC).isoformat(timespec="seconds"))
