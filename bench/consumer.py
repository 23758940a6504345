"""The kit's InboxConsumer against a bare nats-py pull consumer: messages drained per second.

One nats-server and one Postgres (the launchers `yardarm up` uses) run for the whole
benchmark. One stream is filled with N envelopes (each with its own traceparent, as
producers send them), then drained again and again by fresh durables:

- the peer: nats-py's `PullSubscription.fetch(64)`, `ack()` on each message, nothing else;
- yardarm: `InboxConsumer` as the services run it: batches of 64, two in flight, the
  envelope and schema parsed, a CONSUMER span per message (a real TracerProvider whose
  BatchSpanProcessor writes OTLP/JSON lines to a file, as `setup_tracing` configures it),
  one Postgres transaction per batch claiming every id in the inbox, a no-op apply.

yardarm also drains twice more, for two diagnostic rows: with 1% of the producers'
traces sampled (a second subject, filled the same way), and with spans that the exporter
drops instead of encoding. Rounds alternate the order; the inbox is emptied before each
yardarm drain so every message is applied, not skipped as a duplicate. A drain ends when
every message is acknowledged (for yardarm: committed, acked, and every span exported).
N comes from `YARDARM_BENCH_CONSUMER_MESSAGES` (default 20,000; 2,000 with --quick).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import logging
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import asyncpg
import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from rich.console import Console
from yardarm_kit import Metrics, ServiceSettings
from yardarm_kit.consumer import ConsumerMetrics, Delivery, InboxConsumer
from yardarm_kit.messaging import Envelope, ensure_streams
from yardarm_kit.postgres import Connection
from yardarm_kit.telemetry import EXPORT_BATCH, JsonLinesSpanExporter

from bench.loopback import LOOPBACK, free_port
from bench.options import BenchError, Options
from bench.rows import Row, make_row, median
from yardarm.local import infra
from yardarm.local.binaries import nats_server_binary

BENCHMARK = "consumer"
PEER = "nats-py pull consumer"
MESSAGES_ENV = "YARDARM_BENCH_CONSUMER_MESSAGES"
DEFAULT_MESSAGES = 20_000
QUICK_MESSAGES = 2_000
MAX_MESSAGES = 1_000_000
BATCH = 64
BATCHES_IN_FLIGHT = 2
STREAM = "BENCH"
SAMPLED = "bench.sampled"
SAMPLED_1PCT = "bench.sampled1pct"
GOAL_RATIO = 0.8
MIN_RATE = 200.0  # msgs/s: a drain slower than this is stuck (bounds every drain in time)
PUBLISH_WINDOW = 1_000
SERVER_TIMEOUT_S = 30.0
LOG = logging.getLogger("bench.consumer")
Step = Callable[[str], None]
INBOX = """
CREATE TABLE IF NOT EXISTS inbox (
    msg_id        text        PRIMARY KEY,
    subject       text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now()
)
"""


# -- servers


@dataclass(frozen=True)
class Servers:
    nats_url: str
    pg_port: int


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_accepting(port: int, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise BenchError(f"{name} exited with code {proc.returncode}; its log:\n{tail}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {LOOPBACK}:{port} within {SERVER_TIMEOUT_S}s")


@contextmanager
def servers(root: Path) -> Iterator[Servers]:
    """nats-server (JetStream) and Postgres on loopback, data under `root`."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        nats_port = free_port()
        nats_log = root / "nats.log"
        cmd = infra.nats_command(port=nats_port, monitor_port=free_port(), store_dir=root / "js")
        with nats_log.open("wb") as out:
            started.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
        _wait_accepting(nats_port, started[-1], "nats-server", nats_log)
        data_dir = root / "pg" / "data"
        run_as = infra.prepare_postgres(data_dir)
        pg_port = free_port()
        pg_log = root / "pg" / "postgres.log"
        postgres = infra.postgres_command(data_dir=data_dir, port=pg_port)
        with pg_log.open("wb") as out:
            proc = subprocess.Popen(postgres, stdout=out, stderr=subprocess.STDOUT,
                                    user=run_as.uid, group=run_as.gid, cwd=data_dir)  # fmt: skip
            started.append(proc)
        _wait_accepting(pg_port, started[-1], "postgres", pg_log)
        yield Servers(f"nats://{LOOPBACK}:{nats_port}", pg_port)
    finally:
        for proc in reversed(started):
            _stop(proc)


async def _database(servers: Servers) -> str:
    """A `bench` database with an inbox table; waits until Postgres takes queries."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while True:
        try:
            await infra.create_databases(servers.pg_port, ["bench"])
            break
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    dsn = infra.postgres_dsn(servers.pg_port, "bench")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(INBOX)
    finally:
        await conn.close()
    return dsn


# -- the load


def _traceparent(sampled: bool) -> str:
    return f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-{'01' if sampled else '00'}"


async def fill(js: JetStreamContext, subject: str, count: int, sample_every: int) -> float:
    """Publish `count` envelopes, every `sample_every`-th with a sampled traceparent (the
    producer's decision, which the consumer's parent-based sampler follows); msgs/s."""
    started = time.perf_counter()
    for first in range(0, count, PUBLISH_WINDOW):
        pending = []
        for n in range(first, min(first + PUBLISH_WINDOW, count)):
            envelope = Envelope(type="bench.work", id=f"{subject}:{n}", saga_id=f"s{n % 997}",
                                data={"n": n, "note": "x" * 64})  # fmt: skip
            headers = {
                "Nats-Msg-Id": envelope.id,
                "yardarm-schema": "2",
                "traceparent": _traceparent(n % sample_every == 0),
            }
            body = envelope.model_dump_json().encode()
            pending.append(await js.publish_async(subject, body, headers=headers))
        await asyncio.gather(*pending)
    return count / (time.perf_counter() - started)


def sampled_count(count: int, sample_every: int) -> int:
    return len(range(0, count, sample_every))


def _durable(kind: str) -> str:
    return f"{kind}{uuid.uuid4().hex[:8]}"


async def drain_bare(nats_url: str, count: int, timeout_s: float) -> float:
    """The peer: fetch a batch, ack each message, nothing else; returns msgs/s."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        durable = _durable("bare")
        config = ConsumerConfig(durable_name=durable, name=durable, filter_subject=SAMPLED,
                                ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0,
                                max_ack_pending=BATCH * BATCHES_IN_FLIGHT)  # fmt: skip
        await js.add_consumer(STREAM, config)
        started = time.perf_counter()
        sub = await js.pull_subscribe_bind(durable, stream=STREAM)
        done = 0
        async with asyncio.timeout(timeout_s):
            while done < count:
                try:
                    msgs = await sub.fetch(BATCH, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await msg.ack()
                done += len(msgs)
            await nc.flush()
        elapsed = time.perf_counter() - started
        await js.delete_consumer(STREAM, durable)
        return done / elapsed
    finally:
        await nc.close()


class Counted(SpanExporter):
    """Wraps an exporter, counting the spans it took (so a drain can prove none dropped)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


class Dropped(SpanExporter):
    """Takes every span and encodes none: what is left is the consumer's own cost."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@dataclass(frozen=True)
class Variant:
    """One way of running InboxConsumer, measured against the same bare consumer."""

    key: str
    metric: str
    subject: str
    sample_every: int
    encode: bool
    what: str


VARIANTS = (
    Variant("file", "messages_per_s", SAMPLED, 1, True,
            "every producer trace sampled; spans written as OTLP/JSON lines to a file by "
            "yardarm_kit.telemetry.JsonLinesSpanExporter, as every service writes them"),
    Variant("sampled_1pct", "messages_per_s (1% of producers' traces sampled)", SAMPLED_1PCT,
            100, True, "one producer trace in 100 sampled (traceparent flags), which the "
            "parent-based sampler follows, as in a production setup; spans to the file"),
    Variant("not_encoded", "messages_per_s (spans dropped by the exporter, not encoded)",
            SAMPLED, 1, False, "every trace sampled, spans created, ended and queued as in "
            "`file`, but the exporter drops them: the gap to `file` is the span encoding"),
)  # fmt: skip


class NoopApply:
    """A handler that does nothing but notice when every message was applied."""

    prepares = False

    def __init__(self, count: int) -> None:
        self.count = count
        self.applied = 0
        self.all_applied = asyncio.Event()

    async def prepare(self, delivery: Delivery) -> None:
        return None

    async def apply(self, conn: Connection, delivery: Delivery) -> None:
        return None

    def after_commit(self, applied: Sequence[Delivery]) -> None:
        self.applied += len(applied)
        if self.applied >= self.count:
            self.all_applied.set()


@dataclass
class Tracing:
    provider: TracerProvider
    exporter: Counted


def tracing(path: Path, encode: bool) -> Tracing:
    """What `setup_tracing` installs in a service: batches of 64 every 500 ms."""
    exporter = Counted(JsonLinesSpanExporter(path) if encode else Dropped())
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-consumer"}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=500, max_export_batch_size=EXPORT_BATCH)
    )
    return Tracing(provider, exporter)


async def drain_yardarm(
    nats_url: str, dsn: str, variant: Variant, telemetry: Tracing, count: int, timeout_s: float
) -> float:
    """InboxConsumer with tracing and the inbox on, a no-op apply; returns msgs/s."""
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(dsn, min_size=BATCHES_IN_FLIGHT, max_size=4)
    try:
        await pool.execute("TRUNCATE inbox")
        js = nc.jetstream()
        handler = NoopApply(count)
        metrics = ConsumerMetrics(Metrics(ServiceSettings(service="bench", port=8080)))
        consumer = InboxConsumer(
            js, pool, handler=handler, metrics=metrics,
            tracer=telemetry.provider.get_tracer("bench"), log=LOG,
            stream=STREAM, durable=_durable(variant.key.replace("_", "")),
            filter_subject=variant.subject, batch=BATCH,
            max_batches_in_flight=BATCHES_IN_FLIGHT,
        )  # fmt: skip
        exported_before = telemetry.exporter.exported
        started = time.perf_counter()
        await consumer.start()
        try:
            async with asyncio.timeout(timeout_s):
                await handler.all_applied.wait()
        finally:
            await consumer.stop()  # settles the last batch and flushes the acks
        if not await asyncio.to_thread(telemetry.provider.force_flush, int(timeout_s * 1000)):
            raise BenchError("spans were not exported within the drain's time bound")
        elapsed = time.perf_counter() - started
        exported = telemetry.exporter.exported - exported_before
        expected = sampled_count(count, variant.sample_every)
        if exported != expected:
            raise BenchError(
                f"{exported} spans exported for {expected} sampled messages "
                "(a full span queue drops spans): the numbers cannot be trusted"
            )
        await js.delete_consumer(STREAM, consumer.durable)
        return count / elapsed
    finally:
        await pool.close()
        await nc.close()


# -- the run


def message_count(options: Options) -> int:
    raw = os.environ.get(MESSAGES_ENV)
    if raw is None:
        return QUICK_MESSAGES if options.quick else DEFAULT_MESSAGES
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_MESSAGES:
        raise BenchError(f"{MESSAGES_ENV} must be a message count from 1 to {MAX_MESSAGES:,} "
                         f"(got {raw!r})")  # fmt: skip
    return int(raw)


@dataclass
class Outcome:
    messages: int
    fill_rate: float
    bare: list[float]
    yardarm: dict[str, list[float]]
    versions: dict[str, str]
    load_avg: dict[str, list[float]]
    profile: str | None = None
    # CPU of this process (event loop and span export thread) per message, per drain:
    # steadier than msgs/s on a loaded machine, since waiting for a core is not in it.
    cpu_us: dict[str, list[float]] = field(default_factory=dict)


async def _prepare_servers(servers: Servers, count: int, step: Step) -> tuple[str, float]:
    """The bench database and stream, filled; returns the DSN and the fill rate."""
    dsn = await _database(servers)
    nc = await nats.connect(servers.nats_url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)  # the DLQ a failed delivery would go to
        await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{STREAM.lower()}.>"],
                                         storage=StorageType.FILE))  # fmt: skip
        step(f"filling {STREAM} with {count:,} envelopes on each of {SAMPLED}, {SAMPLED_1PCT}")
        rate = await fill(js, SAMPLED, count, 1)
        await fill(js, SAMPLED_1PCT, count, 100)
    finally:
        await nc.close()
    return dsn, rate


async def measure(
    servers: Servers, root: Path, count: int, options: Options, step: Step
) -> Outcome:
    dsn, fill_rate = await _prepare_servers(servers, count, step)
    timeout_s = max(60.0, count / MIN_RATE)
    telemetry = {v.key: tracing(root / "telemetry" / f"{v.key}.jsonl", v.encode) for v in VARIANTS}
    bare: list[float] = []
    ours: dict[str, list[float]] = {v.key: [] for v in VARIANTS}
    cpu_us: dict[str, list[float]] = {"bare": [], **{v.key: [] for v in VARIANTS}}
    profile = None
    try:
        for run in range(options.runs):
            # Alternating the order spreads any drift of the machine over all of them.
            order: list[Variant | None] = [None, *VARIANTS]
            for variant in order if run % 2 == 0 else list(reversed(order)):
                name = "bare" if variant is None else f"yardarm ({variant.key})"
                step(f"round {run + 1}: {name} drains {count:,} messages")
                cpu_before = time.process_time()
                if variant is None:
                    bare.append(await drain_bare(servers.nats_url, count, timeout_s))
                else:
                    rate = await drain_yardarm(servers.nats_url, dsn, variant,
                                               telemetry[variant.key], count,
                                               timeout_s)  # fmt: skip
                    ours[variant.key].append(rate)
                used = (time.process_time() - cpu_before) / count * 1e6
                cpu_us["bare" if variant is None else variant.key].append(used)
        if options.profile:
            step("profiling one more yardarm drain (not measured)")
            profile = await _profiled(servers.nats_url, dsn, telemetry, count, timeout_s)
    finally:
        for each in telemetry.values():
            each.provider.shutdown()
    return Outcome(count, fill_rate, bare, ours, {}, {}, profile, cpu_us)


async def _profiled(
    nats_url: str, dsn: str, telemetry: dict[str, Tracing], count: int, timeout_s: float
) -> str:
    """cProfile of the event loop's thread during one headline drain (the span exporter
    thread is not in it)."""
    headline = VARIANTS[0]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await drain_yardarm(nats_url, dsn, headline, telemetry[headline.key], count, timeout_s)
    finally:
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
    return text.getvalue()


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _nats_server_version() -> str:
    try:
        done = subprocess.run([str(nats_server_binary()), "--version"], capture_output=True,
                              text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip().removeprefix("nats-server: ") or "unknown"


def build_rows(outcome: Outcome, options: Options, date: str) -> list[Row]:
    theirs = median(outcome.bare)
    versions = outcome.versions
    base: dict[str, object] = {
        "messages": outcome.messages,
        "runs": options.runs,
        "statistic": f"median of {options.runs} drain(s) each; every round drains with each "
        "target in turn, alternating the order",
        "peer_runs_msgs_per_s": [round(v, 1) for v in outcome.bare],
        "fill_msgs_per_s": round(outcome.fill_rate, 1),
        "peer": f"nats-py {versions.get('nats-py')}: pull_subscribe_bind, fetch({BATCH}, "
        f"timeout=1) then msg.ack() per message; max_ack_pending {BATCH * BATCHES_IN_FLIGHT}",
        "yardarm": f"yardarm_kit.consumer.InboxConsumer: batch {BATCH}, {BATCHES_IN_FLIGHT} "
        "batches in flight, envelope and yardarm-schema parsed, a CONSUMER span per message "
        "(real TracerProvider, BatchSpanProcessor in batches of 64 every 500 ms, every span "
        "exported within the drain), one Postgres transaction per batch claiming its ids in "
        "the inbox (a real table, emptied before each drain), no-op apply, and no prepare "
        "(the handler declares prepares = False)",
        "message": "JSON envelope with a 64-byte note; headers Nats-Msg-Id, yardarm-schema "
        "and a distinct traceparent",
        "servers": f"nats-server {versions.get('nats-server')} (JetStream, file storage) and "
        "Postgres (fsync on), on 127.0.0.1, started by the benchmark",
        "versions": versions,
        "pinning": "none: the bench process and both servers share the machine's cores",
        "cpu_count": len(os.sched_getaffinity(0)),
        "machine_load_avg_1_5_15m": outcome.load_avg,
        "quick": options.quick,
    }
    rows: list[Row] = []
    for variant in VARIANTS:
        values = outcome.yardarm[variant.key]
        ours = median(values)
        params = {**base, "tracing": variant.what,
                  "yardarm_runs_msgs_per_s": [round(v, 1) for v in values]}  # fmt: skip
        if outcome.cpu_us:
            params["cpu_us_per_msg"] = {
                "what": "CPU time of the bench process (event loop and span export thread; "
                "not the servers') per message, per drain",
                "yardarm": [round(v, 1) for v in outcome.cpu_us.get(variant.key, [])],
                "peer": [round(v, 1) for v in outcome.cpu_us.get("bare", [])],
            }
        setup = f"{outcome.messages:,} messages, batch {BATCH}, {variant.key}"
        if variant is VARIANTS[0]:
            met = theirs > 0 and ours / theirs >= GOAL_RATIO
            params["goal"] = f"at least {GOAL_RATIO:.0%} of the bare consumer's rate"
            params["goal_met"] = met
            setup += f"; goal ratio >= {GOAL_RATIO}: {'met' if met else 'NOT met'}"
        params["setup"] = setup
        rows.append(make_row(BENCHMARK, variant.metric, ours, params=params, date=date,
                             peer=PEER, peer_value=theirs))  # fmt: skip
    return rows


def run(options: Options, console: Console) -> list[Row]:
    """Fill a stream once, then drain it with each consumer in turn; return the rows."""
    count = message_count(options)
    try:
        import uvloop

        runner, loop_name = asyncio.Runner(loop_factory=uvloop.new_event_loop), "uvloop"
    except ImportError:
        runner, loop_name = asyncio.Runner(), "asyncio"
    versions = {
        "nats-py": _dist("nats-py"),
        "nats-server": _nats_server_version(),
        "asyncpg": _dist("asyncpg"),
        "opentelemetry-sdk": _dist("opentelemetry-sdk"),
        "python": sys.version.split()[0],
        "event_loop": f"{loop_name} {_dist(loop_name)}" if loop_name == "uvloop" else loop_name,
    }
    load_before = [round(x, 2) for x in os.getloadavg()]
    console.log(f"consumer: {count:,} messages, {options.runs} round(s); load {load_before}")

    def step(description: str) -> None:
        console.log(description)

    with runner, tempfile.TemporaryDirectory(prefix="yardarm-bench-consumer-") as tmp:
        root = Path(tmp)
        step("starting nats-server and Postgres")
        with servers(root) as running:
            outcome = runner.run(measure(running, root, count, options, step))
    outcome.versions = versions
    outcome.load_avg = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}
    for kind, values in (*outcome.yardarm.items(), ("bare", outcome.bare)):
        console.log(f"{kind}: {', '.join(f'{v:,.0f}' for v in values)} msgs/s")
    if outcome.profile and options.artifacts_dir is not None:
        path = options.artifacts_dir / "consumer-profile.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outcome.profile, encoding="utf-8")
        console.log(f"profile written to {path}")
    elif outcome.profile:
        console.print(outcome.profile)
    return build_rows(outcome, options, datetime.now(UTC).isoformat(timespec="seconds"))
